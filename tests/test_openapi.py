"""The OpenAPI document tells the truth: it validates as OpenAPI 3.1; schemathesis, with all its
checks, finds nothing against a real service (key-free, and with keys required and an admin
key); a client generated from it by openapi-python-client uploads an image, reads its result and
gets a typed error for a refused upload; `iraas.client` and the webhook agree with it."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from iraas.client import api as client_api
from iraas.config import Settings
from iraas.lifecycle.callbacks import webhook_payload
from iraas.messages import Result
from iraas.model.classifier import Classifier
from iraas.parts import build, make_app

from .conftest import IMAGENET
from .service import Service, create_key

PHOTO = sorted((IMAGENET / "images").iterdir())[11]
CONFIG = Path(__file__).parent / "openapi" / "schemathesis.toml"
BIN = Path(sys.executable).parent


def _document(settings: Settings) -> dict[str, Any]:
    app = make_app(settings, build(settings))
    with TestClient(app, base_url="http://127.0.0.1") as http:
        return dict(http.get("/openapi.json").json())


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _document(Settings(data_dir=tmp_path_factory.mktemp("doc")))


def test_the_document_validates_as_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)  # openapi-spec-validator, against the OpenAPI 3.1 schema


def test_every_route_says_what_it_takes_and_every_refusal_is_an_error_body(document: dict[str, Any]) -> None:
    post = document["paths"]["/v1/recognitions"]["post"]
    content = post["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["required"] == ["files"]
    assert {"url", "urls"} <= {p for v in content["application/json"]["schema"]["oneOf"] for p in v["properties"]}
    course = document["paths"]["/"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"inputFile", "myfile"} <= set(course["properties"])
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            refusals = {int(s): r for s, r in op["responses"].items() if int(s) >= 400}
            assert {400, 500} <= set(refusals), (method, path)
            for status, answer in refusals.items():
                body = answer["content"]["application/json"]["schema"]
                if (path, status) != ("/readyz", 503):  # readiness says why in its own body
                    assert body == {"$ref": "#/components/schemas/Error"}, (method, path, status)
                assert "X-Request-ID" in answer["headers"]
            if 429 in refusals:
                assert {"Retry-After", "RateLimit"} <= set(refusals[429]["headers"])
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    rid = document["paths"]["/v1/recognitions/{rid}"]["get"]["parameters"]
    assert [p["schema"]["pattern"] for p in rid if p["name"] == "rid"] == ["^[0-9a-f]{32}$"]


def test_security_follows_the_deployment(tmp_path: Path) -> None:
    def security(**settings: Any) -> list[dict[str, list[str]]]:
        doc = _document(Settings(data_dir=tmp_path / str(len(settings)) / next(iter(settings)), **settings))
        return list(doc["paths"]["/v1/keys"]["get"]["security"])

    assert security(auth="off") == []
    assert security(auth="auto") == [{}, {"bearer": ["admin"]}, {"apiKey": ["admin"]}]  # key-free until a key
    assert security(auth="required") == [{"bearer": ["admin"]}, {"apiKey": ["admin"]}]


def test_405_names_every_method_of_the_path(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with TestClient(make_app(settings, build(settings)), base_url="http://127.0.0.1") as http:
        keys = http.request("OPTIONS", "/v1/keys")
        page = http.request("PUT", "/")
    assert keys.status_code == 405 and keys.headers["allow"] == "GET, POST"
    assert keys.json()["error"] == "method_not_allowed"
    assert page.status_code == 405 and page.headers["allow"] == "GET, POST"  # the page and the course route


def test_a_webhook_is_what_the_document_says(document: dict[str, Any]) -> None:
    hook = document["webhooks"]["recognition"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    result = Result(id="a" * 32, name="cat.jpg", status="done", model="m", label="tabby", confidence=0.9)
    payload = json.loads(webhook_payload(result, at=1_700_000_000.0))
    _validate(payload, hook, document)
    failed = Result(id="b" * 32, name="x.jpg", status="failed", model="m", error="corrupt", reason="bad")
    _validate(json.loads(webhook_payload(failed, at=0.0)), hook, document)


def test_the_typed_client_reads_what_the_document_describes(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    recognition = schemas["Recognition"]
    fields = {f.name: f for f in dataclasses.fields(client_api.Recognition)}
    assert set(fields) <= set(recognition["properties"]), set(fields) - set(recognition["properties"])
    required = {
        n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert required == set(recognition["required"]) == {"id", "status"}
    error = schemas["Error"]
    assert {"error", "detail", "request_id"} <= set(error["properties"]) and set(error["required"]) == {
        "error",
        "detail",
    }


def _validate(instance: Any, schema: dict[str, Any], document: dict[str, Any]) -> None:
    jsonschema.validate(instance, {**schema, "components": document["components"]})


# -- against a real service ---------------------------------------------------------------------


@pytest.fixture
def keyless(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path / "data", max_workers=1).start()
    yield svc
    svc.stop()


def _schemathesis(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [str(BIN / "st"), "--config-file", str(CONFIG), "--no-color", "run", url + "/openapi.json"]
    args += ["--checks", "all", "--max-examples", "30", "--seed", "20261204", "--generation-database", "none", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=900)


def test_schemathesis_finds_nothing_without_keys(keyless: Service) -> None:
    run = _schemathesis(keyless.url)
    assert run.returncode == 0, run.stdout[-6000:]
    assert " passed" in run.stdout  # it ran cases, not nothing


def test_schemathesis_finds_nothing_with_keys_required_and_an_admin_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = create_key(data, "admin", "admin", "--requests-per-s", "1000")  # the fuzzer is quick
    svc = Service(data, max_workers=1, auth="required").start()
    try:
        run = _schemathesis(svc.url, "--header", f"Authorization: Bearer {key}")
    finally:
        svc.stop()
    assert run.returncode == 0, run.stdout[-6000:]
    assert " passed" in run.stdout


def test_a_generated_client_uploads_reads_and_gets_typed_errors(
    keyless: Service, tmp_path: Path, classifier: Classifier
) -> None:
    (tmp_path / "openapi.json").write_text(httpx.get(keyless.url + "/openapi.json").text)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # it formats with ruff
    generate = [str(BIN / "openapi-python-client"), "generate", "--path", "openapi.json"]
    made = subprocess.run(
        [*generate, "--output-path", "iraas_api", "--meta", "none"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert made.returncode == 0 and "Warning" not in made.stdout + made.stderr, made.stdout + made.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        _use_generated_client(keyless.url, classifier)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "iraas_api" or m.startswith("iraas_api.")]:
            del sys.modules[name]


def _use_generated_client(url: str, classifier: Classifier) -> None:
    client_mod = importlib.import_module("iraas_api.client")
    recognize = importlib.import_module("iraas_api.api.default.recognize")
    get_recognition = importlib.import_module("iraas_api.api.default.get_recognition")
    models = importlib.import_module("iraas_api.models")
    types = importlib.import_module("iraas_api.types")
    body_class = next(getattr(models, n) for n in dir(models) if n.startswith("Recognize") and "Files" in n)

    def upload(name: str, data: bytes) -> Any:
        body = body_class(files=[types.File(payload=data, file_name=name)])
        return recognize.sync_detailed(client=client, body=body, timeout=60.0)

    with client_mod.Client(base_url=url, raise_on_unexpected_status=True) as client:
        answer = upload(PHOTO.name, PHOTO.read_bytes())
        assert answer.status_code == 200
        (first,) = answer.parsed
        assert isinstance(first, models.Recognition) and first.status == "done"
        assert first.label == classifier.predict([PHOTO.read_bytes()])[0].label
        again = get_recognition.sync(first.id, client=client)
        assert isinstance(again, models.Recognition) and (again.id, again.label) == (first.id, first.label)

        refused = upload("notes.txt", b"not an image at all")
        assert refused.status_code == 415
        assert isinstance(refused.parsed, models.Error) and refused.parsed.error == "not_an_image"
        missing = get_recognition.sync_detailed("0" * 32, client=client)
        assert missing.status_code == 404 and isinstance(missing.parsed, models.Error)
