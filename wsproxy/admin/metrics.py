"""Prometheus metrics, computed when scraped.

The per-message counters live where they are counted anyway: in each session
(wsproxy.core.session). A scrape adds up the live connections and the totals kept
from the ones that ended, so the hot path pays nothing for metrics. prometheus-client
provides the registry (one per proxy: no global state) and the text exposition.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from wsproxy import __version__
from wsproxy.core import closes
from wsproxy.core.states import Side
from wsproxy.io.resume import table_for
from wsproxy.log import dropped_lines
from wsproxy.speedups import SPEEDUPS

if TYPE_CHECKING:
    from wsproxy.control.discovery import DiscoveryStatus
    from wsproxy.control.drain import Drain
    from wsproxy.control.rebalance import Rebalancer
    from wsproxy.core.balance import BackendState
    from wsproxy.core.registry import Registry
    from wsproxy.core.session import Ending, Session
    from wsproxy.io.connection import Connection
    from wsproxy.io.handoff import Handoff
    from wsproxy.io.plain_http import PlainHttp

#: Close codes with a series of their own; any other is counted as "other".
REGISTERED_CODES: Final = closes.REGISTERED
DURATION_BUCKETS: Final = (1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 6 * 3600.0, 24 * 3600.0)
RTT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
HTTP_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                       30.0)
DIRECTIONS: Final = {Side.UPSTREAM: "to_backend", Side.CLIENT: "to_client"}
#: The ``code`` label of wsproxy_closes by the code the client was sent (None: none):
#: what ``"none" if code is None else str(code) if code in REGISTERED_CODES else "other"``
#: says, in one look-up (``.get(code, "other")``).
CODE_LABELS: Final[dict[int | None, str]] = {
    None: "none", **{int(code): str(int(code)) for code in REGISTERED_CODES}
}


class Histogram:
    """Bucket counts and a sum: what a Prometheus histogram needs, nothing more."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class MetricsSource(Protocol):
    """What a scrape reads of the live proxy (the wiring, ProxyContext)."""

    @property
    def registry(self) -> Registry[Connection]: ...

    @property
    def ready(self) -> bool: ...

    @property
    def drains(self) -> Mapping[BackendState | None, Drain]: ...

    @property
    def discovery(self) -> DiscoveryStatus: ...

    @property
    def http(self) -> PlainHttp: ...

    def backends_shown(self) -> list[BackendState]: ...

    @property
    def rebalancer(self) -> Rebalancer: ...

    @property
    def handoff(self) -> Handoff | None: ...


