"""What every boto3 client of iraas shares: retries, error codes, and where a deployment's stack
says its parts are."""

from __future__ import annotations

from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError

# "standard" retries throttling and transient errors with backoff; the read time-out must
# exceed SQS's 20 s long poll.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


# What AWS answers a call the caller's role does not allow (S3: 403 "AccessDenied", also for
# a missing key without s3:ListBucket; EC2: "UnauthorizedOperation") or bad credentials.
DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "AuthorizationError",
        "Forbidden",
        "403",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidAccessKeyId",
    }
)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def denied(exc: ClientError) -> bool:
    return error_code(exc) in DENIED


def refused(what: str, exc: ClientError) -> str:
    """The message of a call IAM refused: a configuration error, said as one."""
    return (
        f"AWS refused {what} ({error_code(exc)}): a configuration error, not a fault of the request: "
        "this process's role lacks a permission (`iraas aws doctor` lists what is missing)"
    )


def failed(action: str, exc: Exception, needs: str) -> str:
    """What a failed call says: refused by IAM (the permission, and where the role needs it),
    or failed for another reason (throttled, unreachable)."""
    if isinstance(exc, ClientError) and denied(exc):
        return f"AWS refused {action} ({error_code(exc)}): this role needs it {needs}"
    return f"{action} failed ({exc})"


def client(service: str, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """The one way iraas makes a boto3 client: explicit region and endpoint (AWS, moto's
    server, LocalStack), the shared retry policy."""
    import boto3

    return boto3.client(service, region_name=region, endpoint_url=endpoint_url, config=RETRY_CONFIG)


def stack_name(name: str) -> str:
    """The CloudFormation stack of the deployment `name`."""
    return f"iraas-{name}"


def stack_outputs(cfn: Any, name: str) -> dict[str, str]:
    """The deployment's stack outputs (its bucket, queues, URL), by key."""
    stack = cfn.describe_stacks(StackName=stack_name(name))["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
