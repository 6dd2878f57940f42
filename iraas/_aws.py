"""What every boto3 client of iraas shares: retries and error codes."""

from __future__ import annotations

from botocore.config import Config
from botocore.exceptions import ClientError

# "standard" retries throttling and transient errors with backoff; the read time-out must
# exceed SQS's 20 s long poll.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
