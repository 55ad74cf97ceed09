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
    peers = [modal]
    dynamodb = client(moto_endpoint, "dynamodb")
    tables = create_tables(dynamodb, "router")
    keys = DynamoKeyStore(dynamodb, tables["keys"], SECRET.encode())
    secrets = client(moto_endpoint, "secretsmanager")
    secret_arn = secrets.create_secret(Name="router-keys", SecretString=SECRET)["ARN"]
    modal_arn = secrets.create_secret(Name="router-modal", SecretString=MODAL_SECRET)["ARN"]
    model = start_environment(
        "slserve.aws.handler.handler",
        {"SLSERVE_FUNCTION": "remote-classifier", "SLSERVE_DIGEST": deployed["remote-classifier"].digest or ""},
        root / "model.log",
        sandbox=Sandbox.make(model_zip.directory, runtime, root / "model-sandbox"),
    )
    invoke = InvokeAPI({"slserve-remote-classifier": model}).start()
    router_env = {
        "SLSERVE_PREFIX": "slserve",
        "SLSERVE_KEYS_TABLE": tables["keys"],
        "SLSERVE_LEDGER_TABLE": tables["ledger"],
        "SLSERVE_RESPONSES_TABLE": tables["responses"],
        "SLSERVE_QUOTAS_TABLE": tables["quotas"],
        "SLSERVE_KEY_SECRET_ARN": secret_arn,  # read through Secrets Manager, as the stack configures it
        "SLSERVE_MODAL_URL": modal.url,
        "SLSERVE_MODAL_SECRET_ARN": modal_arn,
        "AWS_ENDPOINT_URL_LAMBDA": invoke.url,
        "AWS_ENDPOINT_URL_DYNAMODB": moto_endpoint,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    routers = [  # two environments of the router function, as Lambda runs many side by side
        start_environment(
            "slserve.aws.gateway.handler",
            router_env,
            root / f"router-{n}.log",
            sandbox=Sandbox.make(router_package.directory, runtime, root / f"router-sandbox-{n}"),
        )
        for n in range(2)
    ]
    router = routers[0]
    yield {
        "router": router,
        "routers": routers,
        "invoke": invoke,
        "keys": keys,
        "dynamodb": dynamodb,
        "tables": tables,
        "modal": peers,
        "modal_arn": modal_arn,
        "secrets": secrets,
        "root": root,
        "store": sample_store,
    }
    for environment in routers:
        environment.stop()
    invoke.stop()
    model.stop()
    peers.pop().stop()  # the Modal stand-in (a test may have redeployed it)


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


def _across(routers: list[Environment], requests: list[dict[str, Any]]) -> list[tuple[int, dict[str, str], Any]]:
    """The requests at once, alternating between the router environments (each serves one at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda i: reply(routers[i % len(routers)], requests[i]), range(len(requests))))


def _records(house: dict[str, Any], tenant: str) -> list[dict[str, Any]]:
    items = house["dynamodb"].scan(TableName=house["tables"]["ledger"])["Items"]
    return [r for r in items if r["tenant"]["S"] == tenant]


def test_racing_duplicates_across_two_router_environments_run_once_and_are_charged_once(house: dict[str, Any]) -> None:
    key = house["keys"].create(new_key("aws-idem"))
    headers = {"authorization": f"Bearer {key}", "idempotency-key": "order-aws-1"}
    calls = len(house["invoke"].calls)
    replies = _across(house["routers"], [event("/v2/models/remote-classifier/infer", body=BODY, headers=headers)] * 20)
    assert {status for status, _, _ in replies} == {200}, [doc for status, _, doc in replies if status != 200]
    assert len({headers["x-request-id"] for _, headers, _ in replies}) == 1  # one ran, the others replayed it
    assert sum(h.get("x-slserve-idempotent-replay") == "true" for _, h, _ in replies) == 19
    assert len(house["invoke"].calls) == calls + 1  # one model invoke
    assert [r["price"]["N"] != "0" for r in _records(house, "aws-idem")] == [True]  # one record, charged


def test_a_quota_of_n_admits_exactly_n_across_two_router_environments(house: dict[str, Any]) -> None:
    key = house["keys"].create(new_key("aws-quota", quota_per_month=3))
    request = event("/v2/models/remote-classifier/infer", body=BODY, headers={"x-api-key": key})
    statuses = sorted(status for status, _, _ in _across(house["routers"], [request] * 10))
    assert statuses == [200] * 3 + [429] * 7
    assert len([r for r in _records(house, "aws-quota") if r["price"]["N"] != "0"]) == 3


def test_a_rotated_modal_secret_takes_effect_without_a_new_router_version(house: dict[str, Any]) -> None:
    """The operator rotates the endpoints' secret (Secrets Manager, and the Modal endpoint redeployed with it):
    the router environments, which read the old value at init (as a SnapStart snapshot would hold it), read it
    again when the endpoint refuses the old one, and serve on."""
    key = house["keys"].create(new_key("rotate-co"))
    request = event("/v2/models/gpu-classifier/infer", body=BODY, headers={"authorization": f"Bearer {key}"})
    assert reply(house["router"], request)[0] == 200  # the old value, cached
    peers = house["modal"]
    old = peers.pop()
    port = int(old.url.rsplit(":", 1)[1])
    old.stop()
    house["secrets"].put_secret_value(SecretId=house["modal_arn"], SecretString="rotated modal secret")
    peers.append(
        start_peer(house["store"].root, "gpu-classifier", "rotated modal secret", house["root"] / "m2.log", port)
    )
    for environment in house["routers"]:
        status, headers, doc = reply(environment, request)
        assert status == 200 and headers["x-slserve-function"] == "gpu-classifier", doc
