"""DNS discovery (``discovery.dns``): the backends are the addresses a name resolves to.

``run_discovery()`` resolves the name every ``interval`` and hands the whole set to
``set_discovered()`` (control.backends.Backends), which drains the addresses that vanished and adds
the new ones (after their first passing health check, when checks are on). Each
address is one backend, ``{scheme}://{address}:{port}``, named after its address:
``10.0.0.1:8000``, ``[fd00::1]:8000``.

What is asked. A and AAAA, concurrently. A name whose first label starts with ``_``
(``_ws._tcp.app.default.svc.cluster.local``, the form Kubernetes publishes for named
ports) is an SRV name instead: each target of its SRV records is resolved (A and AAAA,
from the answer's additional section when the server sent it there) and its addresses
are backends at the record's port, which overrides ``discovery.dns.port``. Priorities
and weights are ignored: every target is in rotation and the balancer spreads the load
(Kubernetes gives all the pods of a Service the same priority and weight).

When an answer is not believed. A failed round (timeout, SERVFAIL, refused, no resolver
configuration) or an empty one (NXDOMAIN, or no address at all) keeps the last known
set: a DNS hiccup must not drain every client. Such a round is logged
(``discovery.failed``, a warning) and counted in ``DiscoveryStatus.failures``. A round
where one of several queries fails is a failed round as a whole, so that an AAAA
timeout cannot drop every IPv4 backend; a query answered with no records of its type
(NOERROR, NODATA) is a normal answer: an IPv4-only Service has no AAAA records.

The resolver is dnspython's, so that it can be pointed at any server and port
(``resolver: "host:port"``, the name then taken as absolute) or read
``/etc/resolv.conf`` like the system's (its search list and ``ndots`` applied to a
relative name, as getaddrinfo does in a pod). Each query is bounded by
``min(interval, 2s)``, with one UDP retry inside that bound; EDNS announces 1232-byte
UDP answers, and a truncated answer is asked again over TCP.

TLS. A ``wss`` backend found this way is dialled at its address but verified against
the DNS name (SNI and certificate): ``set_discovered`` gets the configured name
(for an SRV name, without its ``_service._proto`` labels), unless
``backend_tls.server_name`` overrides it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Protocol, TypeVar

import anyio
import dns.asyncresolver
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver
from dns.rdtypes.IN.SRV import SRV

from wsproxy.config import BackendConfig, DNSDiscoveryConfig
from wsproxy.log import get_logger

log = get_logger()


class DiscoveryHost(Protocol):
    """What discovery asks of the process (the wiring, ProxyContext)."""

    def set_discovered(self, backends: list[BackendConfig], server_name: str | None) -> None:
        """The whole set of discovered backends now."""

#: Upper bound on one query (a resolver on the node answers in milliseconds).
QUERY_TIMEOUT: Final = 2.0
#: The EDNS UDP payload size of DNS Flag Day 2020: no IP fragmentation.
EDNS_PAYLOAD: Final = 1232
_ADDRESS_TYPES: Final = (dns.rdatatype.A, dns.rdatatype.AAAA)

T = TypeVar("T")


class EmptyAnswer(Exception):
    """The name resolved to no address at all."""


class QueryTimeout(Exception):
    """A query got no answer within its bound."""


@dataclass(slots=True, eq=False)
class DiscoveryStatus:
    """What one ``run_discovery`` knows; the metrics and the admin API read it."""

    #: Rounds whose answer failed or was empty (``wsproxy_discovery_failures_total``).
    failures: int = 0
    #: Rounds done, failed or not.
    rounds: int = 0
    #: Why the last failed round failed; None once a round succeeds again.
    last_error: str | None = None
    #: The backend names of the last good answer, sorted.
    backends: tuple[str, ...] = ()
    #: Set at the end of each round, then replaced (tests wait on it).
    round_done: anyio.Event = field(default_factory=anyio.Event)

    def finish_round(self) -> None:
        self.rounds += 1
        done, self.round_done = self.round_done, anyio.Event()
        done.set()


# The pure parts ------------------------------------------------------------------------


def backend_name(address: str, port: int) -> str:
    """``10.0.0.1:8000``, ``[fd00::1]:8000``: the address in its canonical form."""
    ip = ipaddress.ip_address(address)
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip.compressed}:{port}"


def discovered_backend(address: str, port: int, scheme: str) -> BackendConfig:
    """The backend at *address*: ``{scheme}://{address}:{port}``, named after it."""
    name = backend_name(address, port)
    return BackendConfig.from_url(name=name, url=f"{scheme}://{name}")


