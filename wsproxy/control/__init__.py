"""The control plane: what changes the set of connections and backends over time.

- ``drain``: one drain (a set of connections closed calmly, on a core.schedule).
- ``drains``: the drains in progress and their controls; the one place that decides
  refusing new upgrades and plain requests during a drain.
- ``backends``: the backend set (static, discovered, health verdicts, hold-down).
- ``health``: active health checks; ``discovery``: DNS discovery.
- ``rebalance``: rebalancing rounds (core.rebalance decides, this drives the closes).

It may import io/ (the drivers, for their types and the plain HTTP side), core/,
auth/, config, errors, units and log; never the wiring (wsproxy.supervisor) nor
admin/. The process reaches it through the small ``...Host`` protocols each module
declares, which the wiring implements.
"""
