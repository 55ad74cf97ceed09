"""Tokenization for BERT-style text functions: needs only `tokenizers`, so ONNX instances never import torch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

MAX_SEQ_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


class TextProcessor:
    """BYTES sentences -> input_ids / attention_mask (int64), padded to the longest in the batch."""

    def __init__(self, assets: Mapping[str, Path]) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(assets["tokenizer.json"]))
        self.tokenizer.enable_truncation(MAX_SEQ_LENGTH)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def preprocess(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [t.decode("utf-8", errors="replace") for t in inputs["text"].reshape(-1)]
        encodings = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }

    def count_tokens(self, feeds: Mapping[str, np.ndarray]) -> int:
        """Real tokens (special tokens included, padding not): what an embeddings API reports as usage."""
        return int(feeds["attention_mask"].sum())

    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(outputs)
