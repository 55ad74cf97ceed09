"""Torch sources: the factory's module, its weights from a safetensors file or its own seeded init."""

from __future__ import annotations

from itertools import chain

import numpy as np
import torch

from slserve.build.locations import resolve_location
from slserve.errors import BuildError, SpecError
from slserve.runtime.base import import_ref
from slserve.runtime.code import folder_code
from slserve.snapshot import BlobStore, TensorEntry, write_tensors
from slserve.spec import FunctionDef


def load_module(fdef: FunctionDef) -> torch.nn.Module:
    """The module with the weights it will serve, built on the CPU."""
    source = fdef.spec.source
    assert source.factory is not None
    torch.manual_seed(source.seed)
    module = import_ref(source.factory, folder_code(fdef.name, fdef.directory))()
    if not isinstance(module, torch.nn.Module):
        raise SpecError(f"{source.factory} returned {type(module).__name__}, expected a torch.nn.Module")
    if source.weights:
        from safetensors.torch import load_file

        path = resolve_location(source.weights, fdef.directory)
        state = {
            k.removeprefix(source.weights_prefix): v
            for k, v in load_file(str(path)).items()
            if k.startswith(source.weights_prefix)
        }
        result = module.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise BuildError(
                f"{fdef.name}: {path} has no values for {result.missing_keys[:5]} "
                f"({len(result.missing_keys)} missing); check source.weights and source.weights_prefix"
            )
    return module.eval()


def module_tensors(module: torch.nn.Module) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every parameter and buffer (non-persistent ones too: the meta-device skeleton has no values for them)
    as numpy arrays, with the snapshot dtype of those numpy cannot name."""
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    named = chain(module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        t = tensor.detach().contiguous().cpu()
        if t.dtype == torch.bfloat16:
            arrays[name] = t.view(torch.int16).numpy().view(np.uint16)
            dtypes[name] = "bfloat16"
        else:
            arrays[name] = t.numpy()
    return arrays, dtypes


def snapshot_torch(fdef: FunctionDef, blobs: BlobStore) -> dict[str, TensorEntry]:
    arrays, dtypes = module_tensors(load_module(fdef))
    return write_tensors(blobs, arrays, dtypes)
