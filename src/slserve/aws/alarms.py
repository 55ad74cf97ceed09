"""Where every alarm goes (an SNS topic, encrypted: subscribe to it to hear of them) and the alarms themselves."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns

from slserve.aws.plan import DeployPlan
from slserve.platform.aws import lambda_name


class Alarms:
    def __init__(self, stack: cdk.Stack, plan: DeployPlan) -> None:
        self.stack, self.plan = stack, plan
        key = kms.Key(stack, "AlarmKey", enable_key_rotation=True, description="slserve: the alarm topic's key")
        key.grant_encrypt_decrypt(iam.ServicePrincipal("cloudwatch.amazonaws.com"))  # CloudWatch publishes to it
        self.topic = sns.Topic(stack, "Alarms", topic_name=f"{plan.prefix}-alarms", master_key=key, enforce_ssl=True)
        cdk.CfnOutput(stack, "AlarmTopic", value=self.topic.topic_arn, description="aws sns subscribe --topic-arn ...")

    def add(self, construct_id: str, metric: cloudwatch.IMetric, threshold: float, periods: int, why: str) -> None:
        alarm = cloudwatch.Alarm(
            self.stack,
            construct_id,
            metric=metric,
            threshold=threshold,
            evaluation_periods=periods,
            alarm_description=why,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.topic))

    def for_function(self, name: str, alias: lambda_.Alias) -> None:
        period = cdk.Duration.minutes(5)
        self.add(f"Errors-{name}", alias.metric_errors(period=period), 1, 1, f"slserve {name}: invocations failed")
        self.add(
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
        self.add(f"ColdStarts-{name}", rate, 20, 3, f"slserve {name}: more than 20% of calls waited for a cold start")
