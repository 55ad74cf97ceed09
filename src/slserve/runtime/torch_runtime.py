"""The torch adapter: the module is built on the meta device and its weights assigned from the mapped snapshot.

Nothing is copied on the CPU: each parameter is a tensor over the blob's copy-on-write mapping. On a GPU the
weights go from the mapping to the device through pinned chunks (`device_copy`), never whole on the CPU.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Self

import numpy as np
import torch

from slserve.errors import ArtifactCorrupt, SpecError
from slserve.runtime.base import Preloaded, Processor, RuntimeBase, Tensors, import_ref, make_processor, name_outputs
from slserve.runtime.code import FunctionCode, artifact_code
from slserve.runtime.device import choose_device
from slserve.runtime.device_copy import to_device
from slserve.snapshot import Artifact
from slserve.spec import FunctionSpec

# Weights are mapped read-only and binary inputs are views of the request's bytes: torch warns that writing to
# them would be undefined. Nothing writes to them (inference mode, parameters without gradients), and the
# warning reached every instance's log on its first call.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def build_skeleton(spec: FunctionSpec, code: FunctionCode | None) -> torch.nn.Module:
    """The module's architecture with no storage behind it."""
    assert spec.source.factory is not None
    factory = import_ref(spec.source.factory, code)
    with torch.device("meta"):
        module = factory()
    if not isinstance(module, torch.nn.Module):
        raise SpecError(f"{spec.source.factory} returned {type(module).__name__}, expected a torch.nn.Module")
    return module


def assign_tensors(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Put each named tensor in place of the module's parameter or buffer of that name (no copy)."""
    params = dict(module.named_parameters(remove_duplicate=False))
    buffers = dict(module.named_buffers(remove_duplicate=False))
    unknown = sorted(set(tensors) - set(params) - set(buffers))
    if unknown:
        raise ArtifactCorrupt(f"snapshot tensors {unknown[:5]} do not exist in the module; rebuild the function")
    for name, value in tensors.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        if name in params:
            owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
        else:
            owner._buffers[leaf] = value
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise ArtifactCorrupt(f"the snapshot has no values for {left[:5]}; rebuild the function")


def torch_tensors(artifact: Artifact) -> dict[str, torch.Tensor]:
    """Zero-copy torch views of the artifact's mapped weights."""
    arrays = artifact.map_tensors()
    out: dict[str, torch.Tensor] = {}
    for name, arr in arrays.items():
        t = torch.from_numpy(arr)
        dtype = TORCH_DTYPES[artifact.manifest.tensors[name].dtype]
        out[name] = t.view(dtype) if t.dtype != dtype else t
    return out


class TorchRuntime(RuntimeBase):
    def __init__(self, spec: FunctionSpec, module: torch.nn.Module, device: str, processor: Processor) -> None:
        self.spec = spec
        self.module = module
        self.device = device
        self.processor = processor
        # A forward whose parameters name the graph's inputs gets them by keyword; others (nn.Sequential's
        # `input`) get them by position, in signature order.
        self._keywords = {
            name for name, p in inspect.signature(module.forward).parameters.items() if p.kind is not p.POSITIONAL_ONLY
        }

    @classmethod
    def load(cls, artifact: Artifact, device: str | None = None, preloaded: Preloaded | None = None) -> Self:
        spec = artifact.manifest.spec
        chosen = choose_device(spec, device, torch.cuda.is_available())
        torch.set_num_threads(spec.resources.threads)
        code = artifact_code(artifact)
        module = preloaded.module if preloaded and preloaded.module is not None else build_skeleton(spec, code)
        tensors = torch_tensors(artifact)
        if chosen == "cuda":  # straight from the mapping to the GPU, through pinned chunks (never whole on the CPU)
            tensors = to_device(tensors, "cuda")
        assign_tensors(module, tensors)
        module.eval()
        processor = make_processor(spec, artifact.asset_paths(), preloaded.processor if preloaded else None, code)
        return cls(spec, module, chosen, processor)

    def after_fork(self) -> None:
        self.set_threads(self.spec.resources.threads)

    @property
    def threads(self) -> int:
        return int(torch.get_num_threads())

    def set_threads(self, threads: int) -> None:
        """The intra-op threads of the calls that follow (about a microsecond when unchanged, tens when not)."""
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def _run(self, feeds: Tensors) -> Tensors:
        args = {k: self._to_torch(v) for k, v in feeds.items()}
        with torch.inference_mode():
            produced = self.module(**args) if args.keys() <= self._keywords else self.module(*args.values())
        named = name_outputs(self.spec, produced)
        return {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in named.items()}

    def _to_torch(self, arr: np.ndarray) -> object:
        if arr.dtype == object:
            return arr  # BYTES reach the module as they are (it tokenizes or decodes them itself)
        return torch.from_numpy(arr).to(self.device, non_blocking=True)
