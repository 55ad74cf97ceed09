"""Weights from the mapped snapshot onto the GPU: through pinned host memory, in large chunks, the reading of the
mapping overlapped with the copies to the device.

A parameter mapped from a blob lives in pageable memory, so `module.to("cuda")` has the driver stage each tensor
through a small pinned buffer of its own, synchronously, one tensor after another, while the first touch of each
page reads it from disk. Here two pinned buffers of `chunk_bytes` take turns: the CPU fills one from the mapping
(small tensors packed together, large ones cut across chunks) while the copy engine moves the other to the
device on a stream of its own. The floor is the weights' bytes over the host-to-device bandwidth
(`benchmarks/gpu_load.py` measures both in one run).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

CHUNK_BYTES = 64 << 20


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def to_device(
    tensors: Mapping[str, torch.Tensor], device: str, chunk_bytes: int = CHUNK_BYTES
) -> dict[str, torch.Tensor]:
    """Copies of `tensors` on `device`, bit for bit. Names that share one source (tied weights) share one copy."""
    target = torch.device(device)
    cuda = target.type == "cuda"
    out: dict[str, torch.Tensor] = {}
    copies: dict[tuple[int, int, torch.dtype, tuple[int, ...]], torch.Tensor] = {}
    todo: list[tuple[torch.Tensor, torch.Tensor]] = []  # (source bytes, destination bytes)
    for name, src in tensors.items():
        key = (src.data_ptr(), src.nbytes, src.dtype, tuple(src.shape))
        if key not in copies:
            copies[key] = torch.empty(src.shape, dtype=src.dtype, device=target)
            if src.nbytes:
                todo.append((_bytes(src.contiguous()), _bytes(copies[key])))
        out[name] = copies[key]
    total = sum(s.numel() for s, _ in todo)
    if not total:
        return out
    size = min(chunk_bytes, total)
    buffers = [torch.empty(size, dtype=torch.uint8, pin_memory=cuda) for _ in range(2 if total > size else 1)]
    stream = torch.cuda.Stream(target) if cuda else None  # type: ignore[no-untyped-call]
    done: list[torch.cuda.Event | None] = [None] * len(buffers)
    turn, used = 0, 0
    pending: list[tuple[torch.Tensor, int, int]] = []  # (destination slice, offset in the buffer, bytes)

    def send() -> None:
        nonlocal turn, used, pending
        buffer = buffers[turn]
        if stream is not None:
            with torch.cuda.stream(stream):
                for dst, at, n in pending:
                    dst.copy_(buffer[at : at + n], non_blocking=True)
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(stream)
                done[turn] = event
        else:
            for dst, at, n in pending:
                dst.copy_(buffer[at : at + n])
        pending, used = [], 0
        turn = (turn + 1) % len(buffers)
        waiting = done[turn]
        if waiting is not None:
            waiting.synchronize()  # this buffer's last copies must be over before it is filled again

    for src, dst in todo:
        offset = 0
        while offset < src.numel():
            n = min(size - used, src.numel() - offset)
            buffers[turn][used : used + n].copy_(src[offset : offset + n])  # reads the mapping: pages come in here
            pending.append((dst[offset : offset + n], used, n))
            used += n
            offset += n
            if used == size:
                send()
    if pending:
        send()
    if stream is not None:
        stream.synchronize()
    return out
