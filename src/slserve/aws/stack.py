"""The AWS deployment as one CDK stack, synthesized from a `DeployPlan` (what `slserve deploy aws` packaged).

    HTTP API ──► router function (slserve's gateway) ──invoke alias `live`──► one Lambda per model function
                     │                                                     (zip + SnapStart, or an image, or
                     ├── DynamoDB: keys, ledger, responses                   provisioned concurrency)
                     └── Secrets Manager: the API keys' HMAC key
    S3: the artifacts, content-addressed (versioned, encrypted): the record of what was deployed; each model
        function carries its own artifact in its zip or image and reads nothing from S3

Least privilege: the router may invoke only slserve's aliases, read and write only its tables, read only its
secret; a model function is granted nothing beyond its logs and traces. Every cdk-nag finding left is acknowledged
here, next to the construct, with its reason.
"""

from __future__ import annotations

import os

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")  # read when aws_cdk starts node, below

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aws_cdk as cdk
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_wafv2 as wafv2
from aws_cdk.aws_apigatewayv2_integrations import HttpLambdaIntegration
from constructs import Construct, IConstruct

from slserve.aws.schema import TABLES, Table
from slserve.platform.aws import ALIAS, lambda_name
from slserve.spec import FunctionSpec

PYTHON = lambda_.Runtime.PYTHON_3_12  # the zip's compiled wheels are built for it (and SnapStart needs 3.12+)
ARCHITECTURE = lambda_.Architecture.X86_64  # the zips' wheels and the images are built for it
# API Gateway's integration timeout: an answer later than this never reaches the client (it gets the edge's 503
# or 504) although the router would bill it. Every deadline on AWS is taken from it.
EDGE_TIMEOUT_S = {"http": 30, "rest": 29}
EDGE_MARGIN_S = 2  # the router's work after the model's answer (the ledger write, the response) fits in it
NEW_ACCOUNT_MEMORY_MB = 3008  # what a new account's Lambda functions may have until a quota increase


def lambda_memory_mb(spec: FunctionSpec) -> int:
    """The function's Lambda memory: `resources.aws_memory_mb` where set, else `memory_mb`, in Lambda's range."""
    return max(128, min(10240, spec.resources.aws_memory_mb or spec.resources.memory_mb))


SNAPSTART_TMP_LIMIT_MB = 512
LOG_RETENTION = logs.RetentionDays.ONE_MONTH
Start = Literal["snapstart", "provisioned", "on-demand"]
BASIC_EXECUTION = "arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
XRAY = "X-Ray's PutTraceSegments and PutTelemetryRecords take no resource (Tracing.ACTIVE adds them)"


@dataclass(frozen=True)
class FunctionPlan:
    name: str
    spec: FunctionSpec
    digest: str
    package: Path  # the zip's contents, or a container image's build context
    image: bool  # torch functions ship as images; ONNX Runtime ones as zips
    ephemeral_mb: int = 512

    def start(self) -> tuple[Start, str]:
        """SnapStart where it applies, provisioned concurrency for functions kept warm, and why."""
        warm = self.spec.scaling.min_instances
        if warm >= 1:
            return "provisioned", (
                f"min_instances = {warm}: kept warm by provisioned concurrency (it excludes SnapStart on a version)"
            )
        if self.image:
            return "on-demand", "a container image: SnapStart takes managed runtimes only"
        if self.ephemeral_mb > SNAPSTART_TMP_LIMIT_MB:
            return (
                "on-demand",
                f"ephemeral storage of {self.ephemeral_mb} MB: SnapStart allows {SNAPSTART_TMP_LIMIT_MB}",
            )
        return "snapstart", f"a zip on {PYTHON.name}: the model is mapped and warmed before the snapshot"


