"""What every boto3 client of iraas shares: retries and error codes."""

from __future__ import annotations

from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError

# "standard" retries throttling and transient errors with backoff; the read time-out must
# exceed SQS's 20 s long poll.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def client(service: str, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """The one way iraas makes a boto3 client: explicit region and endpoint (AWS, moto's
    server, LocalStack), the shared retry policy."""
    import boto3

    return boto3.client(service, region_name=region, endpoint_url=endpoint_url, config=RETRY_CONFIG)