def service_name(name: str) -> str:
    """The name a certificate carries: no trailing dot, no ``_service._proto.`` labels."""
    labels = name.rstrip(".").split(".")
    while len(labels) > 1 and labels[0].startswith("_"):
        labels.pop(0)
    return ".".join(labels)


def is_srv_name(name: str) -> bool:
    return name.startswith("_")


def parse_resolver(text: str) -> tuple[str, int]:
    """``"10.0.0.10"``, ``"10.0.0.10:5353"``, ``"[fd00::a]:53"``, ``"fd00::a"``: (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, 53


def changes(old: Iterable[str], new: Iterable[str]) -> tuple[list[str], list[str]]:
    """(added, removed) backend names, each sorted."""
    before, after = set(old), set(new)
    return sorted(after - before), sorted(before - after)


# Resolving ----------------------------------------------------------------------------


def make_resolver(resolver: str | None, timeout: float) -> dns.asyncresolver.Resolver:
    """dnspython's resolver at *resolver* ("host:port"), else the system's configuration.

    Raises:
        dns.resolver.NoResolverConfiguration: no /etc/resolv.conf (or no nameserver in it).
    """
    if resolver is None:
        res = dns.asyncresolver.Resolver()
    else:
        host, port = parse_resolver(resolver)
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = [host]
        res.port = port
    res.use_edns(0, 0, EDNS_PAYLOAD)
    res.lifetime = timeout
    res.timeout = timeout / 2  # one retry of a lost UDP datagram within the bound
    res.cache = None
    return res


async def resolve_backends(
    resolver: dns.asyncresolver.Resolver, dns_cfg: DNSDiscoveryConfig, *, search: bool
) -> list[BackendConfig]:
    """Every backend *dns_cfg*'s name resolves to now, sorted by name, no duplicates.

    Raises:
        dns.exception.DNSException (or OSError): a query failed; EmptyAnswer: no address.
    """
    if is_srv_name(dns_cfg.name):
        endpoints = await _srv_endpoints(resolver, dns_cfg.name, search=search)
    else:
        addresses = await _addresses(resolver, dns_cfg.name, search=search)
        endpoints = [(address, dns_cfg.port) for address in addresses]
    if not endpoints:
        raise EmptyAnswer(f"no address for {dns_cfg.name}")
    unique = {}
    for address, port in endpoints:
        backend = discovered_backend(address, port, dns_cfg.scheme)
        unique[backend.name] = backend
    return [unique[name] for name in sorted(unique)]


async def _addresses(
    resolver: dns.asyncresolver.Resolver, name: str, *, search: bool
) -> list[str]:
    """The A and AAAA addresses of *name* (asked concurrently); NXDOMAIN gives none."""
    answers = await _all([
        partial(_records, resolver, name, rdtype, search=search) for rdtype in _ADDRESS_TYPES
    ])
    return [rdata.to_text() for answer in answers for rdata in answer]


async def _records(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType,
    *, search: bool,
) -> list[dns.rdata.Rdata]:
    answer = await _resolve(resolver, name, rdtype, search=search)
    return list(answer.rrset or ()) if answer is not None else []


async def _resolve(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType,
    *, search: bool,
) -> dns.resolver.Answer | None:
    """The answer (maybe without records), None for NXDOMAIN; at most ``lifetime`` long.

    dnspython checks its lifetime between attempts, so a backoff can overrun it a
    little: the deadline here is exact.
    """
    try:
        with anyio.fail_after(resolver.lifetime):
            return await resolver.resolve(name, rdtype, raise_on_no_answer=False, search=search)
    except dns.resolver.NXDOMAIN:
        return None
    except TimeoutError:
        kind = dns.rdatatype.to_text(rdtype)
        raise QueryTimeout(f"no answer for {name} {kind} within {resolver.lifetime:g}s") from None


async def _srv_endpoints(
    resolver: dns.asyncresolver.Resolver, name: str, *, search: bool
) -> list[tuple[str, int]]:
    """(address, port) of every target of *name*'s SRV records."""
    answer = await _resolve(resolver, name, dns.rdatatype.SRV, search=search)
    if answer is None:
        return []
    records = [r for r in answer.rrset or () if isinstance(r, SRV)]
    # RFC 2782: a target of "." means the service is decidedly not available there.
    targets = [(r.target, int(r.port)) for r in records if r.target != dns.name.root]
    glue: dict[dns.name.Name, list[str]] = {}
    for rrset in answer.response.additional:
        if rrset.rdtype in _ADDRESS_TYPES:
            glue.setdefault(rrset.name, []).extend(rdata.to_text() for rdata in rrset)
    missing = sorted({target for target, _ in targets if target not in glue})
    looked_up = await _all([
        partial(_addresses, resolver, target.to_text(), search=False) for target in missing
    ])
    glue.update(zip(missing, looked_up, strict=True))
    return [(address, port) for target, port in targets for address in glue[target]]


