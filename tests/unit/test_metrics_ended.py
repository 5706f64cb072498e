"""Metrics of ended connections: the upgraded ones counted in plain ints
(Metrics.upgraded_ended) say what the Counters of every outcome said before."""

from __future__ import annotations

import bisect
from collections import Counter
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.admin.metrics import DURATION_BUCKETS, REGISTERED_CODES, Metrics
from wsproxy.core.closes import CloseCode
from wsproxy.core.states import Side


class _Reference:
    """Metrics.connection_ended as it was: a Counter per series."""

    def __init__(self) -> None:
        self.connections: Counter[str] = Counter()
        self.handshake_failures: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.undelivered: Counter[str] = Counter()
        self.closes: Counter[tuple[str, str]] = Counter()
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0

    def connection_ended(self, conn: Any, outcome: str, failure: str | None) -> None:
        self.connections[outcome] += 1
        if failure is not None:
            self.handshake_failures[failure] += 1
        if not conn.opened:
            return
        session = conn.session
        to_client, to_backend = session.flows_to()
        self.messages["to_backend"] += to_backend.messages
        self.messages["to_client"] += to_client.messages
        self.bytes["to_backend"] += to_backend.bytes
        self.bytes["to_client"] += to_client.bytes
        self.undelivered["to_backend"] += to_backend.undelivered
        self.undelivered["to_client"] += to_client.undelivered
        code = session.close_code_sent(Side.CLIENT)
        label = "none" if code is None else str(code) if code in REGISTERED_CODES else "other"
        self.closes[label, session.initiator or "unknown"] += 1
        age = conn.age()
        self.counts[bisect.bisect_left(DURATION_BUCKETS, age)] += 1
        self.total += age


counts = st.integers(min_value=0, max_value=2**40)
flows = st.builds(SimpleNamespace, messages=counts, bytes=counts, undelivered=counts)
sent_codes = (st.none() | st.integers(min_value=0, max_value=5000)
              | st.sampled_from(list(CloseCode)))
upgraded = st.builds(
    lambda to_client, to_backend, code, initiator, age: ("upgraded", None, SimpleNamespace(
        opened=True, age=lambda: age, session=SimpleNamespace(
            flows_to=lambda: (to_client, to_backend),
            close_code_sent=lambda side: code if side is Side.CLIENT else None,
            ending=lambda: (
                to_backend.messages, to_client.messages, to_backend.bytes, to_client.bytes,
                to_backend.undelivered, to_client.undelivered, None, None, code),
            initiator=initiator,
        ))),
    flows, flows, sent_codes, st.sampled_from([None, "client", "upstream", "proxy"]),
    st.floats(min_value=0, max_value=1e6),
)
other = st.builds(
    lambda outcome, failure: (outcome, failure, SimpleNamespace(opened=False)),
    st.sampled_from(["rejected", "failed", "probe", "http"]),
    st.none() | st.sampled_from(["timeout", "origin", "client_gone", "no_backend"]),
)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(upgraded | other, max_size=12))
def test_ended_connections_count_as_before(ended: list[tuple[str, str | None, Any]]) -> None:
    ctx = SimpleNamespace(registry=SimpleNamespace(connections={}))
    metrics, reference = Metrics(ctx), _Reference()
    for outcome, failure, conn in ended:
        reference.connection_ended(conn, outcome, failure)
        if conn.opened:  # as the supervisor ends them
            session = conn.session
            metrics.upgraded_ended_with(session.ending(), session.initiator, conn.age())
        else:
            metrics.connection_ended(conn, outcome, failure)
    # Series in the same order with the same values (the exposition's order).
    assert list(metrics.ended_outcomes().items()) == list(reference.connections.items())
    assert list(metrics.handshake_failures.items()) == list(
        reference.handshake_failures.items())
    messages, size, undelivered = metrics.live_traffic()
    assert list(messages.items()) == list(reference.messages.items())
    assert list(size.items()) == list(reference.bytes.items())
    assert list(undelivered.items()) == list(reference.undelivered.items())
    assert list(metrics.closes.items()) == list(reference.closes.items())
    assert metrics.duration.counts == reference.counts
    assert metrics.duration.total == reference.total


def test_an_opened_connection_through_connection_ended() -> None:
    """connection_ended() of an opened connection still counts it (as upgraded_ended)."""
    ctx = SimpleNamespace(registry=SimpleNamespace(connections={}))
    metrics = Metrics(ctx)
    conn = SimpleNamespace(opened=True, age=lambda: 2.0, session=SimpleNamespace(
        ending=lambda: (2, 2, 10, 10, 0, 0, None, None, 1000), initiator="client"))
    metrics.connection_ended(conn, "upgraded", None)  # type: ignore[arg-type]
    assert metrics.ended_outcomes() == Counter({"upgraded": 1})
    assert metrics.closes == {("1000", "client"): 1}
    assert metrics.messages_to_backend == metrics.messages_to_client == 2
