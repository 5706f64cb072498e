"""Live connections and the connection limits, as pure bookkeeping."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class Pool(Protocol):
    """``max_connections`` shared by several processes (``workers: N``): each one
    publishes what it holds, and a slot is claimed against the sum of all of them."""

    def claim(self, held: int, limit: int) -> bool:
        """One slot more for a process that holds *held*: published (*held* + 1) if
        all the processes together hold fewer than *limit*, else refused."""
        ...

    def publish(self, held: int) -> None:
        """This process now holds *held*."""
        ...


class Registry(Generic[T]):
    """Every accepted connection by id, and what counts against the limits.

    Two kinds of connection count against ``max_connections`` and ``max_per_ip``:

    - *admitted* upgrades (``admit()``, when the request has been read), under the
      client's address as the proxy believes it (X-Forwarded-For from a trusted
      proxy, a PROXY header). Counting plain connections from the TCP accept instead
      refused a whole burst of simultaneous upgrades, none of the ones that fit
      included, and counted clients behind a load balancer under the balancer's
      address. A plain connection that has not sent its request yet is bounded by
      ``limits.handshake_timeout`` instead.
    - *TLS handshakes* in progress (``handshake_started()``), under the socket's peer
      address: nothing else is known before TLS, and a handshake costs the proxy
      CPU and a socket, so a flood of them must not go uncounted. A handshake's slot
      is given back (``handshake_ended()``) before its connection can be admitted,
      so that one connection never holds two.

    A resume attempt (wsproxy.io.resume) may be admitted *in place of* the session
    it resumes: counted as if that session's slot were given back first, it shares
    the slot until it takes it over (``take_over()``) or ends. One attempt at a
    time per session, so the limits are exceeded by at most one short-lived attempt
    per held session.

    With a *pool* (``workers: N``), ``max_connections`` is the proxy's, counted
    over every worker: this registry claims each slot from the pool, and publishes
    its count at each change.
    """

    def __init__(self, *, max_connections: int, max_per_ip: int) -> None:
        self.max_connections = max_connections
        #: 0: no limit.
        self.max_per_ip = max_per_ip
        self.connections: dict[str, T] = {}
        self._admitted: dict[str, str] = {}  # conn id -> client address
        #: TLS handshakes in progress; their addresses are counted in _per_ip.
        self.handshakes = 0
        #: Count by address, only of addresses counted in (a plain dict: a Counter's
        #: missing key goes through Python code, twice a connection).
        self._per_ip: dict[str, int] = {}
        #: Attempts admitted in place of a session: attempt id -> (session id, address).
        self._sharing: dict[str, tuple[str, str]] = {}
        #: None: max_connections is this process's alone.
        self.pool: Pool | None = None

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn_id: str, conn: T) -> None:
        self.connections[conn_id] = conn

    def _refusal(self, ip: str | None, given_back: str | None = None) -> str | None:
        """Why one more connection from *ip* would be one too many (None: per-IP not
        applied), if it would; *given_back*: the address of a slot counted as free.
        None means the slot is counted in: with a pool, it has been claimed."""
        total = len(self._admitted) + self.handshakes - (given_back is not None)
        pool = self.pool
        if pool is None and total >= self.max_connections:
            return "too many connections"
        if ip is not None and self.max_per_ip and (
            self._per_ip.get(ip, 0) - (given_back == ip) >= self.max_per_ip
        ):
            return "too many connections from this address"
        # A shared slot (given back) adds nothing to what the pool counts.
        if pool is not None and given_back is None and not pool.claim(
                total, self.max_connections):
            return "too many connections"
        return None

    def admit(self, conn_id: str, ip: str, in_place_of: str | None = None) -> str | None:
        """Count *conn_id* in, or say why it would be one too many (then it is not).

        *in_place_of*: the session a resume attempt resumes, whose slot it may share
        (see the class doc); ignored while another attempt shares it.
        """
        if (in_place_of is not None and in_place_of in self._admitted
                and all(held != in_place_of for held, _ in self._sharing.values())):
            reason = self._refusal(ip, given_back=self._admitted[in_place_of])
            if reason is None:
                self._sharing[conn_id] = (in_place_of, ip)
            return reason
        reason = self._refusal(ip)
        if reason is None:
            self._admitted[conn_id] = ip
            per_ip = self._per_ip
            per_ip[ip] = per_ip.get(ip, 0) + 1
        return reason

    def handshake_started(self, ip: str | None) -> str | None:
        """Count a TLS handshake from *ip* in, or say why it would be one too many.

        *ip* None: the peer stands for other clients (a trusted proxy), whose
        addresses are not known yet; the handshake counts in the total only.
        Each one counted in must be ended exactly once with the same *ip*.
        """
        reason = self._refusal(ip)
        if reason is None:
            self.handshakes += 1
            if ip is not None:
                self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return reason

    def handshake_ended(self, ip: str | None) -> None:
        """A handshake counted in by handshake_started(*ip*) is over, however it ended."""
        self.handshakes -= 1
        if ip is not None:
            self._forget_ip(ip)
        self._publish()

    def take_over(self, conn_id: str, taker_id: str) -> None:
        """*conn_id* goes on in *taker_id*'s slot, under its address, and gives its own
        back: a resumed session (wsproxy.io.resume) counts where its client is now,
        in the slot its resume attempt was admitted to (so that attempt was refused
        if that address was at its limit). The total does not change for *conn_id*;
        *taker_id* is no longer counted."""
        shared = self._sharing.pop(taker_id, None)
        if shared is None:
            ip = self._admitted.pop(taker_id, None)
            if ip is None:
                return
        else:
            ip = shared[1]
            if conn_id not in self._admitted:
                return  # the session ended meanwhile, and its slot with it
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        old = self._admitted.get(conn_id)
        self._admitted[conn_id] = ip
        if old is not None:
            self._forget_ip(old)
        self._publish()

    def remove(self, conn_id: str) -> None:
        self.connections.pop(conn_id, None)
        self._sharing.pop(conn_id, None)
        ip = self._admitted.pop(conn_id, None)
        if ip is not None:
            self._forget_ip(ip)
            self._publish()

    def _publish(self) -> None:
        """Tell the pool what this process holds now (a slot was given back)."""
        if self.pool is not None:
            self.pool.publish(len(self._admitted) + self.handshakes)

    def _forget_ip(self, ip: str) -> None:
        per_ip = self._per_ip
        left = per_ip.get(ip, 0) - 1
        if left <= 0:
            per_ip.pop(ip, None)
        else:
            per_ip[ip] = left
