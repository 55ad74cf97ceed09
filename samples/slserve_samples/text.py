"""Tokenization for BERT-style text functions: needs only `tokenizers`, so ONNX instances never import torch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from slserve.errors import InvalidInput
from slserve.runtime.base import RequestContext

MAX_SEQ_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
# A request's sequences are padded to the next bucket, so that requests of similar length can share a model call
# (exact batching merges equal shapes only) and the build can prove every shape there is. Steps of at most 1.5x
# bound the padding's extra compute.
LENGTH_BUCKETS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, MAX_SEQ_LENGTH)


def bucket(length: int) -> int:
    return next(b for b in LENGTH_BUCKETS if b >= length)


class TextProcessor:
    """BYTES sentences -> input_ids / attention_mask (int64), padded to the length bucket of the longest.

    A text longer than the model's limit is refused (400, naming the limit), unless the request asks for
    truncation (`truncate`); then the rows that were cut are reported (`notes["truncated"]`)."""

    def __init__(self, assets: Mapping[str, Path]) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(assets["tokenizer.json"]))
        self.tokenizer.enable_truncation(MAX_SEQ_LENGTH)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def preprocess(self, inputs: Mapping[str, np.ndarray], context: RequestContext) -> dict[str, np.ndarray]:
        texts = [t.decode("utf-8", errors="replace") for t in inputs["text"].reshape(-1)]
        encodings = self.tokenizer.encode_batch(texts)
        cut = [i for i, e in enumerate(encodings) if e.overflowing]  # the tokenizer keeps what it cut off
        if cut:
            if context.options.get("truncate") is not True:
                raise InvalidInput(
                    f"text {cut[0]} is longer than this model's limit of {MAX_SEQ_LENGTH} tokens ({len(cut)} of "
                    f"{len(texts)} texts are); shorten or split it, or ask for truncation (v2: "
                    '"parameters": {"truncate": true}; /v1/embeddings: "truncate": true)'
                )
            context.notes["truncated"] = len(cut)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        pad = ((0, 0), (0, bucket(ids.shape[1]) - ids.shape[1]))  # pad id and mask are both 0
        return {"input_ids": np.pad(ids, pad), "attention_mask": np.pad(mask, pad)}

    def feed_examples(self) -> list[dict[str, np.ndarray]]:
        """One sequence of real tokens per length bucket: the shapes this processor can produce."""
        words = "the quick brown fox jumps over the lazy dog while serverless inference scales to zero " * 40
        ids = self.tokenizer.encode(words).ids  # truncated to MAX_SEQ_LENGTH, ends with [SEP]
        return [
            {
                "input_ids": np.array([ids[: n - 1] + ids[-1:]], dtype=np.int64),
                "attention_mask": np.ones((1, n), dtype=np.int64),
            }
            for n in LENGTH_BUCKETS
        ]

    def count_tokens(self, feeds: Mapping[str, np.ndarray]) -> int:
        """Real tokens (special tokens included, padding not): what an embeddings API reports as usage."""
        return int(feeds["attention_mask"].sum())

    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(outputs)
