"""The transition tables (the session's and a leg's): every (state, trigger) pair is
either listed or refused loudly."""

from __future__ import annotations

import itertools

import pytest

from wsproxy.core.states import (
    LEG_CAN_RECEIVE,
    LEG_CAN_SEND,
    LEG_FINISHED,
    LEG_TRANSITIONS,
    NON_TERMINAL,
    TERMINAL,
    TRANSITIONS,
    LegState,
    LegTrigger,
    SessionState,
    Side,
    Trigger,
    next_leg_state,
    next_state,
)
from wsproxy.errors import InvalidTransition, LocalProtocolError

S = SessionState
T = Trigger


@pytest.mark.parametrize(
    ("state", "trigger"), list(itertools.product(SessionState, Trigger)), ids=str
)
def test_every_pair_is_in_the_table_or_raises(state: SessionState, trigger: Trigger) -> None:
    if (state, trigger) in TRANSITIONS:
        assert next_state(state, trigger) is TRANSITIONS[state, trigger]
    else:
        with pytest.raises(InvalidTransition) as info:
            next_state(state, trigger)
        assert info.value.state is state
        assert info.value.trigger is trigger
        assert isinstance(info.value, LocalProtocolError)


def test_terminal_states_have_no_way_out() -> None:
    assert not [pair for pair in TRANSITIONS if pair[0] in TERMINAL]


def test_every_non_terminal_state_can_fail() -> None:
    for state in NON_TERMINAL:
        assert next_state(state, T.TRANSPORT_LOST) is S.FAILED
        assert next_state(state, T.TIMED_OUT) is S.FAILED


@pytest.mark.parametrize(
    ("path", "end"),
    [
        ([T.REQUEST_ACCEPTED, T.UPSTREAM_ACCEPTED, T.CLOSE_STARTED, T.BOTH_CLOSED], S.CLOSED),
        ([T.REQUEST_REJECTED], S.REJECTED),
        ([T.REQUEST_ACCEPTED, T.UPSTREAM_RETRY, T.UPSTREAM_RETRY, T.UPSTREAM_ACCEPTED], S.OPEN),
        ([T.REQUEST_ACCEPTED, T.UPSTREAM_REJECTED], S.REJECTED),
        ([T.REQUEST_ACCEPTED, T.SHUTDOWN], S.REJECTED),
        ([T.SHUTDOWN], S.REJECTED),
        ([T.REQUEST_ACCEPTED, T.UPSTREAM_ACCEPTED, T.CLOSE_STARTED, T.CLOSE_STARTED], S.CLOSING),
        ([T.REQUEST_ACCEPTED, T.UPSTREAM_ACCEPTED, T.CLOSE_STARTED, T.TIMED_OUT], S.FAILED),
        ([T.REQUEST_ACCEPTED, T.REFUSED_WITH_CLOSE, T.BOTH_CLOSED], S.CLOSED),
        ([T.REQUEST_ACCEPTED, T.REFUSED_WITH_CLOSE, T.TRANSPORT_LOST], S.FAILED),
    ],
)
def test_paths_through_the_diagram(path: list[Trigger], end: SessionState) -> None:
    state = S.AWAIT_REQUEST
    for trigger in path:
        state = next_state(state, trigger)
    assert state is end


def test_side_other() -> None:
    assert Side.CLIENT.other is Side.UPSTREAM
    assert Side.UPSTREAM.other is Side.CLIENT


# A leg's close handshake…

L = LegState
LT = LegTrigger

#: Every move a leg may make, written out (the table builds GIVE_UP's by comprehension).
LEG_MOVES = {
    (L.OPEN, LT.SEND_CLOSE): L.CLOSE_SENT,
    (L.OPEN, LT.RECEIVE_CLOSE): L.CLOSE_RECEIVED,
    (L.OPEN, LT.PROTOCOL_BROKEN): L.CLOSE_RECEIVED,
    (L.CLOSE_SENT, LT.RECEIVE_CLOSE): L.CLOSED,
    (L.CLOSE_RECEIVED, LT.SEND_CLOSE): L.CLOSED,
    (L.CLOSED, LT.ABANDON): L.FAILED,
    (L.OPEN, LT.UNUSED): L.CLOSED,  # the backend leg of an upgrade refused with a close
    (L.OPEN, LT.GIVE_UP): L.FAILED,
    (L.CLOSE_SENT, LT.GIVE_UP): L.FAILED,
    (L.CLOSE_RECEIVED, LT.GIVE_UP): L.FAILED,
    (L.FAILED, LT.GIVE_UP): L.FAILED,
}


@pytest.mark.parametrize(("pair", "end"), LEG_MOVES.items(), ids=str)
def test_every_allowed_leg_move(pair: tuple[LegState, LegTrigger], end: LegState) -> None:
    assert next_leg_state(*pair) is end


def test_the_leg_table_has_no_other_moves() -> None:
    assert LEG_TRANSITIONS == LEG_MOVES


@pytest.mark.parametrize(
    ("state", "trigger"),
    [pair for pair in itertools.product(LegState, LegTrigger) if pair not in LEG_MOVES],
    ids=str,
)
def test_an_impossible_leg_move_raises(state: LegState, trigger: LegTrigger) -> None:
    with pytest.raises(InvalidTransition) as info:
        next_leg_state(state, trigger)
    assert info.value.state is state
    assert info.value.trigger is trigger
    assert isinstance(info.value, LocalProtocolError)


def test_a_closed_leg_is_never_lost() -> None:
    # A leg whose handshake completed stays CLOSED whatever its transport does.
    with pytest.raises(InvalidTransition):
        next_leg_state(L.CLOSED, LT.GIVE_UP)


def test_finished_legs_only_fail() -> None:
    assert all(end is L.FAILED for (state, _), end in LEG_TRANSITIONS.items()
               if state in LEG_FINISHED)


@pytest.mark.parametrize(
    ("path", "end"),
    [
        ([LT.SEND_CLOSE, LT.RECEIVE_CLOSE], L.CLOSED),  # we closed first
        ([LT.RECEIVE_CLOSE, LT.SEND_CLOSE], L.CLOSED),  # the peer did
        ([LT.PROTOCOL_BROKEN, LT.SEND_CLOSE, LT.ABANDON], L.FAILED),  # told why, not awaited
        ([LT.SEND_CLOSE, LT.GIVE_UP, LT.GIVE_UP], L.FAILED),  # no answer, then its EOF
    ],
)
def test_paths_through_the_leg_diagram(path: list[LegTrigger], end: LegState) -> None:
    state = L.OPEN
    for trigger in path:
        state = next_leg_state(state, trigger)
    assert state is end


def test_what_a_leg_may_send_and_receive() -> None:
    assert {L.OPEN, L.CLOSE_RECEIVED} == LEG_CAN_SEND  # our close is still to go
    assert {L.OPEN, L.CLOSE_SENT} == LEG_CAN_RECEIVE  # its close is still to come
    assert {L.CLOSED, L.FAILED} == LEG_FINISHED
