"""The fleet's shared state in DynamoDB (`slserve.metering.fleet` says what and why), for the router's many
Lambda environments.

- **Claims** live in the responses table, one item per (API key, Idempotency-Key), so that a claim and the answer
  that replaces it are one item: a claim is a conditional put (`attribute_not_exists(slot) OR lease_until <
  :now`: free, or its holder's lease or its answer's retention is over); the ledger's transaction puts the answer
  over its own claim only (`claim = :mine`), and a failed holder deletes its claim only.
- **Quotas** are a counter item per (key, month) in the quotas table: `ADD used 1` under `used < :quota`, one
  conditional update, strongly consistent. A month's counter starts from the ledger's count for the month (read
  once, when the item does not exist yet, through a conditional put: two environments cannot both start it).

boto3 is synchronous: every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from slserve.metering.dynamo import DynamoLedger, read_stored, slot
from slserve.metering.fleet import ClaimOutcome

MONTH_KEPT_S = 62 * 86400  # a counter outlives its month (the TTL prunes it after)


class DynamoFleetState:
    def __init__(self, client: Any, ledger: DynamoLedger, quotas_table: str) -> None:
        self.client = client
        self.ledger = ledger
        self.responses = ledger.responses
        self.quotas = quotas_table

    async def claim(self, key_id: str, idempotency_key: str, request_id: str, lease_s: float) -> ClaimOutcome:
        return await asyncio.to_thread(self._claim, key_id, idempotency_key, request_id, lease_s)

    def _claim(self, key_id: str, idempotency_key: str, request_id: str, lease_s: float) -> ClaimOutcome:
        now = time.time()
        key = slot(key_id, idempotency_key)
        try:
            self.client.put_item(
                TableName=self.responses,
                Item={
                    "slot": {"S": key},
                    "claim": {"S": request_id},
                    "lease_until": {"N": str(int(now + lease_s))},
                    "expires_at": {"N": str(int(now + lease_s))},
                },
                ConditionExpression="attribute_not_exists(slot) OR lease_until < :now OR claim = :mine",
                ExpressionAttributeValues={":now": {"N": str(int(now))}, ":mine": {"S": request_id}},
            )
            return ClaimOutcome(True)
        except self.client.exceptions.ConditionalCheckFailedException:
            pass
        item = self.client.get_item(TableName=self.responses, Key={"slot": {"S": key}}, ConsistentRead=True).get("Item")
        if item is not None and "fingerprint" in item:
            return ClaimOutcome(False, read_stored(item, self.ledger.retention_s))
        return ClaimOutcome(False)  # held by a live claim (or it went away meanwhile: the caller asks again)

    async def release(self, key_id: str, idempotency_key: str, request_id: str) -> None:
        await asyncio.to_thread(self._release, key_id, idempotency_key, request_id)

    def _release(self, key_id: str, idempotency_key: str, request_id: str) -> None:
        # Refused when its answer is stored there now, or another request took over an expired lease.
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.delete_item(
                TableName=self.responses,
                Key={"slot": {"S": slot(key_id, idempotency_key)}},
                ConditionExpression="claim = :mine AND attribute_not_exists(fingerprint)",
                ExpressionAttributeValues={":mine": {"S": request_id}},
            )

    async def take_quota(self, key_id: str, month: float, month_end: float, quota: int) -> bool:
        return await asyncio.to_thread(self._take_quota, key_id, month, month_end, quota)

    def _take_quota(self, key_id: str, month: float, month_end: float, quota: int) -> bool:
        key = {"slot": {"S": f"{key_id}\0{int(month)}"}}
        errors = self.client.exceptions
        for _ in range(2):  # a counter not started yet is started, then taken from
            try:
                self.client.update_item(
                    TableName=self.quotas,
                    Key=key,
                    UpdateExpression="ADD used :one",
                    ConditionExpression="attribute_exists(used) AND used < :quota",
                    ExpressionAttributeValues={":one": {"N": "1"}, ":quota": {"N": str(quota)}},
                )
                return True
            except errors.ConditionalCheckFailedException:
                pass
            started = self.client.get_item(TableName=self.quotas, Key=key, ConsistentRead=True).get("Item")
            if started is not None:
                return False  # the counter is at the quota
            with contextlib.suppress(errors.ConditionalCheckFailedException):  # another environment was first
                self.client.put_item(
                    TableName=self.quotas,
                    Item={
                        **key,
                        "used": {"N": str(self.ledger.charged_in_month(key_id, month, month_end))},
                        "expires_at": {"N": str(int(month_end + MONTH_KEPT_S))},
                    },
                    ConditionExpression="attribute_not_exists(slot)",
                )
        return False

    async def return_quota(self, key_id: str, month: float) -> None:
        await asyncio.to_thread(self._return_quota, key_id, month)

    def _return_quota(self, key_id: str, month: float) -> None:
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.quotas,
                Key={"slot": {"S": f"{key_id}\0{int(month)}"}},
                UpdateExpression="ADD used :minus",
                ConditionExpression="used > :zero",
                ExpressionAttributeValues={":minus": {"N": "-1"}, ":zero": {"N": "0"}},
            )
