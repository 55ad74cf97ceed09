"""The front on AWS: `slserve.aws.gateway.handler`, behind API Gateway.

It runs slserve's own gateway (the same `Front`: API keys, limits, routing by version and tier, idempotency,
metering, the v2 and OpenAI protocols), with another transport (Mangum turns the HTTP API's events into ASGI)
and other stores (DynamoDB), and sends each call to its model function by Lambda invoke (`LambdaExecutor`).
Everything is built in the init phase; an invocation only serves.

Configuration, from the environment (the CDK app sets it):
    SLSERVE_CATALOG           the deployed functions (catalog.json, written by `slserve deploy aws`)
    SLSERVE_ROUTES            routes.toml in the package
    SLSERVE_PREFIX            Lambda functions are named PREFIX-FUNCTION (a stage: one stack per prefix)
    SLSERVE_MODAL_PREFIX      the Modal endpoints' label prefix (`slserve deploy modal --prefix`)
    SLSERVE_KEYS_TABLE, SLSERVE_LEDGER_TABLE, SLSERVE_RESPONSES_TABLE, SLSERVE_QUOTAS_TABLE
    SLSERVE_KEY_SECRET_ARN    the HMAC key of API keys, in Secrets Manager (or SLSERVE_KEY_SECRET itself, for tests)
Other endpoints (tests, local peers) come from boto3's own AWS_ENDPOINT_URL_<SERVICE> variables.

What a fleet shares: Idempotency-Key claims, stored answers and monthly quotas are in DynamoDB
(`metering.dynamo_fleet`), so a retried request runs and is charged once whichever environment takes it, and N
environments admit exactly a key's quota. Rate and concurrency limits are counted per environment (README,
"What a fleet shares", says how to bound them across a fleet).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import boto3
from mangum import Mangum

from slserve.accounts.dynamo import DynamoKeyStore, key_secret
from slserve.compose.catalog import ManifestPipelines
from slserve.gateway.app import build_app
from slserve.gateway.front import Front
from slserve.metering.dynamo import DynamoLedger
from slserve.metering.dynamo_fleet import DynamoFleetState
from slserve.platform.aws import LambdaExecutor, lambda_client
from slserve.platform.base import Executor
from slserve.platform.catalog import ManifestCatalog
from slserve.platform.targets import Targets
from slserve.restore import reseed
from slserve.secrets import RotatingSecret
from slserve.settings import ServeSettings

TASK_ROOT = Path(os.environ.get("LAMBDA_TASK_ROOT", "."))


def _client(service: str) -> Any:
    return boto3.client(service)


def modal_secret() -> RotatingSecret:
    """The Modal endpoints' secret: the Secrets Manager secret SLSERVE_MODAL_SECRET_ARN names (the stack makes it;
    the operator puts the value `slserve deploy modal` made there), read again every few minutes and whenever an
    endpoint refuses it, so a rotation takes effect without a new version; or SLSERVE_MODAL_SECRET (tests)."""
    arn = os.environ.get("SLSERVE_MODAL_SECRET_ARN")
    if arn:
        secrets = _client("secretsmanager")

        def read() -> str:
            value: str = secrets.get_secret_value(SecretId=arn)["SecretString"]
            return value

        return RotatingSecret(read)
    return RotatingSecret.fixed(os.environ["SLSERVE_MODAL_SECRET"])


def build() -> tuple[Front, Targets, list[RotatingSecret]]:
    document = Path(os.environ.get("SLSERVE_CATALOG", TASK_ROOT / "catalog.json"))
    catalog = ManifestCatalog(document)
    settings = ServeSettings(routes=Path(os.environ.get("SLSERVE_ROUTES", TASK_ROOT / "routes.toml")))
    # One invocation at a time per environment; a shadow or a fallback may add a call or two beside it.
    invokes = lambda_client(None, None, concurrency=4, timeout_s=settings.request_timeout_s)
    prefix = os.environ.get("SLSERVE_PREFIX", "slserve")
    executors: dict[str, Executor] = {"aws": LambdaExecutor(invokes, prefix, concurrency=4)}
    secrets: list[RotatingSecret] = []
    if os.environ.get("SLSERVE_MODAL_URL"):  # GPU functions on Modal, behind the same keys, tiers and ledger
        from slserve.platform.modal import ModalExecutor

        url, secret = os.environ["SLSERVE_MODAL_URL"], modal_secret()
        secrets.append(secret)
        labels = settings.modal_prefix  # SLSERVE_MODAL_PREFIX: the Modal app's (`deploy modal --prefix`)
        executors["modal"] = ModalExecutor(url, secret, settings.request_timeout_s, labels, concurrency=4)
    platform = Targets(catalog, executors)
    dynamodb = _client("dynamodb")
    keys = DynamoKeyStore(dynamodb, os.environ["SLSERVE_KEYS_TABLE"], key_secret())
    ledger = DynamoLedger(
        dynamodb,
        os.environ["SLSERVE_LEDGER_TABLE"],
        os.environ["SLSERVE_RESPONSES_TABLE"],
        settings.idempotency_retention_s,
    )
    fleet = DynamoFleetState(dynamodb, ledger, os.environ["SLSERVE_QUOTAS_TABLE"])  # claims, quotas: one truth
    pipelines = ManifestPipelines(document)  # run here; their steps go to the functions' targets like requests
    app = build_app(platform, settings, keys=keys, ledger=ledger, pipelines=pipelines, fleet=fleet)
    return app, platform, secrets


def after_restore() -> None:
    """SnapStart restored this environment from a snapshot many environments share: fresh random state (canary
    draws, request ids), and secrets read again (one may have rotated since the snapshot)."""
    reseed()
    for secret in SECRETS:
        secret.expire()


# The init phase: one event loop for the environment's life (Mangum runs each invocation on it).
LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)
APP, PLATFORM, SECRETS = build()
LOOP.run_until_complete(PLATFORM.start())
handler = Mangum(APP, lifespan="off")

try:  # SnapStart's runtime hooks exist only in Lambda's managed Python runtimes
    from snapshot_restore_py import register_after_restore

    register_after_restore(after_restore)
except ImportError:
    pass
