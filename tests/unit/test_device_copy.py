"""Weights to a device through staged chunks: every byte arrives, whatever the sizes (tensors packed into one
chunk, tensors cut across chunks, empty and scalar ones), and tied weights stay one copy. On the CPU here; the
CUDA case (pinned buffers, a stream) runs where a GPU is."""

from __future__ import annotations

import pytest
import torch

from slserve.runtime.device_copy import to_device


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    shared = torch.randn(33, 17, generator=g)
    return {
        "big": torch.randn(1000, 37, generator=g),  # many chunks
        "small.a": torch.randint(-100, 100, (5,), generator=g, dtype=torch.int64),
        "small.b": torch.randn(3, 3, generator=g).half(),
        "mask": torch.rand(11, generator=g) > 0.5,
        "scalar": torch.tensor(3.25),
        "empty": torch.empty(0, 4),
        "tied.1": shared,
        "tied.2": shared,
        "bf16": torch.randn(129, generator=g).to(torch.bfloat16),
    }


@pytest.mark.parametrize("chunk_bytes", [7, 64, 4096, 1 << 20])
def test_every_byte_arrives_at_any_chunk_size(chunk_bytes: int) -> None:
    tensors = _tensors()
    copied = to_device(tensors, "cpu", chunk_bytes)
    assert copied.keys() == tensors.keys()
    for name, src in tensors.items():
        dst = copied[name]
        assert dst.dtype == src.dtype and dst.shape == src.shape, name
        assert torch.equal(dst.view(torch.uint8) if dst.ndim else dst, src.view(torch.uint8) if src.ndim else src)
        assert dst.data_ptr() != src.data_ptr() or src.nbytes == 0, name
    assert copied["tied.1"] is copied["tied.2"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_matches_a_plain_copy() -> None:
    tensors = _tensors()
    copied = to_device(tensors, "cuda", chunk_bytes=4096)
    for name, src in tensors.items():
        assert copied[name].device.type == "cuda"
        assert torch.equal(copied[name].cpu(), src), name
