"""`slserve deploy aws --dry-run` on a fresh functions folder: packages, a template that cdk-nag (AwsSolutions,
Serverless) and cfn-lint pass, and CDK assertions on what it deploys: memory, aliases, SnapStart or provisioned
concurrency (and why), least-privilege IAM, the stores' settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from tests.conftest import FUNCTIONS, write_function

from slserve.build.function import build_function
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function


@pytest.fixture(scope="module")
def deployed(build_sample, sample_store: ArtifactStore, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("deploy")
    functions = root / "functions"
    for name in ("classifier", "minilm-torch", "minilm-fp16"):
        write_function(functions, name, (FUNCTIONS / name / "function.toml").read_text())
    warm = (FUNCTIONS / "classifier" / "function.toml").read_text() + "\n[scaling]\nmin_instances = 1\n"
    write_function(functions, "warm-classifier", warm)
    for name in ("classifier", "minilm-torch", "minilm-fp16", "warm-classifier"):
        build_function(load_function(functions / name), sample_store)
    command = [sys.executable, "-c", "from slserve.cli import main; main()", "deploy", "aws", "--dry-run"]
    command += ["--functions", str(functions), "--artifacts", str(sample_store.root)]
    command += ["--out", str(root / "cdk.out"), "--work", str(root / "work"), "--routes", str(root / "routes.toml")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    template = json.loads((root / "cdk.out" / "slserve.template.json").read_text())
    return {"stdout": done.stdout, "template": template, "root": root, "artifacts": sample_store.root}


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_the_dry_run_is_clean_and_reports_sizes_and_costs(deployed: dict[str, Any]) -> None:
    out = deployed["stdout"]
    assert "cdk-nag AwsSolutions and Serverless checks: clean" in out and "cfn-lint: clean" in out
    assert "package classifier: zip, unzipped" in out and "package minilm-torch: image context" in out
    assert "minilm-fp16: names a GPU" in out  # left for Modal
    for line in out.splitlines():
        if line.startswith("package classifier: zip"):
            assert float(line.split()[-2]) < 250
    assert "AWS $/M requests" in out and "charged $/M" in out
    report = json.loads((deployed["root"] / "cdk.out" / "validation-report.json").read_text())
    assert all(not plugin.get("violations") for plugin in report.get("pluginReports", []))


def test_each_function_gets_its_memory_alias_and_start_strategy(deployed: dict[str, Any]) -> None:
    from aws_cdk.assertions import Match, Template

    template = Template.from_json(deployed["template"])
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {"FunctionName": "slserve-classifier", "MemorySize": 256, "SnapStart": {"ApplyOn": "PublishedVersions"}},
    )
    template.has_resource_properties(
        "AWS::Lambda::Function", {"FunctionName": "slserve-minilm-torch", "PackageType": "Image", "MemorySize": 1024}
    )
    template.has_resource_properties(
        "AWS::Lambda::Function", {"FunctionName": "slserve-warm-classifier", "SnapStart": Match.absent()}
    )
    template.has_resource_properties(
        "AWS::Lambda::Alias", {"Name": "live", "ProvisionedConcurrencyConfig": {"ProvisionedConcurrentExecutions": 1}}
    )
    functions = resources(deployed["template"], "AWS::Lambda::Function")
    starts = {
        f["Properties"]["FunctionName"]: f["Metadata"]["slserve"]["start"]
        for f in functions.values()
        if "slserve" in f.get("Metadata", {})
    }
    assert starts == {
        "slserve-classifier": "snapstart",
        "slserve-minilm-torch": "on-demand",
        "slserve-warm-classifier": "provisioned",
    }
    why = next(
        f["Metadata"]["slserve"]["why"]
        for f in functions.values()
        if f.get("Metadata", {}).get("slserve", {}).get("start") == "on-demand"
    )
    assert "container image" in why
    assert len(resources(deployed["template"], "AWS::Lambda::Alias")) == 4  # three model functions and the router


def test_iam_is_scoped_to_named_resources(deployed: dict[str, Any]) -> None:
    policies = resources(deployed["template"], "AWS::IAM::Policy")
    for logical, policy in policies.items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert all(a != "*" and not a.endswith(":*") for a in actions), (logical, actions)
            if statement["Resource"] == "*":  # only X-Ray's two actions take no resource
                assert set(actions) <= {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}, (logical, actions)
    router = next(p for k, p in policies.items() if k.startswith("RouterServiceRole"))
    invoke = [s for s in router["Properties"]["PolicyDocument"]["Statement"] if "lambda:InvokeFunction" in s["Action"]]
    aliases = {k for k, v in deployed["template"]["Resources"].items() if v["Type"] == "AWS::Lambda::Alias"}
    model_aliases = {k for k in aliases if not k.startswith("RouterLive")}
    assert len(model_aliases) == 3
    assert {s["Resource"]["Ref"] for s in invoke} == model_aliases  # each model function's alias, nothing else


def test_the_stores_keep_what_money_needs(deployed: dict[str, Any]) -> None:
    tables = resources(deployed["template"], "AWS::DynamoDB::GlobalTable")
    assert {t["Properties"]["TableName"] for t in tables.values()} == {
        "slserve-keys",
        "slserve-ledger",
        "slserve-responses",
        "slserve-quotas",
    }
    for table in tables.values():
        replica = table["Properties"]["Replicas"][0]
        assert replica["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    ledger = next(t for t in tables.values() if t["Properties"]["TableName"] == "slserve-ledger")
    assert {i["IndexName"] for i in ledger["Properties"]["GlobalSecondaryIndexes"]} == {"by_key", "by_tenant"}
    responses = next(t for t in tables.values() if t["Properties"]["TableName"] == "slserve-responses")
    assert responses["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    buckets = resources(deployed["template"], "AWS::S3::Bucket")
    artifacts = next(b for k, b in buckets.items() if k.startswith("Artifacts"))
    assert artifacts["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    assert artifacts["Properties"]["BucketEncryption"]


def test_the_rest_variant_and_the_modal_target_stay_clean(deployed: dict[str, Any], build_sample) -> None:  # type: ignore[no-untyped-def]
    from slserve.aws.deploy import lint, synthesize
    from slserve.aws.plan import DeployPlan, FunctionPlan

    root = deployed["root"]
    spec = load_function(root / "functions" / "classifier").spec
    classifier = FunctionPlan("classifier", spec, "0" * 64, root / "work" / "functions" / "classifier", False)
    modal_url = "https://acme--{label}.modal.run"
    plan = DeployPlan("slserve", [classifier], root / "work" / "router", api="rest", modal_url=modal_url)
    template_path = synthesize(plan, root / "cdk.out-rest")  # raises unless cdk-nag is clean
    assert lint(template_path) == []
    template = json.loads(template_path.read_text())
    assert resources(template, "AWS::WAFv2::WebACLAssociation") and resources(template, "AWS::ApiGateway::UsagePlan")
    (stage,) = resources(template, "AWS::ApiGateway::Stage").values()
    settings = stage["Properties"]["MethodSettings"][0]
    assert settings["ThrottlingRateLimit"] == 1000 and stage["Properties"]["TracingEnabled"] is True
    assert not resources(template, "AWS::ApiGatewayV2::Api")
    # GPU functions on Modal: the router knows where, and may read the endpoints' secret (and no other new one)
    router = next(f for f in resources(template, "AWS::Lambda::Function").values() if "router" in json.dumps(f))
    env = router["Properties"]["Environment"]["Variables"]
    assert env["SLSERVE_MODAL_URL"] == modal_url and "Ref" in env["SLSERVE_MODAL_SECRET_ARN"]
    secret_id = env["SLSERVE_MODAL_SECRET_ARN"]["Ref"]
    assert template["Resources"][secret_id]["Type"] == "AWS::SecretsManager::Secret"
    policies = resources(template, "AWS::IAM::Policy").values()
    statements = [s for p in policies for s in p["Properties"]["PolicyDocument"]["Statement"]]
    assert any(s["Resource"] == {"Ref": secret_id} for s in statements)
    # binary tensors reach the router as bytes; the WAF counts requests per minute, as its limit assumes
    (rest_api,) = resources(template, "AWS::ApiGateway::RestApi").values()
    assert rest_api["Properties"]["BinaryMediaTypes"] == ["*/*"]
    (acl,) = resources(template, "AWS::WAFv2::WebACL").values()
    rate = acl["Properties"]["Rules"][0]["Statement"]["RateBasedStatement"]
    assert rate["EvaluationWindowSec"] == 60 and rate["Limit"] == 60 * 1000
    assert env["SLSERVE_REQUEST_TIMEOUT_S"] == "27" and router["Properties"]["Timeout"] == 29  # REST's 29 s edge


def test_deadlines_come_from_the_edge_and_images_are_built_for_lambdas_platform(deployed: dict[str, Any]) -> None:
    """An answer after API Gateway's integration timeout (30 s on an HTTP API) never reaches the client: the
    router's deadline, the model functions' timeouts and the router's own all fit inside it, so nothing is billed
    that was not delivered."""
    functions = resources(deployed["template"], "AWS::Lambda::Function")
    router = next(f for f in functions.values() if f["Properties"].get("Handler") == "slserve.aws.gateway.handler")
    deadline = int(router["Properties"]["Environment"]["Variables"]["SLSERVE_REQUEST_TIMEOUT_S"])
    assert deadline == 28 and router["Properties"]["Timeout"] == 30
    models = [f for f in functions.values() if "slserve" in f.get("Metadata", {})]
    assert models and all(f["Properties"]["Timeout"] <= deadline for f in models)
    assert all(f["Properties"]["Architectures"] == ["x86_64"] for f in [router, *models])
    manifest = json.loads(next((deployed["root"] / "cdk.out").glob("*.assets.json")).read_text())
    images = manifest.get("dockerImages", {}).values()
    assert images and all(image["source"].get("platform") == "linux/amd64" for image in images)


def test_the_cdk_app_in_infra_deploys_what_the_cli_deploys(deployed: dict[str, Any]) -> None:
    """`cd infra && npx cdk synth` and `slserve deploy aws` take one path: the same resources, functions,
    settings and router catalog from the same functions folder, routes and artifacts."""
    root = deployed["root"]
    context = {
        "functions": str(root / "functions"),
        "artifacts": str(deployed["artifacts"]),
        "routes": str(root / "routes.toml"),
        "work": str(root / "work-infra"),
    }
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(root / "cdk.out-infra")}
    app = FUNCTIONS.parent / "infra" / "app.py"
    done = subprocess.run([sys.executable, str(app)], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    theirs = json.loads((root / "cdk.out-infra" / "slserve.template.json").read_text())
    ours = deployed["template"]
    kinds = {k: v["Type"] for k, v in ours["Resources"].items()}
    assert {k: v["Type"] for k, v in theirs["Resources"].items()} == kinds

    def settings(template: dict[str, Any]) -> dict[str, Any]:
        keep = ("FunctionName", "Handler", "MemorySize", "Timeout", "Environment", "SnapStart", "Architectures")
        return {
            k: {p: f["Properties"].get(p) for p in keep}
            for k, f in resources(template, "AWS::Lambda::Function").items()
        }

    assert settings(theirs) == settings(ours)
    catalogs = [json.loads((root / work / "catalog.json").read_text()) for work in ("work", "work-infra")]
    assert catalogs[0] == catalogs[1]


def test_alarms_reach_a_topic_and_watch_the_router_and_the_api(deployed: dict[str, Any]) -> None:
    template = deployed["template"]
    (topic_id,) = resources(template, "AWS::SNS::Topic")
    topic = template["Resources"][topic_id]["Properties"]
    assert (
        topic["TopicName"] == "slserve-alarms" and "KmsMasterKeyId" in topic
    )  # encrypted, with a key CloudWatch may use
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    assert alarms and all(a["Properties"]["AlarmActions"] == [{"Ref": topic_id}] for a in alarms.values())
    described = " ".join(a["Properties"]["AlarmDescription"] for a in alarms.values())
    assert "slserve's router: invocations failed" in described and "API answered 5xx" in described
    assert "AlarmTopic" in template["Outputs"]


def test_a_second_stage_has_names_of_its_own_and_the_key_secret_outlives_the_stack(deployed: dict[str, Any]) -> None:
    """Two stacks in one account and region (a stage per prefix); `cdk destroy` keeps the tables and the HMAC key
    they need, and a later stack reuses that key (--key-secret-arn) instead of making one that cannot read them."""
    from slserve.aws.deploy import lint, synthesize
    from slserve.aws.plan import DeployPlan, FunctionPlan

    root = deployed["root"]
    spec = load_function(root / "functions" / "classifier").spec
    classifier = FunctionPlan("classifier", spec, "0" * 64, root / "work" / "functions" / "classifier", False)
    staging = synthesize(DeployPlan("slserve-staging", [classifier], root / "work" / "router"), root / "cdk.out-stage")
    assert lint(staging) == []
    template = json.loads(staging.read_text())
    names = [t["Properties"]["TableName"] for t in resources(template, "AWS::DynamoDB::GlobalTable").values()]
    assert names and all(n.startswith("slserve-staging-") for n in names)
    functions = [f["Properties"]["FunctionName"] for f in resources(template, "AWS::Lambda::Function").values()]
    assert sorted(functions) == ["slserve-staging-classifier", "slserve-staging-router"]
    (secret,) = resources(template, "AWS::SecretsManager::Secret").values()
    assert secret["DeletionPolicy"] == "Retain" and secret["Properties"]["Name"] == "slserve-staging-key-hmac"

    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:slserve-staging-key-hmac-AbCdEf"
    again = DeployPlan("slserve-staging", [classifier], root / "work" / "router", key_secret_arn=arn)
    reused = json.loads(synthesize(again, root / "cdk.out-reuse").read_text())
    assert not resources(reused, "AWS::SecretsManager::Secret")
    router = next(f for f in resources(reused, "AWS::Lambda::Function").values() if "router" in json.dumps(f))
    assert router["Properties"]["Environment"]["Variables"]["SLSERVE_KEY_SECRET_ARN"] == arn
