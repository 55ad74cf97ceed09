"""ONNX sources: initializers move into the snapshot; graphs keep them as external data by name.

A second graph, optimized by ONNX Runtime for its CPU provider, is stored beside the canonical one so that a
cold start skips graph optimization. Its initializers (folded or fused ones included) are stored the same way.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from slserve.build.locations import resolve_location
from slserve.errors import BuildError, SpecError
from slserve.runtime.base import import_ref
from slserve.runtime.code import folder_code
from slserve.runtime.onnx_runtime import (
    CPU,
    GRAPH,
    OPTIMIZED_CPU_GRAPH,
    OPTIMIZED_CPU_PREFIX,
    check_single_install,
    session_options,
)
from slserve.snapshot import BlobStore, FileEntry, TensorEntry, write_tensors
from slserve.spec import FunctionDef

EXTERNAL_LOCATION = "slserve-snapshot"  # never opened: the runtime supplies every initializer by name
SHAPE_LIKE_MAX_ELEMENTS = 64


def load_model(fdef: FunctionDef) -> Any:
    import onnx

    source = fdef.spec.source
    if source.path:
        return onnx.load(str(resolve_location(source.path, fdef.directory)))
    assert source.export is not None
    model = import_ref(source.export, folder_code(fdef.name, fdef.directory))()
    if not isinstance(model, onnx.ModelProto):
        raise SpecError(f"{source.export} returned {type(model).__name__}, expected an onnx.ModelProto")
    return model


def externalize(model: Any) -> dict[str, np.ndarray]:
    """Take the initializers' bytes out of `model` (in place) and return them by name.

    Small integer tensors stay in the graph: they are shapes and axes, which ONNX's shape inference must read
    while it loads the graph, before any external initializer is bound.
    """
    from onnx import TensorProto, numpy_helper

    arrays: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype.kind in "iub" and value.size <= SHAPE_LIKE_MAX_ELEMENTS:
            continue
        arrays[init.name] = value
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            init.ClearField(field)
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        entry = init.external_data.add()
        entry.key, entry.value = "location", EXTERNAL_LOCATION
    return arrays


def optimize_for_cpu(graph_path: Path, arrays: dict[str, np.ndarray], workdir: Path) -> Any:
    """Let ONNX Runtime optimize the graph for its CPU provider and load the result with its weights."""
    import onnx
    import onnxruntime as ort

    so = session_options(threads=1)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(workdir / "opt.onnx")
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "opt.bin")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "0")
    so.add_external_initializers(list(arrays), [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()])
    ort.InferenceSession(str(graph_path), so, providers=[CPU])
    return onnx.load(str(workdir / "opt.onnx"), load_external_data=True)


def quantize_int8(model: Any, workdir: Path) -> Any:
    """ONNX Runtime dynamic quantization: weights to int8 per output channel, activations quantized at run time.

    Per channel with reduced range agreed best with fp32 on MiniLM's calibration sentences (RESULTS.md, the
    variants' agreement): 7-bit weights keep the u8 x s8 products from
    saturating on CPUs without VNNI, as ONNX Runtime advises."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = workdir / "fp32.onnx", workdir / "int8.onnx"
    onnx.save(model, str(source))
    # Its advice to pre-process the model first (a logged warning) is about static quantization.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    finally:
        logging.disable(logging.NOTSET)
    return onnx.load(str(target))


def convert_fp16(model: Any) -> Any:
    """Weights and activations in half precision; inputs and outputs stay as the signature declares them (casts
    at the edges). Ops whose fp16 kernels lose too much (ONNX Runtime's default block list: Resize, Range,
    ...) stay in fp32. Made for GPUs (tensor cores); ONNX Runtime's CPU provider runs it too, more slowly,
    which is how the build measures its agreement and how a host without a GPU still serves it."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


def snapshot_onnx(
    fdef: FunctionDef, blobs: BlobStore
) -> tuple[dict[str, TensorEntry], dict[str, FileEntry], bytes | None]:
    """Returns the tensors, the files and, for a derived variant, the fp32 reference graph (to measure the
    variant's agreement against)."""
    check_single_install()
    model = load_model(fdef)
    reference: bytes | None = None
    if fdef.spec.source.quantize is not None:
        reference = model.SerializeToString()
        if fdef.spec.source.quantize == "int8":
            with tempfile.TemporaryDirectory(prefix="slserve-quantize-") as tmp:
                model = quantize_int8(model, Path(tmp))
        else:
            model = convert_fp16(model)
    arrays = externalize(model)
    tensors = write_tensors(blobs, arrays)
    files: dict[str, FileEntry] = {}
    with tempfile.TemporaryDirectory(prefix="slserve-build-") as tmp:
        workdir = Path(tmp)
        graph_path = workdir / GRAPH
        graph_path.write_bytes(model.SerializeToString())
        digest, size = blobs.put_file(graph_path)
        files[GRAPH] = FileEntry(digest=digest, size=size)
        try:
            optimized = optimize_for_cpu(graph_path, arrays, workdir)
        except Exception as e:
            raise BuildError(f"{fdef.name}: ONNX Runtime could not load the graph: {e}") from e
        opt_arrays = externalize(optimized)
        opt_tensors = write_tensors(blobs, {OPTIMIZED_CPU_PREFIX + k: v for k, v in opt_arrays.items()})
        opt_path = workdir / "opt-external.onnx"
        opt_path.write_bytes(optimized.SerializeToString())
        digest, size = blobs.put_file(opt_path)
        files[OPTIMIZED_CPU_GRAPH] = FileEntry(digest=digest, size=size)
    return {**tensors, **opt_tensors}, files, reference
