"""Whether a connection comes straight from this machine: the rule behind the UI's local
operator (:mod:`ui.auth`) and behind the API without a token, which then answers only such
requests.

Straight from this machine means: a loopback peer, asked for by this machine's own name
(``Host`` ``localhost``, ``127.0.0.1`` or ``[::1]``: a page elsewhere that rebinds its name
to 127.0.0.1 reaches a loopback peer under its own ``Host``), from a page of this machine
when a browser says whose page it is (``Origin``: a reverse proxy that passes on neither
``Host`` nor ``X-Forwarded-For`` still passes on the browser's ``Origin``, its own public
name), and with no proxy's forwarding header. Streamlit's and Starlette's own docs warn
that a peer's address is no proof of anything: this rule only keeps a visitor through a
proxy from being taken for the operator; a host whose other users should not be admins, or
a proxy that strips every one of these clues, needs a login, a password or a token.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
#: What a program on this machine calls it (the Host header, without the port).
LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]"}


@dataclass(frozen=True)
class Connection:
    """Where a request or a browser session comes from."""

    #: Through a server (False: a Streamlit session run in-process, with no connection).
    served: bool
    #: A loopback peer that asked for this machine by name, from one of its pages.
    local: bool = False
    #: A proxy forwarded it on someone's behalf.
    proxied: bool = False

    @property
    def direct_local(self) -> bool:
        return not self.served or (self.local and not self.proxied)


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def classify(loopback_peer: bool, headers: Iterable[tuple[str, str]]) -> Connection:
    """A served connection from whether its peer is a loopback address and its headers
    (the HTTP request's, or the handshake's of a WebSocket). No headers at all (a session
    whose browser went away) is not local."""
    headers = {name.lower(): value for name, value in headers}
    origin = headers.get("origin")
    from_local_page = origin is None or _host_name(urlsplit(origin).netloc) in LOCAL_HOSTS
    local = loopback_peer and _host_name(headers.get("host", "")) in LOCAL_HOSTS and from_local_page
    return Connection(served=True, local=local, proxied=any(h in headers for h in PROXY_HEADERS))


def _host_name(host: str) -> str:
    """``host[:port]`` without the port, lower case (an IPv6 literal keeps its brackets)."""
    host = host.lower()
    return host.split("]")[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]
