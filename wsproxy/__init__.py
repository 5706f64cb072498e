"""wsproxy: a WebSocket reverse proxy that owns the connection lifecycle.

The layers, each importing only those below it (pyproject.toml's import-linter
contracts say so, and ``.ci/run`` checks them):

    cli, ops       the command line
    supervisor     serve() and the wiring: implements every port below
    admin/         the admin API, metrics, the page
    control/       drains, the backend set, health checks, discovery
    io/            the drivers (asyncio Protocols), and auth/ the authenticators
    core/          the sans-I/O core
    config/, errors, units   leaves (config may use core.closes, which imports nothing)

log, tls and echo are small helpers any layer above the core may use; speedups says
which compiled twins run (the core's two and log's).
"""

__version__ = "0.1.0"
