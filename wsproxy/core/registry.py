"""Live connections and the connection limits, as pure bookkeeping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


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

    With ``workers: N`` each worker has a SharedRegistry: the limits count the
    connections of every worker.
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

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn_id: str, conn: T) -> None:
        self.connections[conn_id] = conn

    def limits_changed(self) -> None:
        """``max_connections`` or ``max_per_ip`` were set anew (a reload)."""

    def _refusal(self, ip: str | None, given_back: str | None = None,
                 elsewhere: int = 0, elsewhere_at_ip: int = 0) -> str | None:
        """Why one more connection from *ip* would be one too many (None: per-IP not
        applied), if it would; *given_back*: the address of a slot counted as free;
        *elsewhere*, *elsewhere_at_ip*: what other workers count, in all and at *ip*."""
        total = len(self._admitted) + self.handshakes - (given_back is not None)
        if total + elsewhere >= self.max_connections:
            return "too many connections"
        if ip is not None and self.max_per_ip and (
            self._per_ip.get(ip, 0) - (given_back == ip) + elsewhere_at_ip >= self.max_per_ip
        ):
            return "too many connections from this address"
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

    def remove(self, conn_id: str) -> None:
        self.connections.pop(conn_id, None)
        self._sharing.pop(conn_id, None)
        ip = self._admitted.pop(conn_id, None)
        if ip is not None:
            self._forget_ip(ip)

    def _forget_ip(self, ip: str) -> None:
        per_ip = self._per_ip
        left = per_ip.get(ip, 0) - 1
        if left <= 0:
            per_ip.pop(ip, None)
        else:
            per_ip[ip] = left


class Pool(Protocol):
    """What the workers of ``workers: N`` count together (wsproxy.io.shared_counts):
    each worker publishes its own counts, and reads the others' under one lock."""

    def lock(self) -> None:
        """Until unlock(): no other worker reads or publishes."""

    def unlock(self) -> None: ...

    def others(self) -> int:
        """What the other workers count against max_connections."""
        ...

    def others_at(self, ip: str) -> int:
        """What the other workers count under the address *ip*."""
        ...

    def publish(self, held: int, addresses: Mapping[str, int]) -> None:
        """This worker now counts *held*, and *addresses* (each address's count,
        0: none any more) of those under them."""

    def publish_all(self, per_ip: Mapping[str, int]) -> None:
        """This worker's count by address is *per_ip*, no other (empty: tracks none)."""


class SharedRegistry(Registry[T]):
    """A worker's Registry (``workers: N``): the limits count every worker's
    connections, read from the *pool* and the check and the count in under its lock
    (two workers never both take the last slot); each change is published there.

    Addresses are published only while ``max_per_ip`` is on (a reload that turns it
    on publishes this worker's whole count by address, one that turns it off
    withdraws it: ``limits_changed()``)."""

    def __init__(self, *, max_connections: int, max_per_ip: int, pool: Pool) -> None:
        super().__init__(max_connections=max_connections, max_per_ip=max_per_ip)
        self.pool = pool
        self._publishing_addresses = False

    def _refusal(self, ip: str | None, given_back: str | None = None,
                 elsewhere: int = 0, elsewhere_at_ip: int = 0) -> str | None:
        pool = self.pool
        at_ip = pool.others_at(ip) if ip is not None and self.max_per_ip else 0
        return super()._refusal(ip, given_back, pool.others(), at_ip)

    def limits_changed(self) -> None:
        self.pool.lock()
        self._publish()

    def admit(self, conn_id: str, ip: str, in_place_of: str | None = None) -> str | None:
        self.pool.lock()
        try:
            return super().admit(conn_id, ip, in_place_of)
        finally:
            self._publish(ip)

    def handshake_started(self, ip: str | None) -> str | None:
        self.pool.lock()
        try:
            return super().handshake_started(ip)
        finally:
            self._publish(ip)

    def handshake_ended(self, ip: str | None) -> None:
        self.pool.lock()
        try:
            super().handshake_ended(ip)
        finally:
            self._publish(ip)

    def take_over(self, conn_id: str, taker_id: str) -> None:
        before = self._admitted.get(conn_id)
        self.pool.lock()
        try:
            super().take_over(conn_id, taker_id)
        finally:
            self._publish(before, self._admitted.get(conn_id))

    def remove(self, conn_id: str) -> None:
        ip = self._admitted.get(conn_id)
        self.pool.lock()
        try:
            super().remove(conn_id)
        finally:
            self._publish(ip)

    def _publish(self, *changed: str | None) -> None:
        """Publish this worker's counts (those of the *changed* addresses), and let
        the lock go."""
        pool, per_ip = self.pool, self._per_ip
        try:
            if bool(self.max_per_ip) != self._publishing_addresses:
                self._publishing_addresses = bool(self.max_per_ip)
                pool.publish_all(per_ip if self._publishing_addresses else {})
            addresses = ({ip: per_ip.get(ip, 0) for ip in changed if ip is not None}
                         if self._publishing_addresses else {})
            pool.publish(len(self._admitted) + self.handshakes, addresses)
        finally:
            pool.unlock()
