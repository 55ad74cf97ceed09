"""The API in front of the router: an HTTP API (the default), or a REST API with usage plans and a WAF web ACL;
both throttled at the plan's rate, their access logged, their 5xx alarmed."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_wafv2 as wafv2
from aws_cdk.aws_apigatewayv2_integrations import HttpLambdaIntegration

from slserve.aws.alarms import Alarms
from slserve.aws.lambdas import LOG_RETENTION
from slserve.aws.nag import acknowledge
from slserve.aws.plan import DeployPlan


def http_api(
    stack: cdk.Stack, plan: DeployPlan, router: lambda_.Alias, bucket: s3.Bucket, alarms: Alarms
) -> apigw.HttpApi:
    api = apigw.HttpApi(
        stack,
        "Api",
        api_name=f"{plan.prefix}-api",
        default_integration=HttpLambdaIntegration("RouterIntegration", router),
    )
    access = logs.LogGroup(stack, "ApiAccessLogs", retention=LOG_RETENTION, removal_policy=cdk.RemovalPolicy.DESTROY)
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
        throttling_rate_limit=plan.rate_per_s, throttling_burst_limit=2 * plan.rate_per_s
    )
    acknowledge(api, "AwsSolutions-APIG4", "API keys are checked by slserve's router (keyed hashes in DynamoDB)")
    acknowledge(api, "AwsSolutions-COG4", "API keys are checked by slserve's router, not by Cognito")
    errors = api.metric_server_error(period=cdk.Duration.minutes(5), statistic="Sum")
    alarms.add("Api5xx", errors, 5, 1, "slserve's API answered 5xx (the edge's own, or the router's)")
    cdk.CfnOutput(stack, "Url", value=api.url or "", description="the gateway: /v2/models/{model}/infer")
    cdk.CfnOutput(stack, "ArtifactBucket", value=bucket.bucket_name, description="artifacts, by sha256")
    return api


def rest_api(
    stack: cdk.Stack, plan: DeployPlan, router: lambda_.Alias, bucket: s3.Bucket, alarms: Alarms
) -> apigateway.LambdaRestApi:
    """The REST API variant: API Gateway's own throttling per stage and per usage plan (per client key, where
    a team issues AWS API keys too), and a WAF web ACL with a rate rule per source address."""
    access = logs.LogGroup(stack, "ApiAccessLogs", retention=LOG_RETENTION, removal_policy=cdk.RemovalPolicy.DESTROY)
    api = apigateway.LambdaRestApi(
        stack,
        "RestApi",
        rest_api_name=f"{plan.prefix}-api",
        handler=router,
        proxy=True,
        binary_media_types=["*/*"],  # every body reaches the router as bytes: binary tensors unmangled
        cloud_watch_role=True,
        deploy_options=apigateway.StageOptions(
            stage_name="v1",
            throttling_rate_limit=plan.rate_per_s,
            throttling_burst_limit=2 * plan.rate_per_s,
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
        name=f"{plan.prefix}-default",
        throttle=apigateway.ThrottleSettings(rate_limit=plan.rate_per_s, burst_limit=2 * plan.rate_per_s),
        api_stages=[apigateway.UsagePlanPerApiStage(api=api, stage=api.deployment_stage)],
    )
    acl = wafv2.CfnWebACL(
        stack,
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
                        aggregate_key_type="IP", limit=60 * plan.rate_per_s, evaluation_window_sec=60
                    )
                ),
                visibility_config=_visibility("rate-per-address"),
            )
        ],
    )
    wafv2.CfnWebACLAssociation(
        stack, "WebAclAssociation", resource_arn=api.deployment_stage.stage_arn, web_acl_arn=acl.attr_arn
    )
    errors = api.metric_server_error(period=cdk.Duration.minutes(5), statistic="Sum")
    alarms.add("Api5xx", errors, 5, 1, "slserve's API answered 5xx (the edge's own, or the router's)")
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
    cdk.CfnOutput(stack, "Url", value=api.url, description="the gateway: /v2/models/{model}/infer")
    cdk.CfnOutput(stack, "ArtifactBucket", value=bucket.bucket_name, description="artifacts, by sha256")
    return api


def _visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
    return wafv2.CfnWebACL.VisibilityConfigProperty(
        cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=True
    )
