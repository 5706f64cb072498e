"""wsproxy.workers without processes: the ``workers`` key, a worker's shares of the
limits, and the merge of the workers' metrics into one scrape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wsproxy.config import ProxyConfig, parse_config
from wsproxy.config.values import MAX_WORKERS, cpus_available
from wsproxy.errors import ConfigError
from wsproxy.workers import merge_metrics, worker_config

BACKENDS = [{"name": "app-1", "url": "ws://127.0.0.1:8001"}]


def parse(**sections: Any) -> ProxyConfig:
    return parse_config({"backends": BACKENDS, **sections}, env={})


@pytest.mark.parametrize(("value", "message"), [
    (0, "expected a whole number from 1 to 64, got 0"),
    (65, "expected a whole number from 1 to 64, got 65"),
    ("many", 'expected a whole number from 1 to 64 or "auto", got "many"'),
    (1.5, 'expected a whole number from 1 to 64 or "auto", got 1.5'),
])
def test_workers_key_errors_name_it(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(workers=value)
    assert {p.path: p.message for p in caught.value.problems} == {"workers": message}


def test_workers_default_number_and_auto() -> None:
    assert parse().workers == 1
    assert parse(workers=3).workers == 3
    assert parse(workers="2").workers == 2  # from ${NAME}
    assert 1 <= parse(workers="auto").workers <= MAX_WORKERS


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), ("junk", None),
])
def test_auto_is_bounded_by_the_cgroup_quota(tmp_path: Path, cpu_max: str,
                                             expected: int | None) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    affinity = cpus_available(str(tmp_path / "nowhere"))
    assert cpus_available(str(tmp_path)) == (affinity if expected is None
                                             else min(affinity, expected))


def test_a_workers_shares_sum_to_the_proxys_limits() -> None:
    config = parse(limits={"max_connections": 5, "max_connections_per_ip": 1},
                   admission={"max_upgrade_rate": 10, "burst": 3},
                   drain={"max_close_rate": 8}, admin={"token": "operator"})
    shares = [worker_config(config, i, 2, "private") for i in range(2)]
    # The connection limits are counted over all the workers (io.shared_counts).
    assert {(s.limits.max_connections, s.limits.max_connections_per_ip)
            for s in shares} == {(5, 1)}
    assert [s.admission.burst for s in shares] == [2, 1]
    assert {s.admission.max_upgrade_rate for s in shares} == {5.0}
    assert {s.drain.max_close_rate for s in shares} == {4.0}
    assert {(s.admin.host, s.admin.port, s.admin.token) for s in shares} == {
        ("127.0.0.1", 0, "private")}
    unlimited = worker_config(parse(), 0, 2, "t")
    assert (unlimited.admission.burst, unlimited.drain.max_close_rate) == (0, 0)


SCRAPE = """\
# HELP wsproxy_build_info The version.
# TYPE wsproxy_build_info gauge
wsproxy_build_info{{speedups="c",version="1.0"}} 1.0
# HELP wsproxy_connections_active Open proxied connections.
# TYPE wsproxy_connections_active gauge
wsproxy_connections_active{{backend="b1"}} {active}
# HELP wsproxy_connections_total Accepted.
# TYPE wsproxy_connections_total counter
wsproxy_connections_total{{outcome="upgraded"}} {upgraded}
# HELP wsproxy_draining 1 while the proxy drains.
# TYPE wsproxy_draining gauge
wsproxy_draining {draining}
# HELP wsproxy_backend_healthy 1 if healthy.
# TYPE wsproxy_backend_healthy gauge
wsproxy_backend_healthy{{backend="b1"}} {healthy}
# HELP wsproxy_connection_duration_seconds Lifetime.
# TYPE wsproxy_connection_duration_seconds histogram
wsproxy_connection_duration_seconds_bucket{{le="1.0"}} {upgraded}
wsproxy_connection_duration_seconds_bucket{{le="+Inf"}} {upgraded}
wsproxy_connection_duration_seconds_count {upgraded}
wsproxy_connection_duration_seconds_sum 0.5
"""


def test_metrics_are_one_scrape_summed() -> None:
    scrapes = [SCRAPE.format(active=3, upgraded=5, draining=0, healthy=1).encode(),
               SCRAPE.format(active=4, upgraded=2, draining=1, healthy=0).encode()]
    text = merge_metrics(scrapes, []).decode()
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(text) for s in family.samples}
    assert values[("wsproxy_connections_active", (("backend", "b1"),))] == 7
    assert values[("wsproxy_connections_total", (("outcome", "upgraded"),))] == 7
    assert values[("wsproxy_connection_duration_seconds_bucket", (("le", "1.0"),))] == 7
    assert values[("wsproxy_connection_duration_seconds_sum", ())] == 1.0
    assert values[("wsproxy_draining", ())] == 1  # either drains: the proxy drains
    assert values[("wsproxy_backend_healthy", (("backend", "b1"),))] == 0  # all must agree
    assert values[("wsproxy_build_info", (("speedups", "c"), ("version", "1.0")))] == 1
    assert text.count("# TYPE wsproxy_connections_total counter") == 1
