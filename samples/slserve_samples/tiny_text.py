"""A tiny text model over MiniLM's tokenizer: mean of 8-d token embeddings. Builds in a second, so tests of text
handling (tokens, truncation, empty and huge batches of strings) need no build of the real MiniLM."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 30522  # MiniLM's tokenizer
DIM = 8


class TinyText(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        return (self.embed(input_ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def build() -> TinyText:
    return TinyText()
