"""The front on AWS: `slserve.aws.router.handler`, behind API Gateway.

It runs slserve's own gateway (the same `Front`: API keys, limits, routing by version and tier, idempotency,
metering, the v2 and OpenAI protocols), with another transport (Mangum turns the HTTP API's events into ASGI)
and other stores (DynamoDB), and sends each call to its model function by Lambda invoke (`LambdaExecutor`).
Everything is built in the init phase; an invocation only serves.

Configuration, from the environment (the CDK app sets it):
    SLSERVE_CATALOG           the deployed functions (catalog.json, written by `slserve deploy aws`)
    SLSERVE_ROUTES            routes.toml in the package
    SLSERVE_PREFIX            Lambda functions are named PREFIX-FUNCTION
    SLSERVE_KEYS_TABLE, SLSERVE_LEDGER_TABLE, SLSERVE_RESPONSES_TABLE
    SLSERVE_KEY_SECRET_ARN    the HMAC key of API keys, in Secrets Manager (or SLSERVE_KEY_SECRET itself, for tests)
Other endpoints (tests, local peers) come from boto3's own AWS_ENDPOINT_URL_<SERVICE> variables.

Limits per key (rate, concurrency) are counted per router environment: Lambda runs many side by side. Monthly
quotas are counted from the ledger, which all share. For throttling across environments, use the REST API
variant's usage plans (README, "AWS").
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
from slserve.platform.aws import LambdaExecutor, lambda_client
from slserve.platform.base import Executor
from slserve.platform.catalog import ManifestCatalog
from slserve.platform.targets import Targets
from slserve.settings import ServeSettings

TASK_ROOT = Path(os.environ.get("LAMBDA_TASK_ROOT", "."))


def _client(service: str) -> Any:
    return boto3.client(service)


def modal_secret() -> str:
    """The Modal endpoints' secret: the Secrets Manager secret SLSERVE_MODAL_SECRET_ARN names (the stack makes it;
    `slserve deploy modal` prints the value to put there), or SLSERVE_MODAL_SECRET (tests, local peers)."""
    arn = os.environ.get("SLSERVE_MODAL_SECRET_ARN")
    if arn:
        value: str = _client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
        return value
    return os.environ["SLSERVE_MODAL_SECRET"]


def build() -> tuple[Front, Targets]:
    document = Path(os.environ.get("SLSERVE_CATALOG", TASK_ROOT / "catalog.json"))
    catalog = ManifestCatalog(document)
    settings = ServeSettings(routes=Path(os.environ.get("SLSERVE_ROUTES", TASK_ROOT / "routes.toml")))
    # One invocation at a time per environment; a shadow or a fallback may add a call or two beside it.
    invokes = lambda_client(None, None, concurrency=4, timeout_s=settings.request_timeout_s)
    prefix = os.environ.get("SLSERVE_PREFIX", "slserve")
    executors: dict[str, Executor] = {"aws": LambdaExecutor(invokes, prefix, concurrency=4)}
    if os.environ.get("SLSERVE_MODAL_URL"):  # GPU functions on Modal, behind the same keys, tiers and ledger
        from slserve.platform.modal import ModalExecutor

        url, secret = os.environ["SLSERVE_MODAL_URL"], modal_secret()
        executors["modal"] = ModalExecutor(url, secret, settings.request_timeout_s, prefix, concurrency=4)
    platform = Targets(catalog, executors)
    dynamodb = _client("dynamodb")
    keys = DynamoKeyStore(dynamodb, os.environ["SLSERVE_KEYS_TABLE"], key_secret())
    ledger = DynamoLedger(
        dynamodb,
        os.environ["SLSERVE_LEDGER_TABLE"],
        os.environ["SLSERVE_RESPONSES_TABLE"],
        settings.idempotency_retention_s,
    )
    pipelines = ManifestPipelines(document)  # run here; their steps go to the functions' targets like requests
    return build_app(platform, settings, keys=keys, ledger=ledger, pipelines=pipelines), platform


# The init phase: one event loop for the environment's life (Mangum runs each invocation on it).
LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)
APP, PLATFORM = build()
LOOP.run_until_complete(PLATFORM.start())
handler = Mangum(APP, lifespan="off")
