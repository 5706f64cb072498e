"""Forward auth: an HTTP service decides, as nginx's auth_request and Traefik's
ForwardAuth do.

Per upgrade, a GET goes to ``auth.forward.url`` with the client's headers (less the
hop-by-hop ones, the Sec-WebSocket-* handshake and any client-sent X-Forwarded-*),
plus X-Forwarded-Method, -Uri (the request target), -Host, -For (the client's
address) and -Proto ("https" behind a TLS listener, else "http": what the backend is
told too; Authelia and oauth2-proxy build their redirect URLs from it). A token the
client offered as a subprotocol, which the service could not see otherwise, is sent
as ``Authorization: Bearer`` when the client sent no Authorization header of its own.

The answer decides:
    2xx         allowed. The subject is the answer's X-Auth-Subject, else Remote-User,
                X-Auth-Request-User or X-Forwarded-User (what Authelia, oauth2-proxy
                and others send), else "anonymous". ``copy_headers`` present in the
                answer go to the backend.
    401, 403    refused with that status (reasons ``unauthorized``, ``forbidden``) and
                the answer's WWW-Authenticate; a 401 without one gets ours.
    otherwise   503 ``auth_unavailable``: another status (a redirect to a login page
                means nothing to a WebSocket client), no connection, or no answer
                within ``timeout``. Never allowed on error.
"""

from __future__ import annotations

from typing import Final

import anyio

from wsproxy.auth import AuthFailed, Credentials, Identity
from wsproxy.auth.common import CHALLENGE, SUBJECT_HEADER, is_safe_text, unavailable
from wsproxy.auth.http import HttpError, HttpResponse, http_get
from wsproxy.config import ForwardAuthConfig
from wsproxy.core.handshake import Header, RequestHead
from wsproxy.log import get_logger

#: Not passed to the auth service: hop-by-hop (RFC 9110 §7.6.1), its own Host, and
#: what only the proxy may say about the client.
_NOT_SENT: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
        b"content-length", b"host", b"forwarded", b"x-real-ip",
    }
)
_SUBJECT_HEADERS: Final = (
    b"x-auth-subject", b"remote-user", b"x-auth-request-user", b"x-forwarded-user"
)
ANONYMOUS: Final = "anonymous"


class ForwardAuthenticator:
    """``auth.type: forward``: the auth service at ``config.url`` decides."""

    def __init__(self, config: ForwardAuthConfig, *, proto: str) -> None:
        self.config = config
        #: X-Forwarded-Proto: the listener's scheme, fixed for the process.
        self.proto = proto
        self.owned_headers: frozenset[str] = frozenset({SUBJECT_HEADER, *config.copy_headers})

    async def authenticate(
        self, request: RequestHead, credentials: Credentials, client_ip: str
    ) -> Identity:
        """Ask the auth service.

        Raises:
            AuthFailed: its 401 or 403; 503 for anything else, an error or a timeout.
        """
        try:
            with anyio.fail_after(self.config.timeout):
                answer = await http_get(
                    self.config.url, self.request_headers(request, credentials, client_ip),
                    read_body=False,
                )
        except TimeoutError as exc:
            raise self._unavailable(f"no answer within {self.config.timeout:g}s") from exc
        except HttpError as exc:
            raise self._unavailable(str(exc)) from exc
        if 200 <= answer.status < 300:
            return self._identity(answer)
        if answer.status in (401, 403):
            raise _refused(answer)
        raise self._unavailable(f"answered {answer.status}")

    def reload(self) -> None:
        """Nothing to re-read: the service is asked on every upgrade."""

    def request_headers(
        self, request: RequestHead, credentials: Credentials, client_ip: str
    ) -> list[Header]:
        """The headers of the GET to the auth service (Host and Connection aside)."""
        listed = set(request.header_list(b"connection"))
        headers = [
            (name, value) for name, value in request.headers
            if name not in _NOT_SENT and name not in listed
            and not name.startswith((b"sec-websocket-", b"x-forwarded-"))
        ]
        if (
            credentials.source == "subprotocol" and credentials.token is not None
            and request.header(b"authorization") is None
        ):
            headers.append((b"authorization", b"Bearer " + credentials.token.encode("latin-1")))
        headers += [
            (b"x-forwarded-method", b"GET"),
            (b"x-forwarded-uri", request.target),
            (b"x-forwarded-host", request.host),
            (b"x-forwarded-for", client_ip.encode("latin-1")),
            (b"x-forwarded-proto", self.proto.encode("latin-1")),
        ]
        return headers

    def _identity(self, answer: HttpResponse) -> Identity:
        subject = ANONYMOUS
        for name in _SUBJECT_HEADERS:
            value = answer.header(name)
            text = _text(value.strip()) if value is not None else ""
            if text and is_safe_text(text):
                subject = text
                break
        headers = tuple(
            (name, value.decode("latin-1"))
            for name in self.config.copy_headers
            if (value := answer.header(name.lower().encode("latin-1"))) is not None
        )
        return Identity(subject=subject, headers=headers)

    def _unavailable(self, error: str) -> AuthFailed:
        get_logger().warning("auth.forward_failed", url=self.config.url, error=error)
        return unavailable("the auth service is unavailable")


def _refused(answer: HttpResponse) -> AuthFailed:
    challenges = tuple(
        ("WWW-Authenticate", value.decode("latin-1"))
        for name, value in answer.headers if name == b"www-authenticate"
    )
    if answer.status == 401:
        return AuthFailed(
            401, "unauthorized", "refused by the auth service", challenges or (CHALLENGE,)
        )
    return AuthFailed(403, "forbidden", "refused by the auth service", challenges)


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")