async def _all(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run *calls* concurrently; their results in order, or the first one's error."""
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    async def one(i: int) -> None:
        try:
            results[i] = await calls[i]()
        except Exception as exc:  # reported below, not as an ExceptionGroup
            errors[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
    for error in errors:
        if error is not None:
            raise error
    return [r for r in results if r is not None]


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


# The loop -----------------------------------------------------------------------------


async def run_discovery(
    ctx: DiscoveryHost, dns_cfg: DNSDiscoveryConfig, status: DiscoveryStatus | None = None
) -> None:
    """Forever: resolve ``dns_cfg.name`` every ``interval``; the answer becomes the set.

    *status* keeps the count of failed rounds (``status.failures``) where the metrics
    can read it; without one, a private one is used.
    """
    status = DiscoveryStatus() if status is None else status
    timeout = min(dns_cfg.interval, QUERY_TIMEOUT)
    server_name = service_name(dns_cfg.name)
    while True:
        started = anyio.current_time()
        await discover_once(ctx, dns_cfg, status, query_timeout=timeout, server_name=server_name)
        await anyio.sleep_until(started + dns_cfg.interval)


async def discover_once(
    ctx: DiscoveryHost,
    dns_cfg: DNSDiscoveryConfig,
    status: DiscoveryStatus,
    *,
    query_timeout: float,
    server_name: str,
) -> None:
    """One round: resolve, then hand the set over, or keep the last one and count."""
    try:
        resolver = make_resolver(dns_cfg.resolver, query_timeout)
        # The system's resolver applies its search list, as getaddrinfo would.
        backends = await resolve_backends(resolver, dns_cfg, search=dns_cfg.resolver is None)
    except Exception as exc:  # whatever it was, the last known set stays
        status.failures += 1
        status.last_error = _describe(exc)
        log.warning("discovery.failed", name=dns_cfg.name, error=status.last_error,
                    kept=list(status.backends), failures=status.failures)
    else:
        names = tuple(b.name for b in backends)
        if status.last_error is not None:
            log.info("discovery.recovered", name=dns_cfg.name, backends=list(names))
        status.last_error = None
        if names != status.backends:
            added, removed = changes(status.backends, names)
            log.info("discovery.changed", name=dns_cfg.name, added=added, removed=removed,
                     backends=list(names))
            status.backends = names
        ctx.set_discovered(backends, server_name=server_name)
    finally:
        status.finish_round()