@dataclass(frozen=True)
class DeployPlan:
    prefix: str
    functions: list[FunctionPlan]
    router_package: Path
    rate_per_s: int = 1000  # the API's default throttling (steady rate; burst is twice it)
    api: Literal["http", "rest"] = "http"  # rest: usage plans and a WAF in front, at REST API prices
    modal_url: str | None = None  # the modal target's endpoints (`slserve deploy modal` prints it), for GPU functions
    modal_prefix: str = "slserve"  # the Modal app's label prefix (`slserve deploy modal --prefix`)
    # The API keys' HMAC key of an earlier deployment (it outlives `cdk destroy`, as the tables do): reusing it keeps
    # the surviving key hashes readable. None: this stack makes one.
    key_secret_arn: str | None = None

    @property
    def deadline_s(self) -> int:
        """A request's deadline on AWS: the edge's own limit, less the router's work after the answer. The
        router stops waiting then (504, recorded unbilled), and a model function is stopped by Lambda then."""
        return EDGE_TIMEOUT_S[self.api] - EDGE_MARGIN_S


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))


class SlserveStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, plan: DeployPlan, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.plan = plan
        self.bucket = self._artifacts_bucket()
        self.tables = {t.name: self._table(t) for t in TABLES}
        self.secret = self._key_secret()
        self.alarms = self._alarm_topic()
        self.aliases = {f.name: self._model_function(f) for f in plan.functions}
        self.router = self._router()
        if plan.api == "rest":
            self._rest_api()
        else:
            self._http_api()

    # --- storage ---------------------------------------------------------------------------------------------

    def _key_secret(self) -> secretsmanager.ISecret:
        """The HMAC key of API key hashes: retained, as the tables are, and reusable by a later stack."""
        if self.plan.key_secret_arn:
            return secretsmanager.Secret.from_secret_complete_arn(self, "KeySecret", self.plan.key_secret_arn)
        secret = secretsmanager.Secret(
            self,
            "KeySecret",
            secret_name=f"{self.plan.prefix}-key-hmac",
            description="slserve: the HMAC key of API key hashes (kept after the stack: the keys table needs it)",
            generate_secret_string=secretsmanager.SecretStringGenerator(password_length=64, exclude_punctuation=True),
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        acknowledge(
            secret,
            "AwsSolutions-SMG4",
            "rotating the HMAC key would invalidate every API key at once; keys rotate one by one "
            "(`slserve keys rotate`)",
        )
        cdk.CfnOutput(self, "KeySecretArn", value=secret.secret_arn, description="reuse it: --key-secret-arn")
        return secret

    def _alarm_topic(self) -> sns.Topic:
        """Where every alarm goes: subscribe to it (email, chat, a pager) to hear of them."""
        key = kms.Key(self, "AlarmKey", enable_key_rotation=True, description="slserve: the alarm topic's key")
        key.grant_encrypt_decrypt(iam.ServicePrincipal("cloudwatch.amazonaws.com"))  # CloudWatch publishes to it
        topic = sns.Topic(self, "Alarms", topic_name=f"{self.plan.prefix}-alarms", master_key=key, enforce_ssl=True)
        cdk.CfnOutput(self, "AlarmTopic", value=topic.topic_arn, description="aws sns subscribe --topic-arn ...")
        return topic

    def _alarm(self, construct_id: str, metric: cloudwatch.IMetric, threshold: float, periods: int, why: str) -> None:
        alarm = cloudwatch.Alarm(
            self,
            construct_id,
            metric=metric,
            threshold=threshold,
            evaluation_periods=periods,
            alarm_description=why,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.alarms))

    def _artifacts_bucket(self) -> s3.Bucket:
        access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,  # log delivery by bucket policy, no ACLs
        )
        acknowledge(
            access_logs, "AwsSolutions-S1", "the access log bucket of the artifact bucket: logging it would recurse"
        )
        return s3.Bucket(
            self,
            "Artifacts",
            versioned=True,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="artifacts/",
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )

    def _table(self, table: Table) -> dynamodb.TableV2:
        indexes = [
            dynamodb.GlobalSecondaryIndexPropsV2(
                index_name=name,
                partition_key=dynamodb.Attribute(name=partition, type=dynamodb.AttributeType.STRING),
                sort_key=dynamodb.Attribute(name=sort, type=dynamodb.AttributeType.NUMBER),
            )
            for name, (partition, sort) in table.indexes.items()
        ]
        made = dynamodb.TableV2(
            self,
            f"Table-{table.name}",
            table_name=table.full_name(self.plan.prefix),
            partition_key=dynamodb.Attribute(name=table.partition, type=dynamodb.AttributeType.STRING),
            global_secondary_indexes=indexes or None,
            time_to_live_attribute=table.ttl,
            billing=dynamodb.Billing.on_demand(),
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        cfn = made.node.default_child
        assert isinstance(cfn, cdk.CfnResource)
        cfn.override_logical_id(f"{table.name.capitalize()}Table")  # named in the acknowledgments below
        return made

    # --- functions -------------------------------------------------------------------------------------------

    def _log_group(self, name: str) -> logs.LogGroup:
        return logs.LogGroup(self, f"Logs-{name}", retention=LOG_RETENTION, removal_policy=cdk.RemovalPolicy.DESTROY)

    def _model_function(self, f: FunctionPlan) -> lambda_.Alias:
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
            self,
            f"Fn-{f.name}",
            function_name=lambda_name(self.plan.prefix, f.name),
            runtime=runtime,
            handler=handler,
            code=code,
            memory_size=lambda_memory_mb(f.spec),
            architecture=ARCHITECTURE,
            timeout=cdk.Duration.seconds(self.plan.deadline_s),
            ephemeral_storage_size=cdk.Size.mebibytes(f.ephemeral_mb),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self._log_group(f.name),
            environment=environment,
            snap_start=lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS if start == "snapstart" else None,
            description=f"slserve function {f.name}: model {f.spec.model.name} version {f.spec.model.version}",
        )
        alias = lambda_.Alias(
            self,
            f"Live-{f.name}",
            alias_name=ALIAS,
            version=fn.current_version,
            provisioned_concurrent_executions=f.spec.scaling.min_instances if start == "provisioned" else None,
        )
        cfn = fn.node.default_child
        assert isinstance(cfn, cdk.CfnResource)
        cfn.add_metadata("slserve", {"function": f.name, "artifact": f.digest, "start": start, "why": why})
        self._alarms(f.name, alias)
        self._acknowledge_function(fn)
        return alias

    def _alarms(self, name: str, alias: lambda_.Alias) -> None:
        period = cdk.Duration.minutes(5)
        self._alarm(f"Errors-{name}", alias.metric_errors(period=period), 1, 1, f"slserve {name}: invocations failed")
        self._alarm(
            f"Throttles-{name}",
            alias.metric_throttles(period=period),
            1,
            1,
            f"slserve {name}: Lambda throttled calls (raise its concurrency, or shed load)",
        )
        cold = cloudwatch.Metric(
            namespace="slserve",
            metric_name="ColdStart",
            dimensions_map={"function_name": lambda_name(self.plan.prefix, name), "service": "slserve"},
            statistic="Sum",
            period=period,
        )
        rate = cloudwatch.MathExpression(
            expression="100 * cold / MAX([invocations, 1])",
            using_metrics={"cold": cold, "invocations": alias.metric_invocations(period=period)},
            period=period,
        )
        self._alarm(
            f"ColdStarts-{name}", rate, 20, 3, f"slserve {name}: more than 20% of calls waited for a cold start"
        )

    def _acknowledge_function(self, fn: lambda_.Function, wildcards: dict[str, str] | None = None) -> None:
        """The findings every function shares; `wildcards`: resource -> why its wildcard is needed."""
        wildcards = {"*": XRAY, **(wildcards or {})}
        assert fn.role is not None
        acknowledge(
            fn.role,
            f"AwsSolutions::AwsSolutions-IAM4[Policy::{BASIC_EXECUTION}]",
            "AWSLambdaBasicExecutionRole: writing the function's own log streams, no more",
        )
        policy = fn.role.node.try_find_child("DefaultPolicy")  # where X-Ray's (and the grants') statements are
        for resource in wildcards:
            acknowledge(
                policy or fn.role, f"AwsSolutions::AwsSolutions-IAM5[Resource::{resource}]", wildcards[resource]
            )
        acknowledge(fn, "AwsSolutions-L1", f"pinned to {PYTHON.name}: the zip's compiled wheels are built for it")
        acknowledge(fn, "Serverless-LambdaLatestVersion", f"pinned to {PYTHON.name}, as above")
        acknowledge(fn, "Serverless-LambdaDLQ", "invoked synchronously only: the caller gets every failure")
        acknowledge(fn, "Serverless-LambdaAsyncFailureDestination", "invoked synchronously only")

    def _router(self) -> lambda_.Alias:
        environment = {
            "SLSERVE_PREFIX": self.plan.prefix,
            "SLSERVE_MODAL_PREFIX": self.plan.modal_prefix,
            "SLSERVE_KEYS_TABLE": self.tables["keys"].table_name,
            "SLSERVE_LEDGER_TABLE": self.tables["ledger"].table_name,
            "SLSERVE_RESPONSES_TABLE": self.tables["responses"].table_name,
            "SLSERVE_QUOTAS_TABLE": self.tables["quotas"].table_name,
            "SLSERVE_KEY_SECRET_ARN": self.secret.secret_arn,
            "SLSERVE_REQUEST_TIMEOUT_S": str(self.plan.deadline_s),
            "POWERTOOLS_SERVICE_NAME": "slserve-router",
        }
        modal_secret = None
        if self.plan.modal_url:
            modal_secret = secretsmanager.Secret(
                self,
                "ModalEndpointSecret",
                description="slserve: the Bearer secret of the Modal endpoints (put the value `slserve deploy modal` "
                "printed: aws secretsmanager put-secret-value)",
            )
            acknowledge(
                modal_secret,
                "AwsSolutions-SMG4",
                "Modal makes the endpoints' secret (`slserve deploy modal`); rotating it is a redeploy of both sides",
            )
            environment["SLSERVE_MODAL_URL"] = self.plan.modal_url
            environment["SLSERVE_MODAL_SECRET_ARN"] = modal_secret.secret_arn
        fn = lambda_.Function(
            self,
            "Router",
            function_name=f"{self.plan.prefix}-router",
            runtime=PYTHON,
            handler="slserve.aws.gateway.handler",
            code=lambda_.Code.from_asset(str(self.plan.router_package)),
            memory_size=1024,
            architecture=ARCHITECTURE,
            timeout=cdk.Duration.seconds(EDGE_TIMEOUT_S[self.plan.api]),  # its deadline, then the ledger write
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self._log_group("router"),
            environment=environment,
            snap_start=lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS,
            description="slserve's gateway: keys, limits, routing, metering",
        )
        for table in self.tables.values():
            table.grant_read_write_data(fn)
        self.secret.grant_read(fn)
        if modal_secret is not None:
            modal_secret.grant_read(fn)
        for alias in self.aliases.values():
            alias.grant_invoke(fn)
        self._acknowledge_function(
            fn, {"<LedgerTable.Arn>/index/*": "the ledger's own two indexes (usage and quotas), no other table's"}
        )
        live = lambda_.Alias(self, "RouterLive", alias_name=ALIAS, version=fn.current_version)
        period = cdk.Duration.minutes(5)
        self._alarm("Errors-router", live.metric_errors(period=period), 1, 1, "slserve's router: invocations failed")
        self._alarm(
            "Throttles-router", live.metric_throttles(period=period), 1, 1, "slserve's router: Lambda throttled it"
        )
        return live

    def _http_api(self) -> apigw.HttpApi:
        api = apigw.HttpApi(
            self,
            "Api",
            api_name=f"{self.plan.prefix}-api",
            default_integration=HttpLambdaIntegration("RouterIntegration", self.router),
        )
        access = logs.LogGroup(self, "ApiAccessLogs", retention=LOG_RETENTION, removal_policy=cdk.RemovalPolicy.DESTROY)
        stage = api.default_stage
        assert stage is not None
        cfn_stage = stage.node.default_child
        assert isinstance(cfn_stage, apigw.CfnStage)
        cfn_stage.access_log_settings = apigw.CfnStage.AccessLogSettingsProperty(
            destination_arn=access.log_group_arn,
            format=(
                '{"requestId":"$context.requestId","ip":"$context.identity.sourceIp","time":"$context.requestTime",'
                '"method":"$context.httpMethod","path":"$context.path","status":"$context.status",'
                '"latency":"$context.responseLatency","integrationError":"$context.integrationErrorMessage"}'
            ),
        )
        cfn_stage.default_route_settings = apigw.CfnStage.RouteSettingsProperty(
            throttling_rate_limit=self.plan.rate_per_s, throttling_burst_limit=2 * self.plan.rate_per_s
        )
        acknowledge(api, "AwsSolutions-APIG4", "API keys are checked by slserve's router (keyed hashes in DynamoDB)")
        acknowledge(api, "AwsSolutions-COG4", "API keys are checked by slserve's router, not by Cognito")
        errors = api.metric_server_error(period=cdk.Duration.minutes(5), statistic="Sum")
        self._alarm("Api5xx", errors, 5, 1, "slserve's API answered 5xx (the edge's own, or the router's)")
        cdk.CfnOutput(self, "Url", value=api.url or "", description="the gateway: /v2/models/{model}/infer")
        cdk.CfnOutput(self, "ArtifactBucket", value=self.bucket.bucket_name, description="artifacts, by sha256")
        return api

    def _rest_api(self) -> apigateway.LambdaRestApi:
        """The REST API variant: API Gateway's own throttling per stage and per usage plan (per client key, where
        a team issues AWS API keys too), and a WAF web ACL with a rate rule per source address."""
        access = logs.LogGroup(self, "ApiAccessLogs", retention=LOG_RETENTION, removal_policy=cdk.RemovalPolicy.DESTROY)
        api = apigateway.LambdaRestApi(
            self,
            "RestApi",
            rest_api_name=f"{self.plan.prefix}-api",
            handler=self.router,
            proxy=True,
            binary_media_types=["*/*"],  # every body reaches the router as bytes: binary tensors unmangled
            cloud_watch_role=True,
            deploy_options=apigateway.StageOptions(
                stage_name="v1",
                throttling_rate_limit=self.plan.rate_per_s,
                throttling_burst_limit=2 * self.plan.rate_per_s,
                tracing_enabled=True,
                metrics_enabled=True,
                logging_level=apigateway.MethodLoggingLevel.ERROR,
                access_log_destination=apigateway.LogGroupLogDestination(access),
                access_log_format=apigateway.AccessLogFormat.json_with_standard_fields(
                    caller=False, http_method=True, ip=True, protocol=True, request_time=True,
                    resource_path=True, response_length=True, status=True, user=False,
                ),
            ),
        )  # fmt: skip
        api.add_usage_plan(
            "UsagePlan",
            name=f"{self.plan.prefix}-default",
            throttle=apigateway.ThrottleSettings(rate_limit=self.plan.rate_per_s, burst_limit=2 * self.plan.rate_per_s),
            api_stages=[apigateway.UsagePlanPerApiStage(api=api, stage=api.deployment_stage)],
        )
        acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=_visibility("slserve-api"),
            rules=[
                wafv2.CfnWebACL.RuleProperty(
                    name="rate-per-address",
                    priority=0,
                    action=wafv2.CfnWebACL.RuleActionProperty(block={}),
                    statement=wafv2.CfnWebACL.StatementProperty(
                        rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                            aggregate_key_type="IP", limit=60 * self.plan.rate_per_s, evaluation_window_sec=60
                        )
                    ),
                    visibility_config=_visibility("rate-per-address"),
                )
            ],
        )
        wafv2.CfnWebACLAssociation(
            self, "WebAclAssociation", resource_arn=api.deployment_stage.stage_arn, web_acl_arn=acl.attr_arn
        )
        errors = api.metric_server_error(period=cdk.Duration.minutes(5), statistic="Sum")
        self._alarm("Api5xx", errors, 5, 1, "slserve's API answered 5xx (the edge's own, or the router's)")
        acknowledge(api, "AwsSolutions-APIG2", "requests are validated by slserve's router against each signature")
        acknowledge(api, "AwsSolutions-APIG4", "API keys are checked by slserve's router (keyed hashes in DynamoDB)")
        acknowledge(api, "AwsSolutions-COG4", "API keys are checked by slserve's router, not by Cognito")
        role = api.node.try_find_child("CloudWatchRole")
        if role is not None:
            acknowledge(
                role,
                "AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AmazonAPIGatewayPushToCloudWatchLogs]",
                "API Gateway's account-level role for writing its own logs",
            )
        cdk.CfnOutput(self, "Url", value=api.url, description="the gateway: /v2/models/{model}/infer")
        cdk.CfnOutput(self, "ArtifactBucket", value=self.bucket.bucket_name, description="artifacts, by sha256")
        return api


def _visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
    return wafv2.CfnWebACL.VisibilityConfigProperty(
        cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=True
    )
