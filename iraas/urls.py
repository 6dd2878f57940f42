"""URL intake that cannot be turned against the service's own network (SSRF).

http/https only; the host is resolved once, every address checked (loopback, private,
link-local, site-local, CGNAT, multicast, unspecified, reserved and cloud-metadata are refused,
for IPv4 and IPv6; an IPv6 address that carries an IPv4 one — mapped, compatible, NAT64, 6to4,
Teredo — is judged by that IPv4 address), and the connection goes to the address that was
checked — the URL's host travels only in the Host header and TLS SNI, so a second lookup cannot
swap the address. Each redirect is checked the same way, at most 3; one deadline covers the
whole fetch, redirects included, and a byte cap applies while streaming. An operator allow-list
can permit chosen hosts or networks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from .refusals import InputError

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_REDIRECTS = 3
_EXTRA_BLOCKED = [
    ipaddress.ip_network(n)
    # CGNAT, the metadata service (IPv4, IPv6), site-local, local-use NAT64 (a private network's)
    for n in ("100.64.0.0/10", "169.254.169.254/32", "fd00:ec2::254/128", "fec0::/10", "64:ff9b:1::/48")
]
# prefixes whose last 32 bits are the IPv4 address reached: well-known NAT64, SIIT-translated.
# (Local-use NAT64, 64:ff9b:1::/48, is refused whole above, whatever IPv4 address it carries.)
_NAT64 = [ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::ffff:0:0:0/96")]
_COMPATIBLE = ipaddress.ip_network("::/96")


def display_name(url: str) -> str:
    """A URL as kept in results and shown back: no userinfo, query or fragment (they carry
    passwords and tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return url.split("?")[0].split("#")[0][:200]
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}{parts.path}"[:500]


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (and reaches, through a translator), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address (obfuscated in the address, decoded here)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64) or (ip in _COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class UrlPolicy:
    allow: tuple[str, ...] = ()  # host names, addresses or CIDR networks
    timeout_s: float = 10.0
    max_bytes: int = 20 * 1024 * 1024

    def allowed(self, host: str, ip: IPAddress) -> bool:
        for entry in self.allow:
            if entry.lower() == host.lower():
                return True
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        return False


def refused_reason(ip: IPAddress) -> str | None:
    """Why an address must not be fetched from, or None if it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address) and (inner := embedded_ipv4(ip)) is not None:
        return refused_reason(inner)
    for label, hit in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
    ):
        if hit:
            return label
    if any(ip in net for net in _EXTRA_BLOCKED if net.version == ip.version):
        return "shared/metadata"
    if not ip.is_global:
        return "reserved"
    return None


# What `target` accepts, as a pattern for the OpenAPI document (a subset: ASCII host names and
# IPv4 addresses; an IDN host is sent as punycode): http(s), a host of 1-63 character labels, a
# port up to 65535, no spaces or control characters. (A name over 253 characters is well formed
# but no name server has it: 422 unreachable_url, as for any name that does not resolve.)
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = "(?::(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
URL_PATTERN = rf"^https?://(?:{_LABEL}\.)*{_LABEL}{_PORT}(?:[/?#][^\u0000-\u0020\u007f]*)?$"


def target(url: str) -> tuple[str, str, int, str]:
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InputError(400, "bad_url", "a URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InputError(400, "bad_url", f"not a URL: {url[:200]!r}") from None
    if parts.scheme not in ("http", "https"):
        raise InputError(400, "bad_url", f"only http and https URLs are accepted: {url[:200]}")
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InputError(400, "bad_url", f"bad port in URL: {url[:200]}") from None
    if not host:
        raise InputError(400, "bad_url", f"URL has no host: {url[:200]}")
    try:
        host.encode("idna") if not host.isascii() else None
    except UnicodeError:
        raise InputError(400, "bad_url", f"bad host name in URL: {url[:200]}") from None
    if any(len(label) > 63 for label in host.split(".")):
        raise InputError(400, "bad_url", f"bad host name in URL: {url[:200]}")
    if len(host) > 253:
        raise InputError(422, "unreachable_url", f"a host name is at most 253 characters: {host[:60]}… cannot resolve")
    path = parts.path or "/"
    return parts.scheme, host, port, path + (f"?{parts.query}" if parts.query else "")


async def checked_address(host: str, port: int, policy: UrlPolicy, resolver: Resolver) -> IPAddress:
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addrs: list[IPAddress] = [literal]
    else:
        try:
            found = await asyncio.to_thread(resolver, host, port)
        except OSError:
            raise InputError(422, "unreachable_url", f"cannot resolve host {host}") from None
        addrs = [ipaddress.ip_address(a.split("%")[0]) for a in found]
        if not addrs:
            raise InputError(422, "unreachable_url", f"cannot resolve host {host}")
    for ip in addrs:  # every answer: a mixed public/private answer is a rebinding attempt
        reason = refused_reason(ip)
        if reason and not policy.allowed(host, ip):
            raise InputError(403, "refused_address", f"{host} resolves to a {reason} address ({ip}), refused")
    return addrs[0]


async def pinned(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    policy: UrlPolicy,
    resolver: Resolver,
    headers: dict[str, str],
    content: bytes | None = None,
) -> httpx.Request:
    """A request for `url` addressed to the IP address that was checked (the host name only in
    the Host header and TLS SNI): InputError if the policy refuses it."""
    scheme, host, port, path = target(url)
    ip = await checked_address(host, port, policy, resolver)
    ip_host = f"[{ip}]" if ip.version == 6 else str(ip)
    default = port == (443 if scheme == "https" else 80)
    headers = {"Host": host if default else f"{host}:{port}", **headers}
    try:
        return client.build_request(
            method,
            f"{scheme}://{ip_host}:{port}{path}",
            headers=headers,
            content=content,
            extensions={"sni_hostname": host},
        )
    except httpx.InvalidURL:
        raise InputError(400, "bad_url", f"not a URL: {url[:200]!r}") from None


async def fetch_url(url: str, policy: UrlPolicy, resolver: Resolver = system_resolver) -> bytes:
    """The body of `url`, fetched safely within `policy.timeout_s` in all (a server sending one
    byte every few seconds cannot hold the request); InputError on any refusal or failure."""
    try:
        return await asyncio.wait_for(_fetch(url, policy, resolver), policy.timeout_s)
    except TimeoutError:
        raise InputError(422, "unreachable_url", f"{url[:200]} took over {policy.timeout_s:g} s") from None


async def _fetch(url: str, policy: UrlPolicy, resolver: Resolver) -> bytes:
    async with httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            request = await pinned(client, "GET", url, policy, resolver, {"User-Agent": "iraas-fetch/1"})
            try:
                response = await client.send(request, stream=True)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise InputError(422, "unreachable_url", f"cannot fetch {url[:200]}: {exc!r}"[:300]) from None
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise InputError(422, "unreachable_url", f"{url[:200]} answered HTTP {response.status_code}")
                return await _read_capped(response, policy.max_bytes, url)
            finally:
                await response.aclose()
    raise InputError(422, "too_many_redirects", f"more than {MAX_REDIRECTS} redirects from {url[:200]}")


async def _read_capped(response: httpx.Response, cap: int, url: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise InputError(413, "too_large", f"{url[:200]} is over the {cap} byte limit")
    data = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > cap:
                raise InputError(413, "too_large", f"{url[:200]} is over the {cap} byte limit")
    except httpx.HTTPError as exc:
        raise InputError(422, "unreachable_url", f"cannot fetch {url[:200]}: {exc!r}"[:300]) from None
    return bytes(data)
