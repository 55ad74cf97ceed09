"""What `slserve deploy aws` packaged, as the stack reads it: each model function's plan (its package and how
it starts) and the deployment's (prefix, API variant, deadlines, the Modal target)."""

from __future__ import annotations

import os

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")  # read when aws_cdk starts node, below

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aws_cdk import aws_lambda as lambda_

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
Start = Literal["snapstart", "provisioned", "on-demand"]


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
