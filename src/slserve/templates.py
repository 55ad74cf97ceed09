"""Templates written by `slserve init`."""

from __future__ import annotations

_FUNCTION_TOML = """\
# {name}: one model version served as a function. Every field below is checked by `slserve build`.
tier = "standard"                  # economy | standard | premium (or a tier of your own)

[model]
name = "{name}"
version = "1"                      # immutable: bump it for new weights
description = ""

[source]
framework = "torch"                # torch | onnx
# torch: a callable that builds the architecture; it runs on the meta device at load, so no I/O in it.
factory = "my_package.my_module:build_model"
# weights = "model.safetensors"    # or pkg:<package>/<path>; without it: the factory's init under `seed`
# weights_prefix = ""              # strip this prefix from the file's keys
seed = 0
# onnx: path = "model.onnx"        # a file in this folder, or
#       export = "my_package.my_module:export_onnx"   # a callable returning an onnx.ModelProto

# [processor]                      # optional pre/post-processing outside the graph (e.g. a tokenizer)
# factory = "my_package.my_module:MyProcessor"
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


def function_template(name: str) -> str:
    return _FUNCTION_TOML.format(name=name)
