"""Whether a connection comes straight from this machine: the rule behind the UI's local
operator (:mod:`ui.auth`) and behind the API without a token, which then answers only such
requests.

Straight from this machine means: a loopback peer, asked for by this machine's own name
(``Host`` ``localhost``, ``127.0.0.1`` or ``[::1]``: a page elsewhere that rebinds its name
to 127.0.0.1 reaches a loopback peer under its own ``Host``), from a page of this machine
when a browser says whose page it is (``Origin``, which browsers send on every WebSocket
handshake: a reverse proxy that passes on neither ``Host`` nor ``X-Forwarded-For`` still
passes on the browser's ``Origin``, its own public name), and with no proxy's forwarding
header.

What it stops is a *browser* through a proxy being taken for the operator. Every one of
these clues is a header that a scripted client can set as it likes: behind a proxy that
sets no forwarding header, a script can pass for a program on this machine. A deployment
behind a proxy therefore needs a token for the API and, for the UI, a login, a password or
``admin.local_operator = false`` (docs/security.md); Streamlit's and Starlette's own docs
warn that a peer's address proves nothing.
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


def classify(loopback_peer: bool, headers: Iterable[tuple[str, str]], browser: bool = False) -> Connection:
    """A served connection from whether its peer is a loopback address and its headers
    (the HTTP request's, or the handshake's of a WebSocket). No headers at all (a session
    whose browser went away) is not local; nor, for a ``browser`` connection (a WebSocket
    handshake, which browsers send with an Origin), is one without an Origin."""
    headers = {name.lower(): value for name, value in headers}
    origin = headers.get("origin")
    if origin is None:
        from_local_page = not browser
    else:
        from_local_page = _host_name(urlsplit(origin).netloc) in LOCAL_HOSTS
    local = loopback_peer and _host_name(headers.get("host", "")) in LOCAL_HOSTS and from_local_page
    return Connection(served=True, local=local, proxied=any(h in headers for h in PROXY_HEADERS))


def _host_name(host: str) -> str:
    """``host[:port]`` without the port, lower case (an IPv6 literal keeps its brackets)."""
    host = host.lower()
    return host.split("]")[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]
