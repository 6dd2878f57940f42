"""SSRF-safe URL intake, in process: every refusal, and a fetch that is allowed."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import pytest

from iraas.refusals import InputError
from iraas.urls import UrlPolicy, fetch_url, refused_reason

from .conftest import IMAGENET
from .imageserver import image_server

TENCH = IMAGENET / "images" / "n01440764_tench.JPEG"


@pytest.mark.parametrize(
    ("addr", "refused"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fd00:ec2::254", True),
        ("ff02::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("240.0.0.1", True),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("::ffff:8.8.8.8", False),
        ("::127.0.0.1", True),  # IPv4-compatible
        ("::ffff:0:7f00:1", True),  # SIIT-translated
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of the metadata address
        ("64:ff9b::808:808", False),  # NAT64 of a public address
        ("64:ff9b:1::808:808", True),  # local-use NAT64: a private network's, whatever it carries
        ("2002:a9fe:a9fe::1", True),  # 6to4
        ("2002:808:808::1", False),
        ("fec0::1", True),  # site-local
    ],
)
def test_address_classes(addr: str, refused: bool) -> None:
    assert (refused_reason(ipaddress.ip_address(addr)) is not None) == refused


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with image_server(IMAGENET / "images") as p:
        yield p


def _fetch(url: str, allow: tuple[str, ...] = (), resolver: object = None) -> bytes:
    policy = UrlPolicy(allow=allow, timeout_s=5, max_bytes=500_000)
    kwargs = {"resolver": resolver} if resolver else {}
    return asyncio.run(fetch_url(url, policy, **kwargs))  # type: ignore[arg-type]


def _refused(url: str, code: str = "refused_address", **kw: object) -> InputError:
    with pytest.raises(InputError) as info:
        _fetch(url, **kw)  # type: ignore[arg-type]
    assert info.value.code == code, info.value.reason
    return info.value


def test_allowed_host_is_fetched(port: int) -> None:
    assert _fetch(f"http://localhost:{port}/{TENCH.name}", allow=("localhost",)) == TENCH.read_bytes()


def test_loopback_metadata_and_mapped_addresses_are_refused(port: int) -> None:
    assert _refused(f"http://127.0.0.1:{port}/{TENCH.name}").status == 403
    _refused("http://169.254.169.254/latest/meta-data/")
    _refused(f"http://[::ffff:127.0.0.1]:{port}/{TENCH.name}")
    _refused(f"http://localhost:{port}/{TENCH.name}")  # a name is checked by what it resolves to


def test_resolver_answering_a_private_address_is_refused() -> None:
    err = _refused("http://images.example.com/cat.jpg", resolver=lambda host, port: ["10.0.0.7"])
    assert "10.0.0.7" in err.reason
    # one private answer among public ones is enough to refuse (DNS rebinding)
    _refused("http://images.example.com/cat.jpg", resolver=lambda host, port: ["8.8.8.8", "192.168.0.2"])


def test_redirect_to_loopback_is_refused(port: int) -> None:
    target = f"http://127.0.0.1:{port}/{TENCH.name}"
    _refused(f"http://localhost:{port}/redirect?to={target}", allow=("localhost",))


def test_connection_goes_to_the_checked_address(port: int) -> None:
    calls: list[str] = []

    def resolver(host: str, p: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    data = _fetch(f"http://images.test:{port}/{TENCH.name}", allow=("images.test",), resolver=resolver)
    assert data == TENCH.read_bytes() and calls == ["images.test"]  # resolved once, not again by the client


def test_bad_urls_and_limits(port: int) -> None:
    _refused("ftp://example.com/x.jpg", "bad_url")
    _refused("http:///x.jpg", "bad_url")
    _refused("http://localhost:1/x.jpg", "unreachable_url", allow=("localhost",))
    _refused(f"http://localhost:{port}/missing.jpg", "unreachable_url", allow=("localhost",))
    big = max(IMAGENET.joinpath("images").iterdir(), key=lambda f: f.stat().st_size)
    assert big.stat().st_size > 500_000
    _refused(f"http://localhost:{port}/{big.name}", "too_large", allow=("localhost",))
    hops = f"http://localhost:{port}/{TENCH.name}"
    for _ in range(4):
        hops = f"http://localhost:{port}/redirect?to={hops}"
    _refused(hops, "too_many_redirects", allow=("localhost",))
