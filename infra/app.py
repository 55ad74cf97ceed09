"""The CDK app: `cd infra && npx cdk synth` (or `cdk deploy`), for teams that drive the CDK CLI themselves.

It takes the one path `slserve deploy aws` takes (`slserve.aws.deploy.prepare`): the same functions, routes,
pipelines and Modal placement, packaged the same way, then declares `SlserveStack` over them with cdk-nag's
AwsSolutions and Serverless checks. Settings come from CDK context, with the CLI's defaults:
`-c functions=... -c artifacts=... -c routes=... -c work=... -c only=a,b -c api=rest -c modal_url=...
-c prefix=slserve-staging -c modal_prefix=... -c key_secret_arn=...`.
"""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, ServerlessChecks

from slserve.aws.deploy import CDK_FLAGS, Stage, prepare
from slserve.aws.stack import SlserveStack
from slserve.settings import DEFAULT_ROUTES
from slserve.snapshot import ArtifactStore

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    app = cdk.App(context=CDK_FLAGS)
    context = app.node.try_get_context
    store = ArtifactStore(Path(context("artifacts") or REPO / ".slserve" / "artifacts"))
    only = context("only")
    api = "rest" if context("api") == "rest" else "http"
    deployment = prepare(
        store,
        Path(context("functions") or REPO / "functions"),
        Path(context("routes") or REPO / DEFAULT_ROUTES),
        Path(context("work") or REPO / ".slserve" / "aws"),
        print,
        only.split(",") if only else None,
        api,
        context("modal_url"),
        Stage(context("prefix") or "slserve", context("modal_prefix") or "slserve", context("key_secret_arn")),
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), ServerlessChecks(app))
    SlserveStack(app, deployment.plan.prefix, deployment.plan)
    app.synth()


if __name__ == "__main__":
    main()
