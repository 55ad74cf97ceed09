"""A tier's fallback runs a request elsewhere only when that cannot run it twice: a failure that says the
function may still be running it (a timed-out invocation) is answered as it is."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import SMALL_MLP_TOML

from slserve.errors import InstanceFailed, SlserveError
from slserve.platform.base import Deployed, InferRequest, InferResult
from slserve.router.live import Router
from slserve.serving import Runner
from slserve.spec import FunctionSpec


class TwoTiers:
    """The standard function fails as `failure` says; the economy one answers."""

    def __init__(self, failure: SlserveError) -> None:
        self.failure = failure
        self.called: list[str] = []

    def warm_capacity(self, function: str) -> int:
        return 1

    async def infer(self, request: InferRequest) -> InferResult:
        self.called.append(request.function)
        if request.function == "enc-std":
            raise self.failure
        return InferResult({"y": request.inputs["x"]}, request.function, "1", "i", 0.0, 1.0, 1)


def spec(tier: str) -> FunctionSpec:
    return FunctionSpec.model_validate({**tomllib.loads(SMALL_MLP_TOML.format(version="1", seed=0)), "tier": tier})


def serve(failure: SlserveError, tmp_path: Path) -> tuple[list[str], str | None]:
    functions = {
        "enc-std": Deployed("enc-std", spec("standard"), "a"),
        "enc-eco": Deployed("enc-eco", spec("economy"), "b"),
    }
    router = Router(functions, tmp_path / "routes.toml")
    route = router.route("small-mlp", None, routing_key="", tier="standard", allow_upgrade=False, draw=0.5)
    platform = TwoTiers(failure)
    request = InferRequest("enc-std", {"x": np.ones((1, 16), dtype=np.float32)})
    served = asyncio.run(Runner(router).infer(platform, route, request))  # type: ignore[arg-type]
    return platform.called, served.fallback


def test_a_lost_instance_falls_back_to_the_cheaper_tier(tmp_path: Path) -> None:
    called, fallback = serve(InstanceFailed("enc-std: the instance died"), tmp_path)
    assert called == ["enc-std", "enc-eco"] and fallback == "enc-std->enc-eco"


def test_a_timed_out_invocation_is_not_run_a_second_time(tmp_path: Path) -> None:
    timed_out = InstanceFailed("enc-std: no answer within the read timeout", may_have_run=True)
    with pytest.raises(InstanceFailed, match="no answer within the read timeout"):
        serve(timed_out, tmp_path)
