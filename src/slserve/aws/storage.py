"""What the deployment keeps: the artifact bucket (versioned, encrypted, its access logged), the DynamoDB tables
(`schema.TABLES`) and the API keys' HMAC key, each retained when the stack is destroyed."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager

from slserve.aws.nag import acknowledge
from slserve.aws.plan import DeployPlan
from slserve.aws.schema import Table


def key_secret(stack: cdk.Stack, plan: DeployPlan) -> secretsmanager.ISecret:
    """The HMAC key of API key hashes: retained, as the tables are, and reusable by a later stack."""
    if plan.key_secret_arn:
        return secretsmanager.Secret.from_secret_complete_arn(stack, "KeySecret", plan.key_secret_arn)
    secret = secretsmanager.Secret(
        stack,
        "KeySecret",
        secret_name=f"{plan.prefix}-key-hmac",
        description="slserve: the HMAC key of API key hashes (kept after the stack: the keys table needs it)",
        generate_secret_string=secretsmanager.SecretStringGenerator(password_length=64, exclude_punctuation=True),
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )
    acknowledge(
        secret,
        "AwsSolutions-SMG4",
        "rotating the HMAC key would invalidate every API key at once; keys rotate one by one (`slserve keys rotate`)",
    )
    cdk.CfnOutput(stack, "KeySecretArn", value=secret.secret_arn, description="reuse it: --key-secret-arn")
    return secret


def artifacts_bucket(stack: cdk.Stack) -> s3.Bucket:
    access_logs = s3.Bucket(
        stack,
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
        stack,
        "Artifacts",
        versioned=True,
        encryption=s3.BucketEncryption.S3_MANAGED,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        server_access_logs_bucket=access_logs,
        server_access_logs_prefix="artifacts/",
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )


def table(stack: cdk.Stack, plan: DeployPlan, table: Table) -> dynamodb.TableV2:
    indexes = [
        dynamodb.GlobalSecondaryIndexPropsV2(
            index_name=name,
            partition_key=dynamodb.Attribute(name=partition, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=sort, type=dynamodb.AttributeType.NUMBER),
        )
        for name, (partition, sort) in table.indexes.items()
    ]
    made = dynamodb.TableV2(
        stack,
        f"Table-{table.name}",
        table_name=table.full_name(plan.prefix),
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
