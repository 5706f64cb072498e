"""A coroutine run by hand, without an asyncio Task: for an upgrade's dial.

An upgrade's only coroutine is its dial (the loop's create_connection is one). As an
asyncio Task it cost three loop callbacks (the first step, the wake-up, the done
callback), a context copy, a Task object and its entry in asyncio's WeakSet of
tasks: ~8-10k instructions of an upgrade's ~535k (callgrind, bench/cpu_cost.py).
``Steps`` runs it the way a Task would, for what a dial needs:

- the first step runs at once, in the caller's frame (a Task's waits a loop pass);
- each future the coroutine waits on wakes it with a done callback, and the next
  step sees the future's outcome, as under a Task (``await`` reads it);
- a bare ``yield`` (``asyncio.sleep(0)``) is a step deferred by one loop pass;
- ``cancel()`` cancels the future waited on (the coroutine sees CancelledError, as a
  Task's would), or, if there is none (the future is done, its wake-up not yet run,
  or the coroutine is running), throws CancelledError in at the next step;
- how it ended goes to the *done* callback: None, or the exception that came out of
  the coroutine (CancelledError included).

What a Task gives and ``Steps`` does not: ``asyncio.current_task()`` inside (None, or
the caller's task), and no copy of the context per coroutine (each step runs in the
context its future's callback was registered in). Nothing the dial awaits asks for
either. Subclass it (slots) to share the object with something per attempt
(io.connection's UpstreamProtocol is one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

#: How a run ended: the coroutine returned (None) or raised.
Done = Callable[["Steps", BaseException | None], None]


class Steps:
    """One coroutine driven step by step (see the module doc)."""

    __slots__ = ("_cancelling", "_coro", "_done", "_waiting")

    def start(self, coro: Coroutine[Any, Any, None], done: Done) -> None:
        """Run *coro*'s first step now; *done* is told how it ended."""
        self._coro: Coroutine[Any, Any, None] | None = coro
        self._done = done
        self._waiting: asyncio.Future[Any] | None = None
        self._cancelling = False
        self._step()

    @property
    def running(self) -> bool:
        """Whether the coroutine has not ended yet."""
        return self._coro is not None

    def cancel(self) -> None:
        """Have the coroutine see CancelledError where it waits (see the module doc)."""
        if self._coro is None:
            return
        waiting = self._waiting
        if waiting is None or not waiting.cancel():
            self._cancelling = True

    def _step(self, _: object = None) -> None:
        coro = self._coro
        assert coro is not None
        self._waiting = None
        try:
            if self._cancelling:
                self._cancelling = False
                yielded = coro.throw(asyncio.CancelledError())
            else:
                yielded = coro.send(None)
        except StopIteration:
            self._end(None)
            return
        except (KeyboardInterrupt, SystemExit) as exc:  # as a Task: told, and raised on
            self._end(exc)
            raise
        except BaseException as exc:  # handed to done, as a Task keeps it
            self._end(exc)
            return
        if yielded is None:  # a bare yield: asyncio.sleep(0)
            asyncio.get_running_loop().call_soon(self._step)
        elif getattr(yielded, "_asyncio_future_blocking", False):
            yielded._asyncio_future_blocking = False
            self._waiting = yielded
            yielded.add_done_callback(self._step)
            if self._cancelling and yielded.cancel():
                self._cancelling = False
        else:  # not something asyncio's loop could wait on: a bug in the coroutine
            coro.close()
            self._end(RuntimeError(f"Steps got a bad yield: {yielded!r}"))

    def _end(self, exc: BaseException | None) -> None:
        self._coro = None
        self._waiting = None
        self._done(self, exc)
