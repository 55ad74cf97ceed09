"""`slserve deploy aws`: package every function, synthesize the stack, check it (what it costs: `aws.costs`), and
(with credentials) upload the artifacts and deploy.

    packages (zips, image contexts) ──► CDK synth ──► cdk-nag (during synth) ──► cfn-lint ──► cost per tier
                                                   └─► without --dry-run: artifacts to S3, then `cdk deploy`
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slserve.aws.package import Package, function_image, function_zip, router_zip
from slserve.aws.plan import NEW_ACCOUNT_MEMORY_MB, DeployPlan, FunctionPlan, lambda_memory_mb
from slserve.compose.catalog import DeployedPipeline, ManifestPipelines, PipelineCatalog, signatures_of
from slserve.compose.graph import Graph
from slserve.errors import BuildError, SpecError
from slserve.platform.base import Deployed
from slserve.platform.catalog import FolderCatalog, ManifestCatalog
from slserve.snapshot import ArtifactStore

# The CDK CLI `deploy` runs, pinned: a newer one may read the cloud assembly differently, an older one may not read
# what this aws-cdk-lib writes (the CLI and the library release apart since CLI 2.1000).
CDK_CLI = "aws-cdk@2.1148.1"
CDK_FLAGS = {"@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True}
LINT_IGNORED = {"W3005": "CDK adds a DependsOn on each function's role beside the GetAtt that already orders them"}


def packages(
    store: ArtifactStore,
    functions: list[Deployed],
    workdir: Path,
    routes: Path,
    report: Callable[[str], None],
    api: Literal["http", "rest"] = "http",
    on_modal: list[Deployed] | None = None,
    modal_url: str | None = None,
    pipelines: list[DeployedPipeline] | None = None,
    stage: Stage | None = None,
) -> tuple[DeployPlan, list[Package]]:
    """A package per function (zip for ONNX Runtime, image for torch) and the router's, and the plan over them.
    `on_modal`: functions the router sends to the modal target at `modal_url` (deployed by `deploy modal`)."""
    modal_functions = (on_modal or []) if modal_url else []
    built: list[Package] = []
    plans: list[FunctionPlan] = []
    for function in functions:
        assert function.digest is not None
        image = function.spec.framework.value == "torch"
        make = function_image if image else function_zip
        package = make(store, function, workdir / "functions" / function.name)
        report(package.describe())
        built.append(package)
        plans.append(FunctionPlan(function.name, function.spec, function.digest, package.directory, image))
    catalog = router_catalog(workdir / "catalog.json", functions, modal_functions, pipelines or [])
    router = router_zip(workdir / "router", catalog, routes)
    report(router.describe())
    built.append(router)
    stage = stage or Stage()
    plan = DeployPlan(
        stage.prefix,
        plans,
        router.directory,
        api=api,
        modal_url=modal_url,
        modal_prefix=stage.modal_prefix,
        key_secret_arn=stage.key_secret_arn,
    )
    return plan, built


@dataclass(frozen=True)
class Stage:
    """Which deployment: `prefix` names every physical resource (one stack per prefix in an account and region:
    `slserve-staging`, `slserve-prod`); `key_secret_arn` reuses the HMAC key an earlier stack left behind."""

    prefix: str = "slserve"
    modal_prefix: str = "slserve"
    key_secret_arn: str | None = None


@dataclass(frozen=True)
class Deployment:
    """What one deploy places, packaged: the one path `slserve deploy aws` and the CDK app in infra/ share."""

    plan: DeployPlan
    packages: list[Package]
    catalog: FolderCatalog
    on_modal: list[Deployed]


def prepare(
    store: ArtifactStore,
    functions: Path,
    routes: Path,
    work: Path,
    report: Callable[[str], None],
    only: list[str] | None = None,
    api: Literal["http", "rest"] = "http",
    modal_url: str | None = None,
    stage: Stage | None = None,
) -> Deployment:
    """The functions to place (CPU ones on Lambda; GPU ones on the modal target when `modal_url` is given), the
    pipelines that fit them, every package and the plan over them."""
    catalog = FolderCatalog(store, functions)
    chosen = deployable(catalog, only, report)
    gpu = [f for f in catalog.functions().values() if f.digest and (f.spec.resources.gpu or f.target == "modal")]
    on_modal = gpu if modal_url else []
    pipelines = deployable_pipelines(PipelineCatalog(store, functions), chosen + on_modal, report)

    def packaged(line: str) -> None:
        report(f"package {line}")

    plan, built = packages(store, chosen, work, routes, packaged, api, on_modal, modal_url, pipelines, stage)
    return Deployment(plan, built, catalog, on_modal)


def router_catalog(
    path: Path, on_lambda: list[Deployed], on_modal: list[Deployed], pipelines: list[DeployedPipeline] | None = None
) -> Path:
    """What the router serves, each function's target set to where this deploy puts it (a function.toml's
    `target` says where the local gateway sends it; on AWS, CPU functions are Lambda functions and GPU ones
    are the modal target's), and the pipelines the router runs over them."""
    placed = {f.name: _placed(f, "aws") for f in on_lambda} | {f.name: _placed(f, "modal") for f in on_modal}
    ManifestCatalog.write(path, placed, ManifestPipelines.entries(pipelines or []))
    return path


