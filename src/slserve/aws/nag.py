"""cdk-nag's findings that stand, acknowledged next to the construct with the reason."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_
from constructs import IConstruct

from slserve.aws.plan import PYTHON

BASIC_EXECUTION = "arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
XRAY = "X-Ray's PutTraceSegments and PutTelemetryRecords take no resource (Tracing.ACTIVE adds them)"


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))


def acknowledge_function(fn: lambda_.Function, wildcards: dict[str, str] | None = None) -> None:
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
        acknowledge(policy or fn.role, f"AwsSolutions::AwsSolutions-IAM5[Resource::{resource}]", wildcards[resource])
    acknowledge(fn, "AwsSolutions-L1", f"pinned to {PYTHON.name}: the zip's compiled wheels are built for it")
    acknowledge(fn, "Serverless-LambdaLatestVersion", f"pinned to {PYTHON.name}, as above")
    acknowledge(fn, "Serverless-LambdaDLQ", "invoked synchronously only: the caller gets every failure")
    acknowledge(fn, "Serverless-LambdaAsyncFailureDestination", "invoked synchronously only")
