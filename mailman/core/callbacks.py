"""Where a status callback may go, decided without a lookup: no server-side request forgery.

``url_problem`` refuses a URL whose host is a loopback, private, link-local,
reserved or cloud metadata address, or names this machine (``localhost``).
``mailman.intake.resolve`` resolves a host name and applies the same
address rules to every address it finds.
"""

from __future__ import annotations

import functools
import ipaddress

from yarl import URL

#: The longest ``callback_url`` accepted.
MAX_URL = 2048
#: Cloud metadata services. Most are link-local or private already; Azure's
#: wire server (168.63.129.16) is a public address and must be named.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
    )
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_problem(address: IPAddress) -> str | None:
    """Why a callback must not go to ``address``; None for a public unicast address."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is not None:
            problem = address_problem(inner)
            if problem is not None:
                return problem
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "not a public unicast address"
    if address.is_private or not address.is_global:
        return "a private address"
    return None


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def names_this_machine(host: str) -> bool:
    """``localhost`` and its subdomains (RFC 6761), which always mean this machine."""
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


@functools.lru_cache(maxsize=64)
def binds_loopback(host: str) -> bool:
    """Whether a bind address (``MAILMAN_HOST``) is reachable from this machine only
    (``mailman.config.is_loopback``'s rule). Remembered: every accepted mail asks it of
    the same address (parsing it each time was about 2 us of an accept's CPU)."""
    literal = literal_address(host)
    return host.lower() == "localhost" if literal is None else literal.is_loopback


def url_problem(url: str, *, allow_http: bool, allow_private: bool) -> str | None:
    """Why ``url`` cannot be a callback URL, without a DNS lookup; None if it can.

    ``https`` (``http`` too with ``allow_http``), a host, no user or password,
    no whitespace or control characters, at most ``MAX_URL`` characters.
    Unless ``allow_private``: a host that is an IP address must be a public
    one, and ``localhost`` names are refused.
    """
    if len(url) > MAX_URL:
        return f"must be at most {MAX_URL} characters"
    if any(c <= " " or c == "\x7f" for c in url):
        return "must not contain spaces or control characters"
    try:
        parsed = URL(url)
        host, port = parsed.host, parsed.port
    except (ValueError, TypeError):
        return "is not a URL"
    schemes = ("https", "http") if allow_http else ("https",)
    if parsed.scheme not in schemes:
        if parsed.scheme == "http":
            return "must be an https URL (plain http only while the API runs open on loopback)"
        return "must be an https URL"
    if not host:
        return "must name a host"
    if parsed.user is not None or parsed.password is not None:
        return "must not hold a user or password"
    if port is None or not 0 < port < 65536:
        return "has a bad port"
    if allow_private:
        return None
    if names_this_machine(host):
        return "must not name this machine"
    literal = literal_address(host)
    if literal is not None:
        problem = address_problem(literal)
        if problem is not None:
            return f"must not be {problem}"
    return None
