"""`slserve keys`: API keys, locally or in the deployed key table."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from slserve.cli.common import (
    AsJson,
    StateDir,
    console,
)
from slserve.errors import SlserveError
from slserve.settings import DEFAULT_STATE
from slserve.terminal import print_table

app = typer.Typer(no_args_is_help=True, help="API keys: create (the secret is shown once), list, revoke, rotate")


def _key_store(state: Path) -> Any:
    """The local key store, or the deployed one on AWS when SLSERVE_KEYS_TABLE names its table (with the HMAC
    key's secret in SLSERVE_KEY_SECRET_ARN, as the router reads it)."""
    table = os.environ.get("SLSERVE_KEYS_TABLE")
    if table:
        import boto3

        from slserve.accounts.dynamo import DynamoKeyStore, key_secret

        return DynamoKeyStore(boto3.client("dynamodb"), table, key_secret())
    from slserve.accounts.keys import SQLiteKeyStore

    return SQLiteKeyStore(state)


def _split(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(v for value in values for v in value.split(",") if v) if values else None


def _default_tier(tiers: tuple[str, ...] | None) -> str | None:
    """As the router chooses for a key without one: `standard` where the key opens it, else the first listed."""
    if not tiers:
        return None
    return "standard" if "standard" in tiers else tiers[0]


@app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Who pays for this key's requests")],
    models: Annotated[list[str] | None, typer.Option("--models", help="Models it opens (default all)")] = None,
    tiers: Annotated[list[str] | None, typer.Option("--tiers", help="Tiers it opens (default all)")] = None,
    default_tier: Annotated[str | None, typer.Option(help="Tier when a request names none")] = None,
    rate: Annotated[str | None, typer.Option(help="Token-bucket rate, e.g. 50/s or 600/min")] = None,
    burst: Annotated[int | None, typer.Option(help="Bucket size (default: one second of --rate)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at once")] = None,
    quota: Annotated[str | None, typer.Option(help="Charged requests per month, e.g. 100000/month")] = None,
    expires: Annotated[str | None, typer.Option(help="30d, 12h, or a date such as 2026-12-31")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May read /slserve/* (status, routes)")] = False,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """Make a key; its secret is printed once and stored only as a keyed hash."""
    from slserve.accounts.keys import new_key
    from slserve.accounts.limits import parse_expiry, parse_quota, parse_rate

    tier_list = _split(tiers)
    if (concurrency is not None and concurrency < 1) or (burst is not None and burst < 1):
        raise SlserveError("--concurrency and --burst must be at least 1")
    record = new_key(
        tenant,
        models=_split(models),
        tiers=tier_list,
        default_tier=default_tier or _default_tier(tier_list),
        rate_per_s=parse_rate(rate) if rate else None,
        burst=burst,
        concurrency=concurrency,
        quota_per_month=parse_quota(quota) if quota else None,
        expires_at=parse_expiry(expires) if expires else None,
        admin=admin,
    )
    store = _key_store(state)
    token = store.create(record)
    key_id = token.split("_")[1]
    if as_json:
        console.print_json(data={"key": token, **store.get(key_id).public()})
        return
    console.print(f"key {key_id} for tenant {tenant!r} (shown once; store it now):")
    print(token)


@app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys")] = None,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """Every key with its scope and limits (never a secret)."""
    keys = _key_store(state).list(tenant)
    if as_json:
        console.print_json(data=[k.public() for k in keys])
        return
    table = Table(
        "key",
        "tenant",
        "models",
        "tiers",
        "default tier",
        "rate/s",
        "conc.",
        "quota/mo",
        "expires",
        "state",
        box=box.SIMPLE_HEAD,
        caption="default tier -: standard where the model offers it, else its cheapest tier",
    )
    now = time.time()
    for k in keys:
        state_word = "revoked" if k.revoked_at else "expired" if k.expires_at and k.expires_at <= now else "active"
        table.add_row(
            k.key_id + (" (admin)" if k.admin else ""),
            k.tenant,
            ",".join(k.models) if k.models else "all",
            ",".join(k.tiers) if k.tiers else "all",
            k.default_tier or "-",
            f"{k.rate_per_s:g}" if k.rate_per_s else "-",
            str(k.concurrency or "-"),
            str(k.quota_per_month or "-"),
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(k.expires_at)) if k.expires_at else "-",
            state_word,
        )
    print_table(console, table)


@app.command("revoke")
def keys_revoke(key_id: str, state: StateDir = DEFAULT_STATE) -> None:
    """Revoke a key: the running gateway refuses it from its next request."""
    _key_store(state).revoke(key_id)
    console.print(f"key {key_id} revoked")


@app.command("rotate")
def keys_rotate(
    key_id: str,
    grace: Annotated[str, typer.Option(help="How long the old secret keeps working (e.g. 1h, 0s)")] = "1h",
    state: StateDir = DEFAULT_STATE,
) -> None:
    """A new secret for the same key (same id, scope, limits and usage); the old one works for --grace more."""
    from slserve.accounts.limits import parse_duration

    grace_s = parse_duration(grace)
    if grace_s is None:
        raise SlserveError(f"--grace {grace!r} is not like '0s', '30m' or '1h'")
    token = _key_store(state).rotate(key_id, grace_s)
    console.print(f"key {key_id} rotated; the old secret works for {grace} more. New secret (shown once):")
    print(token)
