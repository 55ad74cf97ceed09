"""A small ONNX classifier: an MLP trained at build time on deterministic synthetic data, exported to ONNX.

Three Gaussian clusters in 4 dimensions; outputs class probabilities and the arg-max label.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

FEATURES = 4
CLASSES = 3
CENTERS = np.array([[0, 0, 0, 0], [3, 3, 0, 0], [0, 3, 3, 3]], dtype=np.float32)


def dataset(n_per_class: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + rng.normal(size=(n_per_class, FEATURES)).astype(np.float32) for c in CENTERS])
    y = np.repeat(np.arange(CLASSES), n_per_class)
    return x, y


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, CLASSES))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.softmax(self.net(features), dim=-1)
        return probabilities, probabilities.argmax(dim=-1)


def train(steps: int = 300, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    model = Classifier()
    x, y = dataset(seed=seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model.net(xs), ys)
        loss.backward()
        opt.step()
    return model.eval()


def calibration() -> dict[str, np.ndarray]:
    """Inputs like the traffic to expect (a fresh sample of the same clusters): the build's drift reference."""
    return {"features": dataset(n_per_class=100, seed=2)[0]}


def export_onnx() -> object:
    """Version 1: 300 steps on the seed-0 sample."""
    return _export(train())


def export_onnx_v2() -> object:
    """Version 2, the retrained one (for canaries and shadows): twice the steps, on a fresh sample."""
    return _export(train(steps=600, seed=1))


def _export(model: Classifier) -> object:
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but still gives the plainest graph for ORT's optimizer.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, FEATURES),),
            buf,
            input_names=["features"],
            output_names=["probabilities", "label"],
            dynamic_axes={"features": {0: "batch"}, "probabilities": {0: "batch"}, "label": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())
