"""Signed webhooks and deadlines, with a real receiver on 127.0.0.1: the real service where the
whole path matters (retries across a kill -9, a receiver that hangs), the store, worker and
deliverer in process where one decision is checked (an address refused at delivery time, an
expired request never inferred), the web tier in process for what it refuses."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from iraas.config import Settings
from iraas.messages import Request, Result
from iraas.model.classifier import Classifier
from iraas.parts import Parts, build, make_app, make_deliverer, make_worker
from iraas.signing import new_secret
from iraas.webhooks.deliver import Deliverer, backoff_s

from .conftest import IMAGENET, ROOT
from .drafts import make_request
from .receiver import receiver
from .service import Service

PHOTOS = sorted((IMAGENET / "images").iterdir())
SECRET = new_secret()
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def docs_verify() -> Callable[[str, dict[str, str], bytes], bool]:
    """The receiver's check as docs/integrating.md gives it, run as printed: the docs are right."""
    text = (ROOT / "docs" / "integrating.md").read_text()
    (code,) = re.findall(r"```python\n(# verify\.py.*?)```", text, re.S)
    assert len(code.strip().splitlines()) <= 12
    scope: dict[str, Any] = {}
    exec(code, scope)
    return scope["verify"]  # type: ignore[no-any-return]


def _status(url: str, rid: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/v1/recognitions/{rid}", timeout=10).json())


def test_a_signed_webhook_is_retried_with_the_same_id_across_a_kill_until_the_receiver_takes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, classifier: Classifier
) -> None:
    monkeypatch.setenv("IRAAS_WEBHOOK_SECRET", SECRET)  # as docs advise: not a flag others can read
    data = tmp_path / "data"
    settings = {"max_workers": 1, "url_allow": "127.0.0.1", "webhook_backoff_s": 0.5, "webhook_timeout_s": 2}
    verify = docs_verify()
    with receiver(answers=[500, 503]) as rec:
        svc = Service(data, **settings).start()
        photo = PHOTOS[0]
        headers = {"X-Request-ID": "trace-webhook-1", "traceparent": TRACEPARENT}
        sent = httpx.post(
            svc.url + "/v1/recognitions?wait=false",
            files={"files": (photo.name, photo.read_bytes())},
            data={"callback_url": rec.url},
            headers=headers,
            timeout=30,
        )
        assert sent.status_code == 202 and sent.headers["x-request-id"] == "trace-webhook-1"
        rid = sent.json()[0]["id"]
        rec.wait(2)  # refused twice; then the service dies between two attempts
        # once the second refusal is recorded (a kill before that write would lose it: the next
        # attempt would rightly show the first refusal as the last error)
        svc.wait_for(lambda: (_status(svc.url, rid).get("callback") or {}).get("last_error") == "HTTP 503")
        for pid in svc.worker_pids().values():  # workers never had the secret
            assert b"WEBHOOK_SECRET" not in Path(f"/proc/{pid}/environ").read_bytes()
        assert svc.stop(signal.SIGKILL) == -signal.SIGKILL
        svc = Service(data, **settings).start()
        try:
            got = rec.wait(3)
            assert len(got) == 3 and {g.headers["webhook-id"] for g in got} == {rid}
            assert all(verify(SECRET, g.headers, g.body) for g in got)
            assert not verify(new_secret(), got[-1].headers, got[-1].body)  # another secret: refused
            assert not verify(SECRET, got[-1].headers, got[-1].body.replace(b"done", b"dune"))  # altered: refused
            assert all(g.headers["x-request-id"] == "trace-webhook-1" for g in got)
            assert all(g.headers["traceparent"] == TRACEPARENT for g in got)
            assert got[1].at - got[0].at >= 0.25  # backed off, not hammered (the first delay is 0.25-0.5 s)
            payload = json.loads(got[-1].body)
            (label,) = [p.label for p in classifier.predict([photo.read_bytes()])]
            assert payload["type"] == "recognition.done"
            assert (payload["data"]["id"], payload["data"]["label"]) == (rid, label)
            assert payload["data"]["request_id"] == "trace-webhook-1"

            status = svc.wait_for(lambda: (s := _status(svc.url, rid))["callback"]["status"] == "delivered" and s)
            assert status["callback"]["attempts"] == 3 and status["callback"]["last_error"] == "HTTP 503"
            assert status["request_id"] == "trace-webhook-1"
            assert "t0ps3cret" not in json.dumps(status)  # the callback URL (its token) is not shown back
            delivered = 'iraas_webhook_deliveries_total{outcome="delivered"} 1.0'  # since the restart
            metrics = svc.wait_for(lambda: delivered in (m := httpx.get(svc.url + "/metrics").text) and m)
            assert "iraas_queue_oldest_age_seconds" in metrics
            assert SECRET not in svc.output() and SECRET[6:] not in httpx.get(svc.url + "/v1/cluster").text
        finally:
            svc.stop()


