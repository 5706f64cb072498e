"""The transition table: every (state, trigger) pair is either listed or refused loudly."""

from __future__ import annotations

import itertools

import pytest

from wsproxy.core.states import (
    NON_TERMINAL,
    TERMINAL,
    TRANSITIONS,
    SessionState,
    Side,
    Trigger,
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
