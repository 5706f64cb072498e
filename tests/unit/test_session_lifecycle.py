"""Session lifecycle rules: backend restarts (1001/1012) and kubelet probes.

A backend that closes FIRST with 1001 or 1012 is restarting: its client gets the
configured ``restart_code`` (SPEC: ``drain.backend_close_code``) with the restart
reason, the backend's close is answered by the proxy itself, and
``backend_restarting`` tells the driver to hold the backend down. A backend close
that ANSWERS a close (the client's, or the proxy's own) is relayed unchanged.
"""

from __future__ import annotations

import pytest
from wsproto.events import CloseConnection, TextMessage

from tests.helpers import SessionHarness, build_raw, chunks
from wsproxy.core import LegState, Session, SessionState, Side
from wsproxy.core.frames import TEXT

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM
RESTART_REASON = "backend restarting; retry-after-ms=250"


def harness(*, restart_code: int | None = 1012, chunk_size: int = 0) -> SessionHarness:
    """A SessionHarness whose session translates backend restarts."""
    h = SessionHarness(opened=False, chunk_size=chunk_size)
    h.session = Session("test", restart_code=restart_code, restart_reason=RESTART_REASON)
    h.open()
    assert h.session.state is SessionState.OPEN
    return h


def assert_both_closed(h: SessionHarness) -> None:
    assert h.session.leg_state(CLIENT) is LegState.CLOSED
    assert h.session.leg_state(UPSTREAM) is LegState.CLOSED
    assert h.session.state is SessionState.CLOSED


# Backend restarts --------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [0, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("code", [1001, 1012])
def test_backend_restart_close_gives_the_client_the_restart_code(
    code: int, chunk_size: int
) -> None:
    h = harness(chunk_size=chunk_size)
    h.upstream_sends(CloseConnection(code=code, reason="deploying"))
    # The client got our restart close, not the backend's.
    assert h.closes_to(CLIENT) == [(1012, RESTART_REASON)]
    assert h.client_received() == [CloseConnection(code=1012, reason=RESTART_REASON)]
    # The backend's close was answered by the proxy, with its own code.
    assert h.closes_to(UPSTREAM) == [(code, "deploying")]
    assert h.session.backend_restarting is True
    assert h.session.initiator == "upstream"
    # The client's answer completed its leg and went nowhere else.
    assert_both_closed(h)
    assert h.session.close_codes() == {"client": 1012, "upstream": code}


def test_restart_code_is_the_configured_one() -> None:
    h = harness(restart_code=4100)
    h.upstream_sends(CloseConnection(code=1001, reason=""))
    assert h.closes_to(CLIENT) == [(4100, RESTART_REASON)]
    assert h.session.backend_restarting


def test_a_message_before_the_restart_close_is_still_delivered() -> None:
    h = harness()
    data = h.backend.send(TextMessage(data="last words"))
    data += h.backend.send(CloseConnection(code=1012, reason="bye"))
    h.upstream_sends_raw(data)
    events = h.client_received()
    assert events == [TextMessage(data="last words"),
                      CloseConnection(code=1012, reason=RESTART_REASON)]
    assert_both_closed(h)


def test_client_messages_after_the_restart_are_counted_not_lost_silently() -> None:
    """The backend leg is closed at once: what the client still sends before its close
    reply cannot go anywhere, and is counted as undelivered."""
    h = harness()
    h.auto_close[CLIENT] = False
    h.upstream_sends(CloseConnection(code=1012))
    assert h.session.leg_state(UPSTREAM) is LegState.CLOSED
    h.client_sends_raw(build_raw(TEXT, b"too late"))  # wsproto would not send it
    h.client_sends(CloseConnection(code=1012, reason=RESTART_REASON))
    assert h.upstream_received() == [CloseConnection(code=1012, reason="")]
    assert h.session.undelivered(UPSTREAM) == 1
    assert_both_closed(h)


@pytest.mark.parametrize("code", [1000, 1011, 4000])
def test_other_backend_closes_are_relayed_unchanged(code: int) -> None:
    h = harness()
    h.upstream_sends(CloseConnection(code=code, reason="done"))
    assert h.closes_to(CLIENT) == [(code, "done")]
    assert h.session.backend_restarting is False
    assert_both_closed(h)
    # The client's answer went back to the backend: the backend's handshake completed.
    assert h.upstream_received() == [CloseConnection(code=code, reason="done")]


def test_without_a_restart_code_a_restart_close_is_relayed_unchanged() -> None:
    h = harness(restart_code=None)
    h.upstream_sends(CloseConnection(code=1012, reason="deploying"))
    assert h.closes_to(CLIENT) == [(1012, "deploying")]
    assert h.session.backend_restarting is False
    assert_both_closed(h)


