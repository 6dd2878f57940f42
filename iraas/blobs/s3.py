"""The AWS blob store: one S3 bucket (optionally under a key prefix).

Conditional writes use `If-None-Match: *`: S3 answers 412 when the key exists (and 409 when a
concurrent conditional write is in progress), both meaning "someone else wrote first".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO, Any

from botocore.exceptions import ClientError

from ..awsapi import denied, error_code, refused
from .base import BlobDenied, BlobError, BlobNotFound, check_key, get_each, link_each, put_each

_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def _failed(what: str, exc: ClientError) -> BlobError:
    if denied(exc):  # includes a missing key read without s3:ListBucket on it: S3 answers 403
        return BlobDenied(refused(f"s3 {what}", exc))
    return BlobError(f"S3 {what}: {exc}")


class S3BlobStore:
    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes | IO[bytes], if_absent: bool = False, durable: bool = True) -> bool:
        del durable  # S3 acknowledges a put only once it is stored durably
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)
        except ClientError as exc:
            if if_absent and error_code(exc) in _LOST_RACE:
                return False
            raise _failed(f"put {key}", exc) from exc
        return True

    def get(self, key: str) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            return bytes(body.read())
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                raise BlobNotFound(key) from None
            raise _failed(f"get {key}", exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise _failed(f"head {key}", exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            raise _failed(f"delete {key}", exc) from exc

    def expire(self, folder: str, before: float) -> int:
        return 0  # the deployment's lifecycle rules (iraas.yaml) expire objects by prefix

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        try:
            for page in pages:
                keys.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        except ClientError as exc:
            raise _failed(f"list {prefix}", exc) from exc
        return sorted(keys)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return get_each(self, keys)

    def put_many(self, items: Mapping[str, bytes], if_absent: bool = False, durable: bool = True) -> set[str]:
        return put_each(self, items, if_absent, durable)

    def link(self, pairs: Mapping[str, str]) -> set[str]:
        return link_each(self, pairs)  # a conditional CopyObject is not on offer: a read and a put

    def sync(self, keys: Sequence[str]) -> None:
        for key in keys:  # nothing to do: S3 acknowledges a put only once it is stored durably
            check_key(key)
