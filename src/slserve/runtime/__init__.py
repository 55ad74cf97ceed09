"""Runtimes: load an artifact, infer on a batch. Framework imports happen only in the adapter that needs them."""

from slserve.runtime.base import Runtime, load_runtime
from slserve.runtime.tensors import check_inputs, example_inputs

__all__ = ["Runtime", "check_inputs", "example_inputs", "load_runtime"]
