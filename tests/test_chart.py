"""The Helm chart (deploy/helm/iraas), checked offline as honestly as a machine without a cluster
allows: rendered by Helm's own SDK (helm-python-sdk), linted, every manifest validated strictly
against the Kubernetes schemas of the chart's oldest and newest supported versions
(kubernetes-validate), KEDA's objects against KEDA's own CRD schemas (tests/k8s, vendored), the
rules a user relies on asserted, and KEDA's backlog query run against a real PostgreSQL."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from iraas.pg import Database
from iraas.queues.postgres import PostgresQueue, backlog_sql

from .chart import CHART, containers, notes, of_kind, pod_specs, render

CRDS = Path(__file__).parent / "k8s" / "keda-2.20.1"
OLDEST = "1.29.0"  # Chart.yaml's kubeVersion
NEWEST = kubernetes_validate.latest_version()
AWS = {
    "backend": "aws",
    "aws": {
        "region": "eu-west-1",
        "bucket": "iraas-images",
        "requestsQueueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/iraas-requests",
    },
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/iraas"}},
}
MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "scaledobject": {"workers": {"mode": "scaledobject", "minReplicas": 1}},
    "aws": AWS,
    "everything": {
        "webhooks": {"existingSecret": "iraas-webhooks"},
        "web": {"ingress": {"enabled": True, "className": "nginx", "tlsSecret": "iraas-tls"}},
        "settings": {"IRAAS_MAX_WORKERS": 20, "IRAAS_RESULT_TTL_S": 3600},
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


# -- validation -------------------------------------------------------------------------------


def _crd_schemas() -> dict[str, dict[str, Any]]:
    schemas = {}
    for f in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(f.read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


KEDA = _crd_schemas()


def _unknown_fields(value: Any, schema: dict[str, Any], at: str) -> list[str]:
    """Fields the schema does not know: the API server's strict field validation refuses them
    (a CRD schema does not say additionalProperties: false; the server prunes or refuses)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{at}.{key}")
            else:
                found += _unknown_fields(item, schema["properties"][key], f"{at}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += _unknown_fields(item, schema["additionalProperties"], f"{at}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += _unknown_fields(item, schema["items"], f"{at}[{i}]")
    return found


def validate(doc: dict[str, Any], version: str) -> None:
    """Raises for a manifest a cluster of `version` (with KEDA 2.20) would refuse."""
    if doc["apiVersion"].startswith("keda.sh/"):
        schema = {k: v for k, v in KEDA[doc["kind"]].items() if k != "description"}
        jsonschema.validate(doc, schema)
        unknown = [f for f in _unknown_fields(doc, schema, doc["kind"]) if not f.endswith(".metadata.labels")]
        unknown = [f for f in unknown if ".metadata." not in f]  # ObjectMeta is left open in CRDs
        if unknown:
            raise jsonschema.ValidationError(f"unknown fields: {unknown}")
    else:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("mode", MODES)
def test_the_chart_lints_clean_in_each_mode(mode: str) -> None:
    for version in (OLDEST, NEWEST):
        report = helm.lint(CHART, MODES[mode], strict=True, kube_version=f"v{version}")
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("mode", MODES)
def test_every_manifest_validates_strictly_against_kubernetes_and_keda(mode: str) -> None:
    docs = render(MODES[mode])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "TriggerAuthentication"} <= kinds
    assert kinds & {"ScaledJob", "ScaledObject"}
    for version in (OLDEST, NEWEST):
        for doc in docs:
            validate(doc, version)


