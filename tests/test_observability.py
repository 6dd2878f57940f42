"""The alert rules and the Grafana dashboard in docs/ are valid and mean what they say:
promtool (Debian's prometheus package; `make test` installs it) checks every expression, unit
tests each alert with series that must fire it and series that must not, and every metric they
name is one a real web tier serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from iraas.config import Settings
from iraas.messages import ClusterStatus, Result
from iraas.parts import build, make_app
from iraas.web.metrics import Metrics

from .conftest import ROOT

ALERTS = ROOT / "docs" / "prometheus-alerts.yml"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool") or "promtool"


def _promtool(*args: str) -> str:
    out = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


def _alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    return {r["alert"]: r["expr"] for r in rules}


def test_the_alert_rules_and_the_dashboards_queries_are_valid_promql(tmp_path: Path) -> None:
    assert "SUCCESS: 4 rules found" in _promtool("check", "rules", str(ALERTS))
    recorded = {"groups": [{"name": "dashboard", "rules": []}]}
    for n, expr in enumerate(_dashboard_exprs()):
        recorded["groups"][0]["rules"].append({"record": f"dashboard:panel_{n}", "expr": expr})
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(recorded))
    assert f"SUCCESS: {len(_dashboard_exprs())} rules found" in _promtool(
        "check", "rules", str(tmp_path / "dashboard.yml")
    )


def _case(series: dict[str, str], at: str, fired: dict[str, bool]) -> dict[str, Any]:
    """One promtool test: two web processes serve the same cluster-wide `series`; at `at`, each
    alert in `fired` fires (True) or not (False)."""
    inputs = [
        {
            "series": f'{name[:-1]},instance="{web}"}}' if name.endswith("}") else f'{name}{{instance="{web}"}}',
            "values": v,
        }
        for name, v in series.items()
        for web in ("web1", "web2")
    ]
    checks = [
        {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": {"severity": "warning"}}] if on else []}
        for alert, on in fired.items()
    ]
    return {"interval": "1m", "input_series": inputs, "alert_rule_test": checks}


def test_each_alert_fires_on_its_trouble_and_not_on_a_healthy_service(tmp_path: Path) -> None:
    # annotations are templates checked above; their rendered text is not what is tested here
    rules = yaml.safe_load(ALERTS.read_text())
    for rule in rules["groups"][0]["rules"]:
        rule.pop("annotations")
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    deliveries = 'iraas_webhook_deliveries_total{outcome="%s"}'
    healthy = {
        "iraas_queue_oldest_age_seconds": "0+2x40",  # a busy queue whose oldest request is seconds old
        "iraas_dead_letters_total": "0x40",
        deliveries % "delivered": "0+30x40",
        deliveries % "retried": "0+3x40",  # some receivers flaky: 10 % retried
        deliveries % "failed": "0x40",
    }
    trouble = {
        "iraas_queue_oldest_age_seconds": "0+60x40",  # waiting a minute longer each minute
        "iraas_dead_letters_total": "0x20 1x20",
        deliveries % "delivered": "0+1x40",
        deliveries % "retried": "0+20x40",
        deliveries % "failed": "0x30 1x10",
    }
    alerts = {"IraasBacklogAging": True, "IraasDeadLetters": True, "IraasWebhooksFailing": True}
    tests = {
        "rule_files": [str(tmp_path / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            _case(healthy, "35m", dict.fromkeys([*alerts, "IraasWebhooksGivenUp"], False)),
            _case(trouble, "25m", alerts | {"IraasWebhooksGivenUp": False}),
            _case(trouble, "35m", {"IraasWebhooksGivenUp": True, "IraasBacklogAging": True}),
            # the oldest request 4 minutes old: not yet
            _case({"iraas_queue_oldest_age_seconds": "0+60x4"}, "4m", {"IraasBacklogAging": False}),
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    assert "SUCCESS" in _promtool("test", "rules", str(tmp_path / "tests.yml"))


def test_every_metric_they_name_is_served(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with TestClient(make_app(settings, build(settings)), base_url="http://127.0.0.1") as c:
        served = c.get("/metrics").text
    families = dict(re.findall(r"^# TYPE (\w+) (\w+)$", served, re.M))
    names = set()
    # (a counter's TYPE line names it with its _total)
    for kind, suffixes in (("counter", ("",)), ("histogram", ("_bucket", "_sum", "_count")), ("gauge", ("",))):
        names |= {f + s for f, k in families.items() if k == kind for s in suffixes}
    used = {m for expr in [*_dashboard_exprs(), *_alert_exprs().values()] for m in re.findall(r"\biraas_\w+", expr)}
    assert used and used <= names, used - names
    assert {"iraas_stage_seconds", "iraas_webhook_deliveries_total", "iraas_queue_oldest_age_seconds"} <= set(families)


def test_stage_times_are_observed_per_stage() -> None:
    m = Metrics()
    timings = {"queued": 0.5, "fetch": 0.001, "decode": 0.004, "inference": 0.012, "store": 0.002, "total": 0.52}
    m.observe(Result(id="a", name="a.jpg", status="done", model="m", timings=timings))
    m.observe(Result(id="b", name="b.jpg", status="done", model="m", timings=timings, cached=True))
    text = generate_latest(m.registry).decode()
    for stage in ("queued", "fetch", "decode", "inference", "store"):
        assert f'iraas_stage_seconds_count{{stage="{stage}"}} 1.0' in text  # the cached answer had no stages
    assert 'iraas_images_total{status="done"} 2.0' in text


def test_the_scaling_signals_are_served_once_measured(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    parts = build(settings)
    load = {"cpu": 0.82, "rate": 95.5, "start_s": 0.1, "drain_s": None, "backlog": 0}
    parts.cluster.publish_status(ClusterStatus(at=time.time(), load=load))
    with TestClient(make_app(settings, parts), base_url="http://127.0.0.1") as c:
        served = c.get("/metrics").text
    assert "iraas_worker_cpu_ratio 0.82" in served
    assert "iraas_worker_rate_images_per_second 95.5" in served
    assert "iraas_worker_start_seconds 0.1" in served
    assert "iraas_drain_seconds" not in served  # not known: not made up
