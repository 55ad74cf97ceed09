"""The ledger in DynamoDB: the same contract as `SQLiteLedger`, for the AWS target.

- **Exactly one record per request**: a record is a conditional put (`attribute_not_exists(request_id)`); a
  second record with the same request id is refused, never written twice.
- **Durable before the response**: `append` returns once DynamoDB acknowledged the write.
- **Idempotent replays**: a stored answer is written in one transaction with its record, into a responses table
  keyed by (API key, Idempotency-Key), over the request's own claim (`slserve.metering.dynamo_fleet`), with a
  TTL of the retention (DynamoDB prunes it; an answer past the retention is not replayed even before it is
  pruned). An answer over `STORED_ANSWER_LIMIT` (DynamoDB's items are at most 400 KB) is kept as its size
  only: a retry is told it was answered and charged once, and to use a new key.
- Usage reads two global secondary indexes of the records table: `by_key` and `by_tenant`, each sorted by
  `time_us`. Quotas are counted apart, atomically (`dynamo_fleet`): an index is eventually consistent.

boto3 is synchronous: every call runs in a worker thread, so the gateway's event loop never waits on the network.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import defaultdict
from dataclasses import fields
from typing import Any

import orjson

from slserve.errors import LedgerUnavailable
from slserve.metering.ledger import DEFAULT_RETENTION_S
from slserve.metering.records import Record, SpendRow, StoredResponse, UsageRow, itemize

FIELDS = {f.name: f.type for f in fields(Record)}
# DynamoDB's items are at most 400 KB: an answer over this (with its headers and names beside it) is not kept.
STORED_ANSWER_LIMIT = 350 * 1024
BY_KEY, BY_TENANT = "by_key", "by_tenant"


def slot(key_id: str, idempotency_key: str) -> str:
    return f"{key_id}\0{idempotency_key}"


def read_stored(item: dict[str, Any], retention_s: float = DEFAULT_RETENTION_S) -> StoredResponse | None:
    """A responses-table item holding an answer, unless it is older than the retention."""
    if int(item["time_us"]["N"]) < (time.time() - retention_s) * 1e6:
        return None
    return StoredResponse(
        item["request_id"]["S"],
        item["fingerprint"]["S"],
        int(item["status"]["N"]),
        orjson.loads(item["headers"]["S"]),
        bytes(item["body"]["B"]) if "body" in item else b"",
        int(item["omitted_bytes"]["N"]) if "omitted_bytes" in item else 0,
    )


def to_item(record: Record) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(record, name)
        if value is None:
            continue
        if isinstance(value, bool):
            item[name] = {"BOOL": value}
        elif isinstance(value, int | float):
            item[name] = {"N": repr(value)}
        else:
            item[name] = {"S": str(value)}
    return item


def from_item(item: dict[str, Any]) -> Record:
    values: dict[str, Any] = {}
    for name, kind in FIELDS.items():
        cell = item.get(name)
        if cell is None:
            values[name] = None
        elif "BOOL" in cell:
            values[name] = cell["BOOL"]
        elif "N" in cell:
            number = cell["N"]
            values[name] = float(number) if "float" in str(kind) else int(number)
        else:
            values[name] = cell["S"]
    return Record(**values)


class DynamoLedger:
    def __init__(
        self, client: Any, records_table: str, responses_table: str, retention_s: float = DEFAULT_RETENTION_S
    ) -> None:
        """`client`: a boto3 DynamoDB client."""
        self.client = client
        self.records = records_table
        self.responses = responses_table
        self.retention_s = retention_s
        self._records = 0
        self._commits = 0
        self._pending = 0
        self._last_lag_s = 0.0

    async def append(self, record: Record, response: tuple[str, str, StoredResponse] | None = None) -> None:
        self._pending += 1
        started = time.monotonic()
        try:
            await asyncio.to_thread(self._write, record, response)
        finally:
            self._pending -= 1
        self._records += 1
        self._commits += 1
        self._last_lag_s = time.monotonic() - started

    def _write(self, record: Record, response: tuple[str, str, StoredResponse] | None) -> None:
        item = to_item(record)
        put = {
            "TableName": self.records,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(request_id)",
        }
        errors = self.client.exceptions
        try:
            if response is None:
                self.client.put_item(**put)
                return
            key_id, idempotency_key, stored = response
            item["idempotency_slot"] = {"S": slot(key_id, idempotency_key)}
            until = str(int(record.time_us / 1e6 + self.retention_s))
            answer: dict[str, dict[str, str | bytes]] = {
                "slot": {"S": slot(key_id, idempotency_key)},
                "request_id": {"S": stored.request_id},
                "fingerprint": {"S": stored.fingerprint},
                "status": {"N": str(stored.status)},
                "headers": {"S": orjson.dumps(stored.headers).decode()},
                "time_us": {"N": str(record.time_us)},
                "lease_until": {"N": until},  # a claim may take the key once the answer's retention is over
                "expires_at": {"N": until},  # the table's TTL
            }
            if len(stored.body) > STORED_ANSWER_LIMIT:  # over DynamoDB's item size: its size is kept, not its bytes
                answer["omitted_bytes"] = {"N": str(len(stored.body))}
            else:
                answer["body"] = {"B": stored.body}
            kept = {  # over this request's own claim only (or a free key): never over another request's
                "TableName": self.responses,
                "Item": answer,
                "ConditionExpression": "attribute_not_exists(slot) OR claim = :mine",
                "ExpressionAttributeValues": {":mine": {"S": record.request_id}},
            }
            self.client.transact_write_items(TransactItems=[{"Put": put}, {"Put": kept}])
        except (errors.ConditionalCheckFailedException, errors.TransactionCanceledException) as e:
            raise LedgerUnavailable(f"the billing record was refused ({_reason(e)}); retry") from None
        except errors.ClientError as e:
            raise LedgerUnavailable(f"the billing record could not be written ({_reason(e)}); retry") from None

    async def correct(self, request_id: str, status: int, price: int) -> None:
        await asyncio.to_thread(self._correct, request_id, status, price)

    def _correct(self, request_id: str, status: int, price: int) -> None:
        old = self.client.update_item(
            TableName=self.records,
            Key={"request_id": {"S": request_id}},
            UpdateExpression="SET #status = :status, price = :price REMOVE idempotency_slot",
            ConditionExpression="attribute_exists(request_id)",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":status": {"N": str(status)}, ":price": {"N": str(price)}},
            ReturnValues="ALL_OLD",
        )["Attributes"]
        kept = old.get("idempotency_slot")
        if kept is not None:
            self.client.delete_item(TableName=self.responses, Key={"slot": kept})

    def stored_response(self, key_id: str, idempotency_key: str) -> StoredResponse | None:
        item = self.client.get_item(
            TableName=self.responses, Key={"slot": {"S": slot(key_id, idempotency_key)}}, ConsistentRead=True
        ).get("Item")
        return None if item is None or "fingerprint" not in item else read_stored(item, self.retention_s)

    def _query(self, index: str, partition: str, value: str, start: float, end: float) -> list[Record]:
        """The records of one key or tenant in [start, end)."""
        out = []
        pages = self.client.get_paginator("query").paginate(
            TableName=self.records,
            IndexName=index,
            KeyConditionExpression=f"{partition} = :v AND time_us BETWEEN :start AND :end",
            ExpressionAttributeValues={
                ":v": {"S": value},
                ":start": {"N": str(int(start * 1e6))},
                ":end": {"N": str(int(end * 1e6) - 1)},
            },
        )
        for page in pages:
            out += [from_item(item) for item in page["Items"]]
        return out

    def charged_in_month(self, key_id: str, start: float, end: float) -> int:
        return sum(1 for r in self._query(BY_KEY, "key_id", key_id, start, end) if r.status == 200 or r.price > 0)

    def usage(self, start: float, end: float, tenant: str | None = None, key_id: str | None = None) -> list[UsageRow]:
        if key_id is not None:
            records = self._query(BY_KEY, "key_id", key_id, start, end)
            records = [r for r in records if tenant is None or r.tenant == tenant]
        elif tenant is not None:
            records = self._query(BY_TENANT, "tenant", tenant, start, end)
        else:
            records = self._scan(start, end)
        return summarize(records)

    def spend(self, start: float, end: float) -> list[SpendRow]:
        totals: dict[tuple[str, str], list[int]] = {}
        for r in self._scan(start, end):
            total = totals.setdefault((r.tenant, r.tier), [0, 0])
            total[0] += 1
            total[1] += r.price
        return [SpendRow(tenant, tier, n, charged) for (tenant, tier), (n, charged) in sorted(totals.items())]

    def _scan(self, start: float, end: float) -> list[Record]:
        out = []
        for page in self.client.get_paginator("scan").paginate(TableName=self.records):
            out += [from_item(item) for item in page["Items"]]
        return [r for r in out if start * 1e6 <= r.time_us < end * 1e6]

    def stats(self) -> dict[str, float]:
        return {
            "pending": self._pending,
            "records": self._records,
            "commits": self._commits,
            "last_group": 1,
            "last_lag_s": self._last_lag_s,
        }

    async def close(self) -> None:
        return None


def summarize(records: list[Record]) -> list[UsageRow]:
    """Usage per (model, version, tier), as the SQLite ledger's query computes it."""
    rows: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, 0, 0, 0.0, 0, 0, 0])
    for r in records:
        row = rows[r.model, r.version, r.tier]
        row[0] += r.status == 200
        row[1] += r.status not in (200, 499)
        row[2] += r.status == 499
        row[3] += r.compute_ms or 0.0
        row[4] += r.tokens or 0
        row[5] += r.price
        row[6] += r.compute_cost or 0
    steps = itemize((r.model, r.version, r.tier, r.steps) for r in records if r.steps is not None and r.price > 0)
    return [
        dataclasses.replace(UsageRow(*key, *values), steps=steps.get(key, ())) for key, values in sorted(rows.items())
    ]


def _reason(error: Exception) -> str:
    response = getattr(error, "response", {}) or {}
    return str(response.get("Error", {}).get("Message") or error)
