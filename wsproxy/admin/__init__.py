"""The admin API: its HTTP server, its routes, the Prometheus metrics, the page.

- ``server``: the listener (accept back-off) and one h11 loop per connection.
- ``api``: the routes of SPEC.md, over ``api.AdminHost`` (what they ask of the proxy).
- ``metrics``: the counters and the Prometheus exposition of ``GET /metrics``.
- ``page.html``: the operator's page served at ``GET /``.

It may import control/, io/, core/, auth/, config, errors, units and log; never the
wiring (wsproxy.supervisor), which implements its protocols.
"""