def test_the_validation_refuses_what_a_cluster_would() -> None:
    """The checks above can fail: an unknown field or a wrong type is refused, for Kubernetes
    objects and KEDA's alike."""
    docs = render({})
    web = copy.deepcopy(of_kind(docs, "Deployment")[0])
    web["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    job = copy.deepcopy(of_kind(docs, "ScaledJob")[0])
    job["spec"]["pollingIntervall"] = 5
    typed = copy.deepcopy(of_kind(docs, "ScaledJob")[0])
    typed["spec"]["maxReplicaCount"] = "twenty"
    for broken in (web, job, typed):
        with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
            validate(broken, NEWEST)


# -- the rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_every_pod_runs_unprivileged_read_only_with_requests(mode: str) -> None:
    specs = dict(pod_specs(render(MODES[mode])))
    assert {n.rsplit("-", 1)[1] for n in specs} == {"web", "duties", "workers"}
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in containers(spec):
            sec = c["securityContext"]
            assert sec["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sec["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sec["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), (name, c["name"])
            # what the read-only root leaves writable: the scratch volumes, nothing else
            assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp", "/var/lib/iraas"}


def test_the_web_tier_is_probed_and_kept_available() -> None:
    docs = render({})
    (web,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "demo-iraas-web"]
    (c,) = web["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == web["spec"]["selector"]["matchLabels"]
    (svc,) = of_kind(docs, "Service")
    assert svc["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("mode", ["default", "scaledobject"])
def test_a_stopped_worker_has_the_time_to_finish_its_batch(mode: str) -> None:
    values = MODES[mode]
    specs = dict(pod_specs(render(values)))
    worker = specs["demo-iraas-workers"]
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(values)["workers"]
    bound = merged["maxBatchSeconds"] + merged["visibilityTimeoutSeconds"]
    assert worker["terminationGracePeriodSeconds"] >= bound
    short = {**values, "workers": {**values.get("workers", {}), "terminationGracePeriodSeconds": bound - 1}}
    with pytest.raises(helm.HelmError, match="would kill a worker in the middle of a batch"):
        render(short)


def test_workers_are_a_scaled_job_by_default_that_ends_when_idle() -> None:
    docs = render({})
    (job,) = of_kind(docs, "ScaledJob")
    assert not of_kind(docs, "ScaledObject")
    assert [d["metadata"]["name"] for d in of_kind(docs, "Deployment")] == ["demo-iraas-duties", "demo-iraas-web"]
    assert job["spec"]["rollout"]["strategy"] == "gradual"  # an upgrade does not delete busy jobs
    assert (job["spec"]["minReplicaCount"], job["spec"]["maxReplicaCount"]) == (0, 20)
    (c,) = job["spec"]["jobTargetRef"]["template"]["spec"]["containers"]
    assert c["args"] == ["worker"]
    assert {e["name"]: e.get("value") for e in c["env"]}["IRAAS_WORKER_MAX_IDLE_S"] == "30"


def test_a_scaled_object_scales_a_worker_deployment_that_never_ends_itself() -> None:
    docs = render(MODES["scaledobject"])
    (so,) = of_kind(docs, "ScaledObject")
    (workers,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "demo-iraas-workers"]
    assert so["spec"]["scaleTargetRef"]["name"] == "demo-iraas-workers"
    assert "replicas" not in workers["spec"]  # the HPA's to set: an upgrade must not reset it
    (c,) = workers["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in c["env"]}["IRAAS_WORKER_MAX_IDLE_S"] == "0"


def test_the_sqs_trigger_counts_requests_in_flight() -> None:
    docs = render(AWS)
    (job,) = of_kind(docs, "ScaledJob")
    (trigger,) = job["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["metadata"]["scaleOnInFlight"] == "true"
    assert trigger["metadata"]["queueURL"] == AWS["aws"]["requestsQueueUrl"]
    (auth,) = of_kind(docs, "TriggerAuthentication")
    assert auth["spec"]["podIdentity"] == {"provider": "aws", "identityOwner": "workload"}


# -- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_secrets_come_from_secrets_never_a_configmap(mode: str) -> None:
    docs = render(MODES[mode])
    (config,) = of_kind(docs, "ConfigMap")
    held = {"IRAAS_WEBHOOK_SECRET", "IRAAS_ADMIN_KEY"} | ({"IRAAS_QUEUE", "IRAAS_BLOBS"} if mode != "aws" else set())
    assert not held & set(config["data"]), config["data"]
    assert not [v for v in config["data"].values() if "@" in v or "whsec_" in v or "iraas_" in v]
    for _, spec in pod_specs(docs):
        for c in containers(spec):
            env = {e["name"]: e for e in c.get("env", [])}
            for name in held & set(env):
                assert set(env[name]) == {"name", "valueFrom"} and "secretKeyRef" in env[name]["valueFrom"], name
    if mode != "aws":
        (auth,) = of_kind(docs, "TriggerAuthentication")
        assert auth["spec"]["secretTargetRef"] == [{"parameter": "connection", "name": "iraas-database", "key": "url"}]


@pytest.mark.parametrize(
    "values",
    [
        {"settings": {"IRAAS_WEBHOOK_SECRET": "whsec_abc"}},
        {"settings": {"IRAAS_QUEUE": "postgresql://u:pw@db/iraas"}},
        {**AWS, "aws": {**AWS["aws"], "endpointUrl": "https://key:secret@minio.local"}},
        {"workers": {"mode": "keda"}},
        {"replicaCount": 3},  # a value the chart does not know: a typo is refused, not ignored
    ],
)
def test_the_values_schema_refuses_secrets_and_mistakes(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmError):
        render(values)


def test_the_notes_tell_how_to_reach_the_service_and_find_the_key() -> None:
    text = notes({})
    assert "kubectl -n prod port-forward service/demo-iraas 8000:80" in text
    assert "get secret iraas-api-key" in text
    with_ingress = notes({"web": {"ingress": {"enabled": True, "host": "img.example.org", "tlsSecret": "tls"}}})
    assert "https://img.example.org/" in with_ingress


# -- KEDA's query, on a real PostgreSQL -----------------------------------------------------------


def test_the_keda_query_returns_the_backlog_in_flight_included(pg_url: str) -> None:
    (job,) = of_kind(render({}), "ScaledJob")
    (trigger,) = job["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    assert query == backlog_sql("requests")  # one text: the chart's is iraas's own
    db = Database(pg_url)
    db.migrate()
    try:
        requests = PostgresQueue(db, "requests", max_receives=2)
        PostgresQueue(db, "webhooks").send_batch(["not a request"] * 4)
        requests.send("poison")
        for _ in range(2):  # received and dropped twice: its next receive dead-letters it
            assert [m.body for m in requests.receive(1, 0, visibility_s=0)] == ["poison"]
        requests.send_batch([f"waiting {i}" for i in range(8)])
        for _ in range(2):
            requests.send("later", delay_s=300)
        assert len(requests.receive(3, 0, visibility_s=300)) == 3  # in a worker's hands
        dead = requests.dead_letter
        assert dead is not None and dead.depth().visible == 1
        depth = requests.depth()
        with db.connection(durable=True) as conn:
            (got,) = conn.execute(query).fetchone()
        assert got == depth.visible + depth.in_flight == 8  # 5 + 3: not the delayed, the dead, the others
        assert depth.delayed == 2
    finally:
        db.close()
