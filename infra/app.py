"""The CDK app: `cd infra && npx cdk synth` (or `cdk deploy`), for teams that drive the CDK CLI themselves.

It does what `slserve deploy aws` does before it synthesizes: packages every built CPU function of ../functions
(zips for ONNX Runtime, image contexts for torch) and the router, then declares `SlserveStack` over them, with
cdk-nag's AwsSolutions and Serverless checks. Settings come from CDK context (`-c functions=...` and so on).
"""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, ServerlessChecks

from slserve.aws.deploy import CDK_FLAGS, deployable, packages
from slserve.aws.stack import SlserveStack
from slserve.platform.catalog import FolderCatalog
from slserve.snapshot import ArtifactStore

HERE = Path(__file__).resolve().parent


def main() -> None:
    app = cdk.App(context=CDK_FLAGS)
    context = app.node.try_get_context
    repo = HERE.parent
    store = ArtifactStore(Path(context("artifacts") or repo / ".slserve" / "artifacts"))
    catalog = FolderCatalog(store, Path(context("functions") or repo / "functions"))
    only = context("only")
    functions = deployable(catalog, only.split(",") if only else None, print)
    routes = Path(context("routes") or repo / "routes.toml")
    plan, _ = packages(store, functions, Path(context("work") or repo / ".slserve" / "aws"), routes, print)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), ServerlessChecks(app))
    SlserveStack(app, plan.prefix, plan)
    app.synth()


if __name__ == "__main__":
    main()
