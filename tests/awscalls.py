"""Run `iraas` with every AWS call it makes recorded: `python -m tests.awscalls LOG.jsonl ARGS…`.

botocore's event hooks on boto3's default session (the one `iraas.awsapi.client` uses) write one
JSON line per call once its final answer is in (after botocore's retries): service, operation,
the parameters IAM decides on, and the HTTP status and error code. `tests/iampolicy.py` turns
each line into the authorization requests AWS would make and evaluates them.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

# The parameters that name what a call touches; bodies are never recorded.
_KEEP = (
    "Bucket",
    "Key",
    "Prefix",
    "QueueUrl",
    "QueueName",
    "SecretId",
    "InstanceIds",
    "LaunchTemplate",
    "TagSpecifications",
    "InstanceType",
    "UserData",
    "IamInstanceProfile",
    "ImageId",
    "DryRun",
    "Namespace",
    "AutoScalingGroupName",
    "ProtectedFromScaleIn",
)


def install(path: str) -> None:
    import boto3

    lock = threading.Lock()
    log = open(path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    boto3.setup_default_session()
    events = boto3.DEFAULT_SESSION.events  # type: ignore[attr-defined]

    def keep(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["iraas_params"] = {k: v for k, v in params.items() if k in _KEEP}
        if "Delete" in params:  # DeleteObjects: the keys
            context["iraas_params"]["Keys"] = [o["Key"] for o in params["Delete"]["Objects"]]
        if "Entries" in params:
            context["iraas_params"]["Entries"] = len(params["Entries"])

    def done(http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        line = {
            "service": model.service_model.endpoint_prefix,
            "operation": model.name,
            "params": context.get("iraas_params", {}),
            "status": getattr(http_response, "status_code", 0),
            "error": parsed.get("Error", {}).get("Code", ""),
        }
        with lock:
            log.write(json.dumps(line, default=str) + "\n")

    events.register("provide-client-params", keep)
    events.register("after-call", done)


def main() -> None:
    install(sys.argv[1])
    from iraas.cli import main as iraas

    sys.argv = ["iraas", *sys.argv[2:]]
    sys.exit(iraas())


if __name__ == "__main__":
    main()