class Metrics:
    """Counters of the connections that ended, and the scrape of the live ones.

    An upgraded connection's end (``upgraded_ended``, one per upgrade) adds to plain
    ints and a plain dict: a Counter's ``c[k] += n`` goes through its Python subclass's
    item slots (~1k instructions each, ~20k an upgrade for the eleven it took).
    """

    def __init__(self, ctx: MetricsSource) -> None:
        self.ctx = ctx
        #: Connections that ended, by outcome, but for "upgraded": its key is put here by
        #: the first upgraded one to end (so that the series keep their order), its count
        #: is ``upgraded`` (``ended_outcomes()`` has them all).
        self.connections: Counter[str] = Counter()
        self.upgraded = 0
        self.handshake_failures: Counter[str] = Counter()
        #: The traffic of the upgraded connections that ended (``ended_traffic()``).
        self.messages_to_backend = self.messages_to_client = 0
        self.bytes_to_backend = self.bytes_to_client = 0
        self.undelivered_to_backend = self.undelivered_to_client = 0
        #: Ended upgraded connections by who closed first (``initiator``), then by the
        #: ``code`` label: counted without a (label, initiator) tuple made, hashed and
        #: compared twice per connection (~1k instructions; ``closes`` has them by pair).
        self._closes_by: dict[str | None, dict[str, int]] = {}
        #: The (initiator, label) pairs in the order first counted: the series' order.
        self._close_pairs: list[tuple[str | None, str]] = []
        self.duration = Histogram(DURATION_BUCKETS)
        self.rtt = {side: Histogram(RTT_BUCKETS) for side in Side}
        self.http_requests: Counter[str] = Counter()
        self.http_duration = Histogram(HTTP_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def connection_ended(self, conn: Connection, outcome: str, failure: str | None) -> None:
        """*conn* ended, its handshake with *outcome* (and *failure*): ``conn.outcome()``."""
        if conn.opened:  # outcome "upgraded", no failure
            self.upgraded_ended(conn.session, conn.age())
            return
        self.connections[outcome] += 1
        if failure is not None:
            self.handshake_failures[failure] += 1

    def upgraded_ended(self, session: Session, age: float) -> None:
        """A connection that opened ended after *age* seconds: connection_ended() of
        its outcome "upgraded", with its session and age at hand."""
        self.upgraded_ended_with(session.ending(), session.initiator, age)

    def upgraded_ended_with(self, ending: Ending, initiator: str | None, age: float) -> None:
        """upgraded_ended() of what its session's ``ending()`` said (and its
        ``initiator``), read once for this and the connection.closed line."""
        if not self.upgraded:  # the first: "upgraded" takes its place among the outcomes
            self.connections["upgraded"] += 0
        self.upgraded += 1
        (messages_to_backend, messages_to_client, bytes_to_backend, bytes_to_client,
         undelivered_to_backend, undelivered_to_client, _, _, sent) = ending
        self.messages_to_backend += messages_to_backend
        self.messages_to_client += messages_to_client
        self.bytes_to_backend += bytes_to_backend
        self.bytes_to_client += bytes_to_client
        self.undelivered_to_backend += undelivered_to_backend
        self.undelivered_to_client += undelivered_to_client
        label = CODE_LABELS.get(sent, "other")
        counts = self._closes_by.get(initiator)
        if counts is not None and label in counts:
            counts[label] += 1
        else:
            self._first_close(initiator, label)
        self.duration.observe(age)

    def _first_close(self, initiator: str | None, label: str) -> None:
        self._closes_by.setdefault(initiator, {})[label] = 1
        self._close_pairs.append((initiator, label))

    @property
    def closes(self) -> dict[tuple[str, str], int]:
        """Ended upgraded connections by (code label, initiator), in the order each pair
        was first counted (an initiator of None is "unknown")."""
        closes: dict[tuple[str, str], int] = {}
        for initiator, label in self._close_pairs:
            key = (label, initiator or "unknown")
            closes[key] = closes.get(key, 0) + self._closes_by[initiator][label]
        return closes

    def ended_outcomes(self) -> Counter[str]:
        """The connections that ended, by outcome."""
        outcomes = Counter(self.connections)
        if self.upgraded:
            outcomes["upgraded"] += self.upgraded
        return outcomes

    def ended_traffic(self) -> tuple[Counter[str], Counter[str], Counter[str]]:
        """Messages, bytes and undelivered messages of the upgraded connections that
        ended, by direction (no series before the first)."""
        if not self.upgraded:
            return Counter(), Counter(), Counter()
        return (
            Counter({"to_backend": self.messages_to_backend,
                     "to_client": self.messages_to_client}),
            Counter({"to_backend": self.bytes_to_backend, "to_client": self.bytes_to_client}),
            Counter({"to_backend": self.undelivered_to_backend,
                     "to_client": self.undelivered_to_client}),
        )

    def http_request(self, status: int | None, seconds: float) -> None:
        """A plain HTTP request ended; *status* None: the client left before an answer."""
        self.http_requests["none" if status is None else f"{status // 100}xx"] += 1
        self.http_duration.observe(seconds)

    def live_traffic(self) -> tuple[Counter[str], Counter[str], Counter[str]]:
        messages, size, undelivered = self.ended_traffic()
        for conn in self.ctx.registry.connections.values():
            if conn.opened:
                _add_traffic(conn.session, messages, size, undelivered)
        return messages, size, undelivered


def _add_traffic(
    session: Session, messages: Counter[str], size: Counter[str], undelivered: Counter[str]
) -> None:
    """Add one session's own counters, by direction."""
    for side, direction in DIRECTIONS.items():
        messages[direction] += session.messages(side)
        size[direction] += session.bytes_relayed(side)
        undelivered[direction] += session.undelivered(side)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m, ctx = self.m, self.m.ctx
        yield InfoMetricFamily("wsproxy_build", "The version, and which frame scanner is in "
                               "use (speedups: c or python).",
                               value={"version": __version__, "speedups": SPEEDUPS})
        yield _gauge("wsproxy_connections_active", "Open proxied connections.", "backend",
                     ((b.name, b.active) for b in ctx.backends_shown()))
        outcomes = m.ended_outcomes()  # the ended ones, plus the open ones:
        outcomes["upgraded"] += sum(1 for c in ctx.registry.connections.values() if c.opened)
        yield _counter("wsproxy_connections", "Accepted TCP connections by how their "
                       "handshake ended.", "outcome", outcomes.items())
        yield _counter("wsproxy_handshake_failures", "Upgrades that did not open.", "reason",
                       m.handshake_failures.items())
        messages, size, undelivered = m.live_traffic()
        yield _counter("wsproxy_messages", "Data messages relayed.", "direction",
                       messages.items())
        yield _counter("wsproxy_bytes", "Bytes relayed, frame headers included.", "direction",
                       size.items())
        yield _counter("wsproxy_undelivered_messages", "Messages that arrived after a close "
                       "was sent their way (RFC 6455 5.5.1).", "direction", undelivered.items())
        closes = CounterMetricFamily("wsproxy_closes", "Ended connections by the close code "
                                     "the client got and who closed first.",
                                     labels=["code", "initiator"])
        for (code, initiator), count in m.closes.items():
            closes.add_metric([code, initiator], count)
        yield closes
        yield _gauge("wsproxy_backend_healthy", "1 if the backend is healthy (passes its "
                     "checks, not held down after a restart).",
                     "backend", ((b.name, int(b.healthy and not b.held))
                                 for b in ctx.backends_shown()))
        yield GaugeMetricFamily("wsproxy_draining", "1 while the proxy drains.",
                                value=int(not ctx.ready))
        yield GaugeMetricFamily("wsproxy_drain_remaining", "Connections (and plain HTTP "
                                "exchanges) left to close in drains in progress.", value=sum(
                                    len(d.members) for d in ctx.drains.values()))
        yield CounterMetricFamily("wsproxy_discovery_failures", "DNS discovery rounds that "
                                  "failed or came back empty (the last set was kept).",
                                  value=ctx.discovery.failures)
        yield _histogram("wsproxy_connection_duration_seconds", "Lifetime of ended "
                         "connections.", [], [((), m.duration)])
        yield _histogram("wsproxy_ping_rtt_seconds", "Heartbeat round-trip time.", ["leg"],
                         [((side.value,), h) for side, h in m.rtt.items()])
        yield _counter("wsproxy_http_requests", "Plain HTTP requests by the status class the "
                       "client got (none: it left first).", "status_class",
                       m.http_requests.items())
        yield _histogram("wsproxy_http_request_duration_seconds", "Plain HTTP requests, from "
                         "the request head to the response's end.", [], [((), m.http_duration)])
        yield GaugeMetricFamily("wsproxy_http_requests_active", "Plain HTTP requests in "
                                "flight.", value=ctx.http.active)
        shown = {b.name for b in ctx.backends_shown()}  # gone backends' series dropped
        yield _counter("wsproxy_rebalance_closes", "Connections closed by rebalancing "
                       "rounds (1012 rebalancing), by the backend they were on.", "backend",
                       ((name, n) for name, n in ctx.rebalancer.closes.items() if name in shown))
        yield GaugeMetricFamily("wsproxy_rebalance_ratio", "The most loaded backend taking "
                                "part in rebalancing over the mean of them (1: balanced).",
                                value=ctx.rebalancer.ratio())
        yield GaugeMetricFamily("wsproxy_rebalancing", "1 while a rebalancing round runs.",
                                value=int(ctx.rebalancer.current is not None))
        resume = table_for(ctx)  # the wiring is the connections' owner
        if resume.sessions or resume.outcomes:
            yield GaugeMetricFamily("wsproxy_resume_sessions_held", "Resumable sessions "
                                    "whose client is away (the backend leg waits).",
                                    value=resume.held())
            yield GaugeMetricFamily("wsproxy_resume_buffered_bytes", "Backend->client bytes "
                                    "kept for replay and client bytes held back until "
                                    "their message is whole, across resumable sessions.",
                                    value=resume.total.bytes)
            yield _counter("wsproxy_resumes", "Resume attempts by outcome (resumed, or why "
                           "not).", "outcome", resume.outcomes.items())
        yield CounterMetricFamily("wsproxy_log_lines_dropped", "Log lines dropped because "
                                  "stdout was not read fast enough (a full buffer of "
                                  "10,000 lines) or was closed.", value=dropped_lines())


def _counter(name: str, doc: str, label: str,
             values: Iterable[tuple[str, float]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, count in values:
        family.add_metric([value], count)
    return family


def _gauge(name: str, doc: str, label: str,
           values: Iterable[tuple[str, float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for value, count in values:
        family.add_metric([value], count)
    return family


def _histogram(name: str, doc: str, labels: list[str],
               series: Iterable[tuple[tuple[str, ...], Histogram]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in series:
        family.add_metric(list(values), h.cumulative(), h.total)
    return family
