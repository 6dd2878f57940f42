from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("IRAAS_DATASETS", ROOT.parent / "shared" / "datasets"))
IMAGENET = DATASETS / "imagenet-sample"


@pytest.fixture(scope="session")
def imagenet_rows() -> list[dict[str, str]]:
    with open(IMAGENET / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def classifier():  # type: ignore[no-untyped-def]
    from iraas.model.builtin import resolve_model
    from iraas.model.classifier import Classifier

    return Classifier(resolve_model(None))


@pytest.fixture(scope="session")
def moto_url() -> str:
    """moto's server on 127.0.0.1, one per test session (reset per test by the users)."""
    import socket

    from moto.server import ThreadedMotoServer

    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ[var] = value
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def moto(moto_url: str) -> str:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).read()
    return moto_url


@pytest.fixture(scope="session")
def pg_server():  # type: ignore[no-untyped-def]
    """A real PostgreSQL server for the session (tests/pgserver.py): missing, it fails loudly."""
    from .pgserver import PgServer

    server = PgServer().start()
    yield server
    server.remove()


@pytest.fixture
def pg_url(pg_server) -> str:  # type: ignore[no-untyped-def]
    """A new empty database on it, per test: its URL (with the service user's password)."""
    import uuid

    return str(pg_server.database("t_" + uuid.uuid4().hex[:16]))
