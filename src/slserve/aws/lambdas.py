"""The Lambda functions: one per model function (its artifact in its zip or image, SnapStart or provisioned
concurrency as its plan says), and the router (slserve's gateway), with the least each needs: the router may
invoke only slserve's aliases, read and write only its tables, read only its secrets; a model function is
granted nothing beyond its logs and traces."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager

from slserve.aws.alarms import Alarms
from slserve.aws.nag import acknowledge, acknowledge_function
from slserve.aws.plan import ARCHITECTURE, EDGE_TIMEOUT_S, PYTHON, DeployPlan, FunctionPlan, lambda_memory_mb
from slserve.platform.aws import ALIAS, lambda_name

LOG_RETENTION = logs.RetentionDays.ONE_MONTH


def log_group(stack: cdk.Stack, name: str) -> logs.LogGroup:
    return logs.LogGroup(stack, f"Logs-{name}", retention=LOG_RETENTION, removal_policy=cdk.RemovalPolicy.DESTROY)


def model_function(stack: cdk.Stack, plan: DeployPlan, f: FunctionPlan, alarms: Alarms) -> lambda_.Alias:
    start, why = f.start()
    environment = {
        "SLSERVE_FUNCTION": f.name,
        "SLSERVE_DIGEST": f.digest,
        "POWERTOOLS_SERVICE_NAME": "slserve",
        "POWERTOOLS_METRICS_NAMESPACE": "slserve",
    }
    if f.image:  # built for Lambda's x86_64 whatever machine runs the deploy (an arm64 laptop builds arm64)
        code: lambda_.Code = lambda_.Code.from_asset_image(str(f.package), platform=ecr_assets.Platform.LINUX_AMD64)
        runtime, handler = lambda_.Runtime.FROM_IMAGE, lambda_.Handler.FROM_IMAGE
    else:
        code, runtime, handler = lambda_.Code.from_asset(str(f.package)), PYTHON, "slserve.aws.handler.handler"
    fn = lambda_.Function(
        stack,
        f"Fn-{f.name}",
        function_name=lambda_name(plan.prefix, f.name),
        runtime=runtime,
        handler=handler,
        code=code,
        memory_size=lambda_memory_mb(f.spec),
        architecture=ARCHITECTURE,
        timeout=cdk.Duration.seconds(plan.deadline_s),
        ephemeral_storage_size=cdk.Size.mebibytes(f.ephemeral_mb),
        tracing=lambda_.Tracing.ACTIVE,
        log_group=log_group(stack, f.name),
        environment=environment,
        snap_start=lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS if start == "snapstart" else None,
        description=f"slserve function {f.name}: model {f.spec.model.name} version {f.spec.model.version}",
    )
    alias = lambda_.Alias(
        stack,
        f"Live-{f.name}",
        alias_name=ALIAS,
        version=fn.current_version,
        provisioned_concurrent_executions=f.spec.scaling.min_instances if start == "provisioned" else None,
    )
    cfn = fn.node.default_child
    assert isinstance(cfn, cdk.CfnResource)
    cfn.add_metadata("slserve", {"function": f.name, "artifact": f.digest, "start": start, "why": why})
    alarms.for_function(f.name, alias)
    acknowledge_function(fn)
    return alias


def router_function(
    stack: cdk.Stack,
    plan: DeployPlan,
    tables: dict[str, dynamodb.TableV2],
    secret: secretsmanager.ISecret,
    aliases: dict[str, lambda_.Alias],
    alarms: Alarms,
) -> lambda_.Alias:
    environment = {
        "SLSERVE_PREFIX": plan.prefix,
        "SLSERVE_MODAL_PREFIX": plan.modal_prefix,
        "SLSERVE_KEYS_TABLE": tables["keys"].table_name,
        "SLSERVE_LEDGER_TABLE": tables["ledger"].table_name,
        "SLSERVE_RESPONSES_TABLE": tables["responses"].table_name,
        "SLSERVE_QUOTAS_TABLE": tables["quotas"].table_name,
        "SLSERVE_KEY_SECRET_ARN": secret.secret_arn,
        "SLSERVE_REQUEST_TIMEOUT_S": str(plan.deadline_s),
        "POWERTOOLS_SERVICE_NAME": "slserve-router",
    }
    modal_secret = None
    if plan.modal_url:
        modal_secret = secretsmanager.Secret(
            stack,
            "ModalEndpointSecret",
            description="slserve: the Bearer secret of the Modal endpoints (put the value `slserve deploy modal` "
            "printed: aws secretsmanager put-secret-value)",
        )
        acknowledge(
            modal_secret,
            "AwsSolutions-SMG4",
            "Modal makes the endpoints' secret (`slserve deploy modal`); rotating it is a redeploy of both sides",
        )
        environment["SLSERVE_MODAL_URL"] = plan.modal_url
        environment["SLSERVE_MODAL_SECRET_ARN"] = modal_secret.secret_arn
    fn = lambda_.Function(
        stack,
        "Router",
        function_name=f"{plan.prefix}-router",
        runtime=PYTHON,
        handler="slserve.aws.gateway.handler",
        code=lambda_.Code.from_asset(str(plan.router_package)),
        memory_size=1024,
        architecture=ARCHITECTURE,
        timeout=cdk.Duration.seconds(EDGE_TIMEOUT_S[plan.api]),  # its deadline, then the ledger write
        tracing=lambda_.Tracing.ACTIVE,
        log_group=log_group(stack, "router"),
        environment=environment,
        snap_start=lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS,
        description="slserve's gateway: keys, limits, routing, metering",
    )
    for table in tables.values():
        table.grant_read_write_data(fn)
    secret.grant_read(fn)
    if modal_secret is not None:
        modal_secret.grant_read(fn)
    for alias in aliases.values():
        alias.grant_invoke(fn)
    acknowledge_function(
        fn, {"<LedgerTable.Arn>/index/*": "the ledger's own two indexes (usage and quotas), no other table's"}
    )
    live = lambda_.Alias(stack, "RouterLive", alias_name=ALIAS, version=fn.current_version)
    period = cdk.Duration.minutes(5)
    alarms.add("Errors-router", live.metric_errors(period=period), 1, 1, "slserve's router: invocations failed")
    alarms.add("Throttles-router", live.metric_throttles(period=period), 1, 1, "slserve's router: Lambda throttled it")
    return live
