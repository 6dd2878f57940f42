"""The Helm chart rendered as `helm template` would (Helm's own SDK), for the tests that read it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python as helm
import yaml

from .conftest import ROOT

CHART = ROOT / "deploy" / "helm" / "iraas"


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="demo", namespace="prod")
    docs = [d for name, text in out.items() if name.endswith(".yaml") for d in yaml.safe_load_all(text)]
    return [d for d in docs if d]


def notes(values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart:
        return str(chart.render(values, name="demo", namespace="prod")["iraas/templates/NOTES.txt"])


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] == "Deployment":
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "ScaledJob":
            yield d["metadata"]["name"], d["spec"]["jobTargetRef"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def pod(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The pod spec of the Deployment or ScaledJob `name`."""
    return dict(pod_specs(docs))[name]


def env_of(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """What `container` finds in its environment: the ConfigMap's settings and its plain values
    (the ones from Secrets are the caller's to give)."""
    (config,) = of_kind(docs, "ConfigMap")
    env = dict(config["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env
