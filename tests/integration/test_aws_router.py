"""The front on AWS, end to end, from the packages `slserve deploy aws` writes: an API Gateway HTTP API event ->
the router's zip (slserve's gateway under the runtime client, in Lambda's sandbox: a clean CPython 3.12 with
only the zip and Lambda's runtime folder, read-only; DynamoDB and Secrets Manager in moto's server) -> the model
function's zip by Lambda invoke (the Invoke API peer, in a sandbox of its own) -> the answer, with keys, tiers
and the ledger."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import BOTH_TIERS, FUNCTIONS, write_function
from tests.integration.aws import client
from tests.integration.lambda_peer import Environment, InvokeAPI, start_environment
from tests.integration.lambda_sandbox import Sandbox, lambda_runtime
from tests.integration.modal_peer import start_peer

from slserve.accounts.dynamo import DynamoKeyStore
from slserve.accounts.keys import new_key
from slserve.aws.deploy import deployable_pipelines, router_catalog
from slserve.aws.package import function_zip, router_zip
from slserve.aws.schema import create_tables
from slserve.build.function import build_function
from slserve.compose.catalog import PipelineCatalog, build_pipeline
from slserve.compose.spec import load_pipeline
from slserve.platform.catalog import FolderCatalog
from slserve.snapshot import ArtifactStore
from slserve.spec import discover_functions, load_function

EVENTS = Path(__file__).resolve().parents[1] / "events"
SECRET = "router test secret"
MODAL_SECRET = "modal endpoint secret"
BODY = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]}


def event(path: str, method: str = "POST", body: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    doc = json.loads((EVENTS / "apigw_http_v2_infer.json").read_text())
    doc["rawPath"] = doc["requestContext"]["http"]["path"] = path
    doc["requestContext"]["http"]["method"] = method
    doc["routeKey"] = "$default"
    doc["headers"] = {"content-type": "application/json", **(headers or {})}
    doc["body"] = json.dumps(body) if body is not None else None
    doc.pop("pathParameters", None)
    return doc


def reply(environment: Environment, request: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    outcome = environment.api.invoke(request)
    assert outcome.ok, outcome.body
    body = outcome.body.get("body") or ""
    raw = base64.b64decode(body) if outcome.body.get("isBase64Encoded") else body.encode()
    return outcome.body["statusCode"], outcome.body.get("headers", {}), json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def house(
    build_sample,
    sample_store: ArtifactStore,
    moto_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("aws-router")
    functions = root / "functions"
    classifier = (FUNCTIONS / "classifier" / "function.toml").read_text()
    write_function(functions, "remote-classifier", classifier)  # its target as shipped: `deploy aws` places it
    write_function(functions, "gpu-classifier", classifier.replace('tier = "economy"', 'tier = "premium"'))
    for name in ("remote-classifier", "gpu-classifier"):
        build_function(load_function(functions / name), sample_store)
    (functions / "both-tiers").mkdir()
    (functions / "both-tiers" / "pipeline.toml").write_text(BOTH_TIERS)
    build_pipeline(load_pipeline(functions / "both-tiers"), discover_functions(functions), sample_store)
    deployed = FolderCatalog(sample_store, functions).functions()
    on_lambda, on_modal = [deployed["remote-classifier"]], [deployed["gpu-classifier"]]
    pipelines = deployable_pipelines(PipelineCatalog(sample_store, functions), on_lambda + on_modal, print)
    catalog = router_catalog(root / "catalog.json", on_lambda, on_modal, pipelines)
    runtime = lambda_runtime(root / "lambda-runtime")
    model_zip = function_zip(sample_store, deployed["remote-classifier"], root / "model-zip")
    router_package = router_zip(root / "router-zip", catalog, root / "routes.toml")
    modal = start_peer(sample_store.root, "gpu-classifier", MODAL_SECRET, root / "modal.log")
    dynamodb = client(moto_endpoint, "dynamodb")
    tables = create_tables(dynamodb, "router")
    keys = DynamoKeyStore(dynamodb, tables["keys"], SECRET.encode())
    secret_arn = client(moto_endpoint, "secretsmanager").create_secret(Name="router-keys", SecretString=SECRET)["ARN"]
    model = start_environment(
        "slserve.aws.handler.handler",
        {"SLSERVE_FUNCTION": "remote-classifier", "SLSERVE_DIGEST": deployed["remote-classifier"].digest or ""},
        root / "model.log",
        sandbox=Sandbox.make(model_zip.directory, runtime, root / "model-sandbox"),
    )
    invoke = InvokeAPI({"slserve-remote-classifier": model}).start()
    router = start_environment(
        "slserve.aws.router.handler",
        {
            "SLSERVE_PREFIX": "slserve",
            "SLSERVE_KEYS_TABLE": tables["keys"],
            "SLSERVE_LEDGER_TABLE": tables["ledger"],
            "SLSERVE_RESPONSES_TABLE": tables["responses"],
            "SLSERVE_KEY_SECRET_ARN": secret_arn,  # read through Secrets Manager, as the stack configures it
            "SLSERVE_MODAL_URL": modal.url,
            "SLSERVE_MODAL_SECRET": MODAL_SECRET,
            "AWS_ENDPOINT_URL_LAMBDA": invoke.url,
            "AWS_ENDPOINT_URL_DYNAMODB": moto_endpoint,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
        root / "router.log",
        sandbox=Sandbox.make(router_package.directory, runtime, root / "router-sandbox"),
    )
    yield {"router": router, "invoke": invoke, "keys": keys, "dynamodb": dynamodb, "tables": tables}
    router.stop()
    invoke.stop()
    model.stop()
    modal.proc.terminate()
    modal.proc.wait(10)


def test_an_http_api_event_is_served_billed_and_recorded(house: dict[str, Any]) -> None:
    key = house["keys"].create(new_key("acme"))
    auth = {"authorization": f"Bearer {key}"}
    status, headers, doc = reply(house["router"], event("/v2/models/remote-classifier/infer", body=BODY, headers=auth))
    assert status == 200 and doc["model_name"] == "remote-classifier", doc
    assert headers["x-slserve-function"] == "remote-classifier" and int(headers["x-slserve-cost"]) > 0
    records = house["dynamodb"].scan(TableName=house["tables"]["ledger"])["Items"]
    mine = [r for r in records if r["request_id"]["S"] == headers["x-request-id"]]
    assert len(mine) == 1 and mine[0]["price"]["N"] == headers["x-slserve-cost"] and mine[0]["tenant"]["S"] == "acme"
    status, _, usage = reply(house["router"], event("/v1/usage", method="GET", headers=auth))
    assert status == 200 and usage["total"]["requests"] == 1


def test_a_gpu_function_on_the_modal_target_is_served_through_the_router(house: dict[str, Any]) -> None:
    key = house["keys"].create(new_key("acme"))
    request = event("/v2/models/gpu-classifier/infer", body=BODY, headers={"authorization": f"Bearer {key}"})
    status, headers, doc = reply(house["router"], request)
    assert status == 200 and headers["x-slserve-function"] == "gpu-classifier", doc
    assert headers["x-slserve-tier"] == "premium" and "x-slserve-cold-start-ms" in headers
    records = house["dynamodb"].scan(TableName=house["tables"]["ledger"])["Items"]
    mine = [r for r in records if r["request_id"]["S"] == headers["x-request-id"]]
    assert len(mine) == 1 and mine[0]["function"]["S"] == "gpu-classifier"
    assert mine[0]["price"]["N"] == headers["x-slserve-cost"]


def test_keys_and_bad_input_are_refused_before_any_model_function(house: dict[str, Any]) -> None:
    calls = len(house["invoke"].calls)
    status, _, doc = reply(house["router"], event("/v2/models/remote-classifier/infer", body=BODY))
    assert status == 401 and "API key" in doc["error"]
    key = house["keys"].create(new_key("acme", models=("other",)))
    status, _, doc = reply(
        house["router"], event("/v2/models/remote-classifier/infer", body=BODY, headers={"x-api-key": key})
    )
    assert status == 403
    good = house["keys"].create(new_key("acme"))
    bad = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2]}]}
    status, _, doc = reply(
        house["router"], event("/v2/models/remote-classifier/infer", body=bad, headers={"x-api-key": good})
    )
    assert status == 400
    assert len(house["invoke"].calls) == calls  # none of them reached a model function


def test_slserve_keys_manages_the_deployed_key_store(house: dict[str, Any], moto_endpoint: str) -> None:
    import subprocess
    import sys

    env = {
        **os.environ,
        "SLSERVE_KEYS_TABLE": house["tables"]["keys"],
        "SLSERVE_KEY_SECRET": SECRET,
        "AWS_ENDPOINT_URL_DYNAMODB": moto_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "COLUMNS": "200",
    }
    cli = [sys.executable, "-c", "from slserve.cli import main; main()", "keys"]
    made = subprocess.run([*cli, "create", "--tenant", "cli-co"], capture_output=True, text=True, env=env, timeout=60)
    assert made.returncode == 0, made.stderr
    key = next(word for word in made.stdout.split() if word.startswith("sls_"))
    status, _, doc = reply(
        house["router"], event("/v2/models/remote-classifier/infer", body=BODY, headers={"x-api-key": key})
    )
    assert status == 200, doc
    listed = subprocess.run([*cli, "list", "--tenant", "cli-co"], capture_output=True, text=True, env=env, timeout=60)
    assert key.split("_")[1] in listed.stdout


def test_the_router_runs_a_pipeline_over_lambda_and_modal(house: dict[str, Any]) -> None:
    """`slserve deploy aws` places pipelines in the router's catalog: the router runs the graph, its steps go to
    the functions' own targets (here one step on Lambda, one on Modal), and DynamoDB's record itemizes them."""
    key = house["keys"].create(new_key("acme"))
    request = event("/v2/models/both-tiers/infer", body=BODY, headers={"authorization": f"Bearer {key}"})
    status, headers, doc = reply(house["router"], request)
    assert status == 200, doc
    steps = {s["name"]: s for s in doc["parameters"]["steps"]}
    assert (steps["here"]["function"], steps["there"]["function"]) == ("remote-classifier", "gpu-classifier")
    both = doc["outputs"][0]["data"]
    assert both[:3] == both[3:]  # the same model on Lambda and on Modal
    records = house["dynamodb"].scan(TableName=house["tables"]["ledger"])["Items"]
    mine = [r for r in records if r["request_id"]["S"] == headers["x-request-id"]]
    assert len(mine) == 1 and mine[0]["model"]["S"] == "both-tiers"
    assert int(mine[0]["price"]["N"]) == steps["here"]["cost"] + steps["there"]["cost"] > 0
    assert "steps" in mine[0]