def test_a_hanging_receiver_does_not_slow_recognition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRAAS_WEBHOOK_SECRET", SECRET)
    with receiver(hang_s=4) as rec:
        svc = Service(tmp_path / "data", max_workers=2, url_allow="127.0.0.1", webhook_timeout_s=1).start()
        try:
            files = [("files", (p.name, p.read_bytes())) for p in PHOTOS[:8]]
            answered = httpx.post(
                svc.url + "/v1/recognitions", files=files, data={"callback_url": rec.url}, timeout=120
            ).json()
            assert [a["status"] for a in answered] == ["done"] * 8
            # every answer came while no webhook had been delivered: recognition did not wait on them
            for a in answered:
                callback = _status(svc.url, a["id"]).get("callback", {})
                assert callback.get("status") in ("pending", None), callback
            rec.wait(8)
            first = svc.wait_for(lambda: (c := _status(svc.url, answered[0]["id"])["callback"])["attempts"] and c)
            assert first["status"] == "pending" and first["last_error"] == "no answer in 1 s"
        finally:
            svc.stop()


# -- in process ------------------------------------------------------------------------------


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(data_dir=tmp_path, webhook_secret=SECRET, webhook_backoff_s=0.2, webhook_timeout_s=2, **changes)


def _deliver_for(store: Parts, deliverer: Deliverer, rid: str, timeout: float = 20) -> dict[str, Any]:
    """Run the deliverer until `rid`'s webhook is settled; its callback state."""
    stop = threading.Event()
    thread = threading.Thread(target=deliverer.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            state = store.callbacks.state(rid)
            if state is not None and state.status in ("delivered", "failed"):
                return state.shown()
            time.sleep(0.05)
        raise AssertionError(f"not settled: {store.callbacks.state(rid)}")
    finally:
        stop.set()
        thread.join(10)


def _queue(store: Parts, image: bytes, *, deadline: float = 0.0, callback: str = "") -> str:
    import hashlib

    (rid,) = store.ids.new_ids(1)
    digest = hashlib.sha256(image).hexdigest()
    store.results.put_input(image, digest)
    now = time.time()
    req = make_request(
        store,
        rid=rid,
        digest=digest,
        name="photo.jpg",
        model="efficientnet-lite0",
        reply_to="",
        submitted_at=now,
        trace="trace-expired",
        deadline=deadline,
        callback=callback,
    )
    store.results.enqueue([req])
    return rid


class _Counting:
    """The real classifier, counting the images it was asked about."""

    def __init__(self, inner: Classifier) -> None:
        self.inner, self.spec, self.times, self.name, self.version = inner, inner.spec, inner.times, inner.name, ""
        self.seen = 0

    def refresh(self) -> None:
        pass

    def classify(self, images: Any, top_k: int = 5) -> Any:
        self.seen += len(images)
        return self.inner.classify(images, top_k)


def test_a_request_queued_past_its_deadline_is_never_inferred_and_its_webhook_says_so(
    tmp_path: Path, classifier: Classifier
) -> None:
    settings = _settings(tmp_path, url_allow=("127.0.0.1",))
    store = build(settings)
    counting = _Counting(classifier)
    with receiver() as rec:
        late = _queue(store, PHOTOS[0].read_bytes(), deadline=time.time() + 0.2, callback=rec.url)
        on_time = _queue(store, PHOTOS[1].read_bytes(), deadline=time.time() + 600, callback=rec.url)
        time.sleep(0.3)  # nobody took them in time: the first is past its deadline
        worker = make_worker(store, counting, settings, "w-test")  # type: ignore[arg-type]
        assert worker.run_once(wait_s=1) == 2
        assert counting.seen == 1  # the one on time only
        expired = store.results.load_result(late)
        assert expired is not None and (expired.status, expired.error) == ("failed", "expired")
        assert "deadline" in (expired.reason or "") and expired.request_id == "trace-expired"
        assert _deliver_for(store, make_deliverer(store, settings), late)["status"] == "delivered"
        _deliver_for(store, make_deliverer(store, settings), on_time)
        bodies = {json.loads(g.body)["data"]["id"]: json.loads(g.body) for g in rec.got}
        assert bodies[late]["type"] == "recognition.failed" and bodies[late]["data"]["error"] == "expired"
        assert bodies[on_time]["type"] == "recognition.done"


def test_an_address_the_policy_refuses_at_delivery_time_gets_nothing(tmp_path: Path) -> None:
    """The callback's host resolved to a public address when the request came, and to loopback
    now (DNS rebinding): refused at the attempt, never retried, nothing sent."""
    settings = _settings(tmp_path)  # no url_allow: loopback is refused
    store = build(settings)
    with receiver() as rec:
        port = rec.url.split(":")[2].split("/")[0]
        rid = _queue(store, PHOTOS[0].read_bytes(), callback=f"http://hooks.example.com:{port}/in")
        result = Result(id=rid, name="photo.jpg", status="done", model="efficientnet-lite0", label="tench")
        msg = store.requests.receive(1, visibility_s=30)[0]
        store.results.finish(Request.from_json(msg.body), result)
        deliverer = make_deliverer(store, settings, resolver=lambda host, port: ["127.0.0.1"])
        state = _deliver_for(store, deliverer, rid)
        assert state["status"] == "failed" and state["attempts"] == 1
        assert state["last_error"].startswith("refused_address")
        assert rec.got == []


def test_the_retry_delay_doubles_with_jitter_and_is_capped() -> None:
    assert [backoff_s(n, 5, 3600, 0.0) for n in (1, 2, 3, 4)] == [2.5, 5, 10, 20]
    assert [backoff_s(n, 5, 3600, 0.999999) for n in (1, 2)] == pytest.approx([5, 10], abs=1e-4)
    assert backoff_s(30, 5, 3600, 0.0) == 1800 and backoff_s(10_000, 5, 3600, 0.5) == 2700


def test_the_web_tier_refuses_callbacks_it_must_not_deliver_and_bad_deadlines(tmp_path: Path) -> None:
    photo = ("p.jpg", PHOTOS[0].read_bytes())
    settings = _settings(tmp_path)
    store = build(settings)
    with TestClient(make_app(settings, store), base_url="http://127.0.0.1") as c:
        for callback, status, code in [
            ("http://127.0.0.1:9/hook", 403, "refused_address"),
            ("http://169.254.169.254/latest", 403, "refused_address"),
            ("ftp://example.com/hook", 400, "bad_url"),
            ("http://" + "a" * 2100 + ".com/", 400, "bad_url"),
        ]:
            r = c.post("/v1/recognitions", files={"files": photo}, data={"callback_url": callback})
            assert (r.status_code, r.json()["error"]) == (status, code), callback
        for deadline in ("0", "-1", "nan", "soon", str(8 * 86_400)):
            r = c.post("/v1/recognitions", files={"files": photo}, data={"deadline_s": deadline})
            assert (r.status_code, r.json()["error"]) == (400, "bad_parameter"), deadline
        sent = c.post("/v1/recognitions?wait=false&deadline_s=30", files={"files": photo})
        assert sent.status_code == 202
        (msg,) = store.requests.receive(1, visibility_s=30)
        body = json.loads(msg.body)
        assert 29 < body["deadline"] - body["submitted_at"] <= 30 and body["trace"] == sent.headers["x-request-id"]
    assert store.deliveries is not None and store.deliveries.depth().visible == 0  # nothing to deliver
    unsigned = Settings(data_dir=tmp_path / "other")
    with TestClient(make_app(unsigned, build(unsigned)), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/recognitions", files={"files": photo}, data={"callback_url": "https://example.com/h"})
        assert (r.status_code, r.json()["error"]) == (400, "webhooks_off")


@pytest.mark.parametrize("bad", ["whsec_short", "hunter2hunter2", "whsec_" + "A" * 200])
def test_a_malformed_secret_refuses_to_start_without_repeating_it(bad: str) -> None:
    from iraas.config import load_settings

    with pytest.raises(ValueError) as err:
        load_settings(webhook_secret=f"{SECRET} {bad}")
    assert "#2" in str(err.value) and bad not in str(err.value) and SECRET not in str(err.value)
