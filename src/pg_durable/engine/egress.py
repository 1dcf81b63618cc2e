"""Where an HTTP step may go: its URL as the client sends it, and the addresses it may reach.

The checks that come before the network — policy, privilege, scheme, bare IP literals, the
allow-list — are the database's (12_http.sql's ``df._http_request_error``, engine/http.py asks
it); it is given the host :func:`parse_url` found, so that the host checked is the host the
client resolves, connects to and verifies the certificate of. :func:`is_restricted` is the
DNS-time rule (SPEC §3.3, step 4), which the client applies to the addresses it resolved.

Under every policy but allow-all a step may only reach public addresses: of the addresses a
host name resolves to, those in private, loopback, link-local (cloud metadata at
169.254.169.254), shared (CGNAT), unspecified, multicast or reserved ranges are dropped. IPv6
forms that carry an IPv4 address — mapped (``::ffff:10.0.0.1``), NAT64, 6to4 — are judged by
the IPv4 address they carry, and Teredo, which tunnels to any of them, is refused.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from pg_durable.errors import StepError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_HOST = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?", re.ASCII)

_V4: Final = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # shared address space (CGNAT); Alibaba's metadata service
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local: the metadata services of AWS, GCP, Azure
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
    )
)
_V6: Final = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback, IPv4-compatible
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed by some)
        "fc00::/7",  # unique local (AWS metadata: fd00:ec2::254)
        "ff00::/8",  # multicast
        "2001::/32",  # Teredo
        "100::/64",  # discard-only
        "64:ff9b:1::/48",  # NAT64 for local use
    )
)
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_LOOPBACK: Final = (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128"))


def parse(address: str) -> IPAddress | None:
    """The address ``address`` names, or None if it is not one (an IPv6 zone is ignored)."""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None


def is_restricted(address: str) -> bool:
    """Whether an HTTP step must not connect to ``address``. Anything that does not parse as
    an address is restricted."""
    ip = parse(address)
    if ip is None:
        return True
    v4 = _carried_v4(ip) if isinstance(ip, ipaddress.IPv6Address) else ip
    if v4 is not None:
        return any(v4 in net for net in _V4)
    return any(ip in net for net in _V6)


def is_loopback(address: str) -> bool:
    """Whether ``address`` is a loopback address (also IPv4-mapped)."""
    ip = parse(address)
    if ip is None:
        return False
    v4 = _carried_v4(ip) if isinstance(ip, ipaddress.IPv6Address) else ip
    if v4 is not None:
        return v4 in _LOOPBACK[0]
    return ip in _LOOPBACK[1]


def _carried_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: mapped, NAT64 or 6to4; else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True, slots=True)
class Url:
    """A URL as the client sends it."""

    #: As substituted: the text error messages quote.
    text: str
    scheme: str
    #: Lower-cased, IDNA-encoded, without brackets: what is checked, resolved and verified.
    host: str
    port: int
    #: Path and query, percent-encoded where they must be.
    target: str
    #: ``user:password`` before the host, if any (sent as basic authentication).
    userinfo: str | None = None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _normal_host(host: str) -> str:
    """Lower-cased, and IDNA-encoded as it is resolved (bücher.example → xn--bcher-kva…)."""
    host = host.lower()
    if not host.isascii():
        with contextlib.suppress(UnicodeError):
            host = host.encode("idna").decode("ascii")
    return host


def parse_url(text: str) -> Url:
    """``text`` as the client sends it; its host as SPEC §3.3 finds it (the authority up to
    the first ``/``, ``?`` or ``#``, after its last ``@``, without port or IPv6 brackets,
    lower-cased), restricted to what a host name can be.

    Raises:
        StepError: it is not a URL the client can send a request to.
    """
    scheme, separator, rest = text.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in ("http", "https"):
        raise _invalid(text, "it must start with http:// or https://")
    cut = re.search(r"[/?#]", rest)
    authority, tail = (rest, "") if cut is None else (rest[: cut.start()], rest[cut.start() :])
    userinfo, _, hostport = authority.rpartition("@")
    port_text = ""
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise _invalid(text, "unbalanced brackets around its IPv6 address")
        port_text = after[1:]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise _invalid(text, f"'{host}' is not an IPv6 address") from None
    else:
        host, _, port_text = hostport.partition(":")
        host = _normal_host(host)
        if not _HOST.fullmatch(host):
            raise _invalid(text, f"'{host}' is not a host name")
    default = 443 if scheme == "https" else 80
    if port_text and not (port_text.isascii() and port_text.isdigit()):
        raise _invalid(text, f"'{port_text}' is not a port")
    port = int(port_text) if port_text else default
    if not 0 < port < 65536:
        raise _invalid(text, f"{port} is not a port")
    target = tail.split("#", 1)[0]
    if not target.startswith("/"):
        target = "/" + target
    # As browsers send what users type: spaces, line breaks and other characters that
    # cannot appear in a request line are percent-encoded, escapes already there are kept.
    target = quote(target, safe="/:@!$&'()*+,;=?%~[]")
    return Url(text, scheme, host, port, target, userinfo or None)


def _invalid(url: str, why: str) -> StepError:
    return StepError(f"HTTP connection failed: invalid URL '{url}': {why}")