def deployable_pipelines(
    catalog: PipelineCatalog, functions: list[Deployed], report: Callable[[str], None]
) -> list[DeployedPipeline]:
    """The published pipelines whose steps fit the functions this deploy places (the others are said, and left).
    A pipeline with a feature lookup stays local: the router on Lambda has no feature store."""
    reach = signatures_of(functions)
    out = []
    for name, pipeline in sorted(catalog.pipelines().items()):
        if pipeline.digest is None:
            report(f"pipeline {name} is not built: left out (`slserve build {name}`)")
            continue
        lookups = [step.name for step in pipeline.spec.steps if step.lookup is not None]
        if lookups:
            report(
                f"pipeline {name} left out: its step(s) {', '.join(lookups)} look up feature tables, which only the "
                "local platform has (the router on Lambda has no feature store)"
            )
            continue
        try:
            Graph.check(pipeline.spec, reach)
        except SpecError as e:
            report(f"pipeline {name} left out: {e.message}")
            continue
        out.append(pipeline)
    return out


def _placed(function: Deployed, target: str) -> Deployed:
    return dataclasses.replace(function, spec=function.spec.model_copy(update={"target": target}))


def deployable(catalog: FolderCatalog, names: list[str] | None, report: Callable[[str], None]) -> list[Deployed]:
    """The functions to deploy: built and current, on a CPU (a GPU function belongs on Modal)."""
    out = []
    for name, function in sorted(catalog.functions().items()):
        if names is not None and name not in names:
            continue
        if function.digest is None:
            raise BuildError(f"{function.error}")
        if function.spec.resources.gpu:
            report(
                f"{name}: names a GPU ({function.spec.resources.gpu}); Lambda has none: left out (deploy it to Modal)"
            )
            continue
        memory = lambda_memory_mb(function.spec)
        if memory > NEW_ACCOUNT_MEMORY_MB:
            report(
                f"{name}: asks {memory} MB of Lambda memory; a new AWS account allows {NEW_ACCOUNT_MEMORY_MB} until a "
                "quota increase (Service Quotas), or set `resources.aws_memory_mb` lower"
            )
        out.append(function)
    unknown = sorted(set(names or []) - set(catalog.functions()))
    if unknown:
        raise BuildError(f"no function(s) {unknown} in the functions folder")
    return out


def synthesize(plan: DeployPlan, outdir: Path, account: str | None = None, region: str | None = None) -> Path:
    """The CloudFormation template, with cdk-nag's AwsSolutions and Serverless checks run during synthesis."""
    import aws_cdk as cdk
    from cdk_nag import AwsSolutionsChecks, ServerlessChecks

    from slserve.aws.stack import SlserveStack

    if outdir.exists():
        shutil.rmtree(outdir)
    app = cdk.App(outdir=str(outdir), context=CDK_FLAGS)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), ServerlessChecks(app))
    env = cdk.Environment(account=account, region=region) if account or region else None
    SlserveStack(app, plan.prefix, plan, env=env)
    try:
        app.synth()
    except Exception as e:  # jsii reports the validation failure as an error from node
        report = outdir / "validation-report.json"
        raise BuildError(f"the stack does not pass cdk-nag ({report}): {str(e)[:500]}") from None
    return outdir / f"{plan.prefix}.template.json"


def lint(template: Path) -> list[str]:
    """cfn-lint's findings (errors and warnings), less the ones CDK's own output always has (LINT_IGNORED)."""
    from cfnlint.api import lint_file
    from cfnlint.config import ManualArgs

    matches = lint_file(template, ManualArgs(ignore_checks=sorted(LINT_IGNORED)))
    return [f"{m.rule.id} {m.message} ({m.linenumber})" for m in matches]


def missing_for_deploy(images: bool = True) -> list[str]:
    """What a real deploy needs that this machine lacks (empty: it can deploy); `images`: it builds container
    images (a Docker engine's job), which a deploy of zips only does not."""
    missing = []
    try:
        import boto3

        if boto3.Session().get_credentials() is None:
            missing.append("AWS credentials (`aws configure`, AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    except ImportError:
        missing.append("boto3 (`pip install 'slserve[aws]'`)")
    if shutil.which("npx") is None:
        missing.append("the AWS CDK CLI (`npm install -g aws-cdk`; it runs as `npx cdk`)")
    if images and (
        shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode
    ):
        missing.append("a running Docker engine (to build the torch functions' images)")
    return missing
