"""Templates written by `slserve init`."""

from __future__ import annotations

_FUNCTION_TOML = """\
# {name}: one model version served as a function. Every field below is checked by `slserve build`.
tier = "standard"                  # economy | standard | premium (or a tier of your own)

[model]
name = "{name}"
version = "1"                      # immutable: bump it for new weights
description = ""

# Code lives in this folder (model.py beside this file: "model:build_model"; its modules import each other
# relatively, `from . import layers`) or in an installed package ("my_package.my_module:build_model"). The build
# stores this folder's .py files in the artifact: a running gateway serves new code once it is rebuilt.
[source]
{source}
# [processor]                      # optional pre/post-processing outside the graph (e.g. a tokenizer)
# factory = "processor:MyProcessor"   # a class taking {{asset name: path}}, with preprocess and postprocess
# assets = ["tokenizer.json"]

[[signature.inputs]]
name = "x"
datatype = "FP32"                  # BOOL, (U)INT8..64, FP16, FP32, FP64, BYTES
shape = [-1, 16]                   # -1 = variable; the first dimension is the batch

[[signature.outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 16]

[resources]
memory_mb = 2048                   # resident memory of one instance; one over it is stopped (and named)
# gpu = "A10G"                     # run on a GPU where one is available
threads = 1

[scaling]
min_instances = 0                  # 0 = scale to zero after idle_seconds
max_instances = 4
target_concurrency = 8             # in-flight requests per instance before another starts
idle_seconds = 60

[batching]
max_batch_size = 1                 # >1 merges concurrent requests into one model call
max_delay_ms = 0

[limits]
max_rows = 256                     # rows one request may carry (413 above): keep the largest within memory_mb
"""


_TORCH_SOURCE = """\
framework = "torch"                # torch | onnx
# torch: a callable that builds the architecture; it runs on the meta device at load, so no I/O in it.
factory = "model:build_model"
# weights = "model.safetensors"    # or pkg:<package>/<path>; without it: the factory's init under `seed`
# weights_prefix = ""              # strip this prefix from the file's keys
seed = 0
"""

_ONNX_SOURCE = """\
framework = "onnx"                 # torch | onnx
# onnx: a callable returning an onnx.ModelProto, or a graph file: path = "model.onnx"
export = "export:export_onnx"
"""

_TORCH_MODEL = '''"""{name}: the model's architecture. Replace it with yours; keep function.toml's signature in step."""

import torch


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the argument is the signature's input, by name
        return torch.relu(self.layer(x))


def build_model() -> torch.nn.Module:
    return Model()
'''

_ONNX_EXPORT = '''"""{name}: the model's graph. Replace it with yours (torch.onnx.export, or built by hand as here)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def export_onnx() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "{name}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
'''

FRAMEWORKS = ("torch", "onnx")


def function_template(name: str, framework: str = "torch") -> str:
    source = _TORCH_SOURCE if framework == "torch" else _ONNX_SOURCE
    return _FUNCTION_TOML.format(name=name, source=source)


def code_template(name: str, framework: str = "torch") -> tuple[str, str]:
    """The starter code file beside the spec: (file name, content). It builds and serves as it is."""
    if framework == "torch":
        return "model.py", _TORCH_MODEL.format(name=name)
    return "export.py", _ONNX_EXPORT.format(name=name)