@pytest.mark.parametrize("code", [1001, 1012])
def test_backend_answer_to_a_client_close_is_relayed_unchanged(code: int) -> None:
    h = harness()
    h.client_sends(CloseConnection(code=code, reason="client leaving"))
    # The backend echoed the client's code: that is an answer, not a restart.
    assert h.upstream_received() == [CloseConnection(code=code, reason="client leaving")]
    assert h.closes_to(CLIENT) == [(code, "client leaving")]
    assert h.session.backend_restarting is False
    assert h.session.initiator == "client"
    assert_both_closed(h)


def test_backend_answer_to_a_proxy_drain_close_is_relayed_unchanged() -> None:
    """The proxy closes the client (drain); the client's answer starts the backend's
    handshake; the backend's 1001 answer is not mistaken for a restart."""
    h = harness()
    h.session.close(CLIENT, 1001, "proxy draining")
    h.pump()
    assert h.closes_to(CLIENT) == [(1001, "proxy draining")]
    assert h.closes_to(UPSTREAM) == [(1001, "proxy draining")]
    assert h.upstream_received() == [CloseConnection(code=1001, reason="proxy draining")]
    assert h.session.backend_restarting is False
    assert h.session.initiator == "proxy"
    assert_both_closed(h)


def test_backend_answer_to_a_proxy_close_on_its_leg_is_not_a_restart() -> None:
    h = harness()
    h.session.close(UPSTREAM, 1001, "going away")
    h.pump()
    assert h.session.backend_restarting is False
    assert h.closes_to(CLIENT) == [(1001, "going away")]  # the answer, relayed on
    assert_both_closed(h)


def test_crossing_closes_are_not_a_restart() -> None:
    """The client's close and the backend's 1012 cross on the wire: by the time the
    backend's arrives, it answers the client's close, and is relayed unchanged."""
    h = harness()
    h.auto_close[UPSTREAM] = False
    h.client_sends(CloseConnection(code=1000, reason="bye"), flush=False)
    h.upstream_sends(CloseConnection(code=1012, reason="restarting"), flush=False)
    h.pump()
    assert h.session.backend_restarting is False
    assert h.closes_to(CLIENT) == [(1012, "restarting")]
    assert h.closes_to(UPSTREAM) == [(1000, "bye")]
    assert_both_closed(h)


# Probes ----------------------------------------------------------------------------------


def probe_request(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: pod:8080\r\n{extra}\r\n".encode()


@pytest.mark.parametrize("chunk_size", [0, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("path", "probe"), [
    ("/healthz", "/healthz"),
    ("/readyz", "/readyz"),
    ("/readyz?verbose=1", "/readyz"),
])
def test_plain_get_of_a_probe_path_sets_probe(path: str, probe: str, chunk_size: int) -> None:
    session = Session("p")
    for chunk in chunks(probe_request(path, extra="User-Agent: kube-probe/1.30\r\n"),
                        chunk_size):
        session.receive_data(CLIENT, chunk)
    assert session.probe == probe
    assert session.request is None
    assert session.state is SessionState.AWAIT_REQUEST
    assert session.data_to_send(CLIENT) == []  # the driver answers it
    session.reject(200, "ok")
    answer = b"".join(session.data_to_send(CLIENT))
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert session.should_close(CLIENT)


def test_probe_answer_can_be_503() -> None:
    session = Session("p")
    session.receive_data(CLIENT, probe_request("/readyz"))
    assert session.probe == "/readyz"
    session.reject(503, "not ready")
    assert b"".join(session.data_to_send(CLIENT)).startswith(b"HTTP/1.1 503 ")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/"),
    ("GET", "/healthzz"),
    ("GET", "/api/healthz"),
    ("POST", "/healthz"),
    ("HEAD", "/readyz"),
])
def test_other_plain_requests_are_not_probes(method: str, path: str) -> None:
    session = Session("p")
    session.receive_data(CLIENT, probe_request(path, method))
    assert session.probe is None
    assert session.rejected_status == 400
    assert b"".join(session.data_to_send(CLIENT)).startswith(b"HTTP/1.1 400 ")


def test_an_upgrade_to_a_probe_path_is_an_upgrade() -> None:
    session = Session("p")
    session.receive_data(CLIENT, probe_request(
        "/healthz",
        extra="Upgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    ))
    assert session.probe is None
    assert session.request is not None
    assert session.request.target == b"/healthz"
