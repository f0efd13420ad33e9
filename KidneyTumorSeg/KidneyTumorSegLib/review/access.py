"""Who may open the review page: anyone on this machine when it listens on loopback; with any
other ``--host``, only a browser that brings the random token printed at start-up (in the URL,
after which a cookie carries it)."""
from __future__ import annotations

import errno
import ipaddress
import secrets
import socket
from dataclasses import dataclass

TOKEN_PARAMETER = "token"
TOKEN_COOKIE = "kidneytumorseg_review_token"


@dataclass(frozen=True)
class Access:
    """Where the page listens, and the token it asks for (None on loopback)."""

    host: str
    port: int
    token: str | None

    def url(self, host_shown: str | None = None) -> str:
        """The address to open (with the token when one is needed)."""
        host = host_shown or self.host
        if ":" in host:
            host = f"[{host}]"
        query = f"?{TOKEN_PARAMETER}={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/index.html{query}"

    def allows(self, query_token: str | None, cookie_token: str | None) -> bool:
        """Whether a request carrying these tokens (either may be None) may be served."""
        if self.token is None:
            return True
        return any(given is not None and secrets.compare_digest(given.encode(), self.token.encode())
                   for given in (query_token, cookie_token))


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plan_access(host: str, port: int) -> Access:
    """The page's :class:`Access`: a fresh token when ``host`` is not loopback. Refuses a port
    outside 1-65535 or one already taken on ``host``, with a one-line error."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port}: must be between 1 and 65535")
    check_port_free(host, port)
    return Access(host, port, None if is_loopback(host) else secrets.token_urlsafe(24))


def check_port_free(host: str, port: int) -> None:
    """Raise a one-line error when ``port`` on ``host`` cannot be listened on (taken, or a host
    this machine does not have)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ValueError(f"--host {host}: unknown host ({error.strerror})") from error
    family, kind, protocol, _, address = infos[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closed socket's wait is no obstacle
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise OSError(f"port {port} on {host} is taken by another program: choose another with --port") from error
            raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from error
