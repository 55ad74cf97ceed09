"""A tier whose function names a GPU, on a target that would run it on the CPU: by default served there, said and
billed as the tier below; with `without_gpu = "refuse"` not run there at all, so the request takes its fallback
or a 503 that names the setting."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import SMALL_MLP_TOML

from slserve.errors import RuntimeUnavailable
from slserve.platform.base import Deployed, InferRequest, InferResult
from slserve.router.live import Router
from slserve.serving import Runner, Served
from slserve.spec import FunctionSpec


class CpuOnlyHost:
    """Every function runs on the CPU here; `gpu` is what the host says of a GPU function before it runs."""

    def __init__(self, gpu: bool | None) -> None:
        self.gpu = gpu
        self.called: list[str] = []

    def warm_capacity(self, function: str) -> int:
        return 1

    def gives_gpu(self, function: str) -> bool | None:
        return self.gpu

    async def infer(self, request: InferRequest) -> InferResult:
        self.called.append(request.function)
        return InferResult({"y": request.inputs["x"]}, request.function, "1", "i", 0.0, 1.0, 1, device="cpu")


def spec(tier: str, gpu: str | None = None) -> FunctionSpec:
    data = tomllib.loads(SMALL_MLP_TOML.format(version="1", seed=0))
    return FunctionSpec.model_validate({**data, "tier": tier, "resources": {"gpu": gpu}})


def serve(tmp_path: Path, routes: str, gpu: bool | None, standard: bool = True) -> tuple[Served, list[str]]:
    functions = {"enc-gpu": Deployed("enc-gpu", spec("premium", "L4"), "a")}
    if standard:
        functions["enc-std"] = Deployed("enc-std", spec("standard"), "b")
    (tmp_path / "routes.toml").write_text(routes)
    router = Router(functions, tmp_path / "routes.toml")
    route = router.route("small-mlp", None, routing_key="", tier="premium", allow_upgrade=False, draw=0.5)
    host = CpuOnlyHost(gpu)
    request = InferRequest("enc-gpu", {"x": np.ones((2, 16), dtype=np.float32)})
    return asyncio.run(Runner(router).infer(host, route, request)), host.called  # type: ignore[arg-type]


REFUSE = """
[tiers.standard]
rank = 1
price_per_request = 20
price_per_unit = 10

[tiers.premium]
rank = 2
price_per_request = 50
price_per_unit = 20
without_gpu = "refuse"
"""


def test_by_default_the_tier_is_served_on_the_cpu_said_and_billed_as_the_tier_below(tmp_path: Path) -> None:
    served, called = serve(tmp_path, "", gpu=False)
    assert called == ["enc-gpu"]
    assert served.tier == "standard" and served.price == 20 + 2 * 10  # standard's price for 2 rows
    assert served.degraded == "premium promises a L4 GPU; served on the CPU, billed as standard"


def test_a_refusing_tier_takes_its_fallback_without_running_on_the_cpu(tmp_path: Path) -> None:
    served, called = serve(tmp_path, REFUSE, gpu=False)
    assert called == ["enc-std"]  # the GPU function never ran
    assert served.fallback == "enc-gpu->enc-std" and served.tier == "standard" and served.degraded is None


def test_a_refusing_tier_without_a_fallback_is_a_503_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(RuntimeUnavailable, match=r'enc-gpu \(premium\) promises a L4 GPU.*without_gpu = "refuse"'):
        serve(tmp_path, REFUSE, gpu=False, standard=False)


@pytest.mark.parametrize("gpu", [True, None])
def test_a_refusing_tier_runs_where_the_gpu_is_there_or_not_yet_known(tmp_path: Path, gpu: bool | None) -> None:
    served, called = serve(tmp_path, REFUSE, gpu=gpu)
    assert called == ["enc-gpu"] and served.fallback is None
