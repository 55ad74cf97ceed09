"""The DynamoDB tables of a deployment, in one place: the CDK stack declares them from here, and
`create_tables` makes them for development and tests (against moto, or DynamoDB Local)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Table:
    name: str  # the role; a deployment prefixes it (`slserve-prod-ledger`)
    partition: str  # a string attribute
    indexes: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (string partition, number sort)
    ttl: str | None = None  # the attribute holding the expiry (unix seconds)

    def full_name(self, prefix: str) -> str:
        return f"{prefix}-{self.name}"


KEYS = Table("keys", "key_id")
LEDGER = Table("ledger", "request_id", {"by_key": ("key_id", "time_us"), "by_tenant": ("tenant", "time_us")})
RESPONSES = Table("responses", "slot", ttl="expires_at")  # stored answers and Idempotency-Key claims
QUOTAS = Table("quotas", "slot", ttl="expires_at")  # a counter per (key, month)
TABLES = (KEYS, LEDGER, RESPONSES, QUOTAS)


def create_tables(client: Any, prefix: str) -> dict[str, str]:
    """Make every table (on-demand billing) and wait for them; returns role -> table name."""
    names = {}
    for table in TABLES:
        name = table.full_name(prefix)
        attributes = {table.partition: "S"}
        for partition, sort in table.indexes.values():
            attributes |= {partition: "S", sort: "N"}
        request: dict[str, Any] = {
            "TableName": name,
            "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": [{"AttributeName": table.partition, "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": a, "AttributeType": t} for a, t in attributes.items()],
        }
        if table.indexes:
            request["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": index,
                    "KeySchema": [
                        {"AttributeName": partition, "KeyType": "HASH"},
                        {"AttributeName": sort, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
                for index, (partition, sort) in table.indexes.items()
            ]
        client.create_table(**request)
        client.get_waiter("table_exists").wait(TableName=name)
        if table.ttl:
            client.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl}
            )
        names[table.name] = name
    return names
