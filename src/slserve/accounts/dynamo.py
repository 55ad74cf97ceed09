"""API keys in DynamoDB: the same contract as `SQLiteKeyStore` (keyed hashes only, constant-time compare in
`KeyRecord.matches`), for the AWS target.

Table: partition key `key_id` (S); each key an item with its tenant, its public record (JSON) and its hashes.
A version item, bumped in the same transaction as every write, tells gateways that something changed; a
gateway reads it at most once per `refresh_s` (a revocation reaches every router within that), so a request
costs no DynamoDB read once its key is known.
"""

from __future__ import annotations

import time
from typing import Any

from slserve.accounts.keys import KeyRecord, KeyStoreBase, record_from, record_json
from slserve.errors import SpecError

VERSION_ITEM = "#version"  # not a key id: key ids are hex


class DynamoKeyStore(KeyStoreBase):
    def __init__(self, client: Any, table: str, secret: bytes, refresh_s: float = 1.0) -> None:
        """`client`: a boto3 DynamoDB client; `secret`: the HMAC key (from Secrets Manager on AWS)."""
        self.client = client
        self.table = table
        self._secret = secret
        self.refresh_s = refresh_s
        self._version = b""
        self._version_read_at = -refresh_s

    def get(self, key_id: str) -> KeyRecord | None:
        item = self.client.get_item(TableName=self.table, Key={"key_id": {"S": key_id}}, ConsistentRead=True)
        found = item.get("Item")
        return None if found is None or key_id == VERSION_ITEM else _from_item(found)

    def list(self, tenant: str | None = None) -> list[KeyRecord]:
        records = []
        for page in self.client.get_paginator("scan").paginate(TableName=self.table, ConsistentRead=True):
            for item in page["Items"]:
                if item["key_id"]["S"] == VERSION_ITEM:
                    continue
                record = _from_item(item)
                if tenant is None or record.tenant == tenant:
                    records.append(record)
        return sorted(records, key=lambda k: (k.tenant, k.created_at))

    def version(self) -> bytes:
        now = time.monotonic()
        if now - self._version_read_at >= self.refresh_s:
            self._version_read_at = now
            item = self.client.get_item(
                TableName=self.table, Key={"key_id": {"S": VERSION_ITEM}}, ConsistentRead=True
            ).get("Item")
            self._version = item["version"]["N"].encode() if item else b"0"
        return self._version

    def _write(self, record: KeyRecord, insert: bool = False) -> None:
        put: dict[str, Any] = {"TableName": self.table, "Item": _to_item(record)}
        if insert:
            put["ConditionExpression"] = "attribute_not_exists(key_id)"
        bump = {
            "TableName": self.table,
            "Key": {"key_id": {"S": VERSION_ITEM}},
            "UpdateExpression": "ADD version :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
        try:
            self.client.transact_write_items(TransactItems=[{"Put": put}, {"Update": bump}])
        except self.client.exceptions.TransactionCanceledException as e:
            raise SpecError(f"key {record.key_id} could not be written ({e}); try again") from None
        self._version_read_at = -self.refresh_s  # this process sees its own write at once


def _to_item(record: KeyRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "key_id": {"S": record.key_id},
        "tenant": {"S": record.tenant},
        "record": {"S": record_json(record)},
        "secret_hash": {"B": record.secret_hash},
    }
    if record.previous_hash is not None:
        item["previous_hash"] = {"B": record.previous_hash}
    return item


def _from_item(item: dict[str, Any]) -> KeyRecord:
    previous = item.get("previous_hash")
    return record_from(item["record"]["S"], bytes(item["secret_hash"]["B"]), bytes(previous["B"]) if previous else None)


def key_secret() -> bytes:
    """The HMAC key: the Secrets Manager secret SLSERVE_KEY_SECRET_ARN names (the stack makes it), or the value
    of SLSERVE_KEY_SECRET (tests, local peers)."""
    import os

    import boto3

    arn = os.environ.get("SLSERVE_KEY_SECRET_ARN")
    if arn:
        secret: str = boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
        return secret.encode()
    return os.environ["SLSERVE_KEY_SECRET"].encode()
