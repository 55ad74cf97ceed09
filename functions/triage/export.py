"""The triage head of the ticket-router pipeline: which queue a support ticket goes to (0 self-serve, 1 support,
2 priority), from the ticket text's MiniLM embedding (384) and the customer's stored features (4: plan, tenure
in years, tickets in the last 90 days, monthly spend / 100).

Trained at build on synthetic tickets (seeded, so every build is the same model): the customer's plan and
history decide most of the queue, the text's embedding the rest. A stand-in for a head trained on real tickets.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

EMBEDDING, CUSTOMER, QUEUES = 384, 4, 3


def synthetic(n: int = 900, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(n, EMBEDDING)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    plan = rng.integers(0, 3, n)
    tenure = rng.uniform(0, 8, n)
    tickets = rng.poisson(2, n)
    spend = rng.gamma(2, 1.5, n)
    urgency = text[:, :8].sum(axis=1)  # a direction in embedding space that stands for "urgent" wording
    score = 1.2 * plan + 0.4 * tickets + 0.3 * spend - 0.1 * tenure + 2.0 * urgency
    queue = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    customer = np.stack([plan, tenure, tickets, spend], axis=1).astype(np.float32)
    return np.concatenate([text, customer], axis=1), queue


class Triage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(EMBEDDING + CUSTOMER, 32), nn.ReLU(), nn.Linear(32, QUEUES))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.softmax(self.net(features), dim=-1)
        return probabilities, probabilities.argmax(dim=-1)


def export_onnx() -> object:
    import onnx

    torch.manual_seed(0)
    model = Triage()
    x, y = synthetic()
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model.net(xs), ys).backward()
        opt.step()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation: it gives the plainest graph
        torch.onnx.export(
            model.eval(),
            (torch.zeros(2, EMBEDDING + CUSTOMER),),
            buf,
            input_names=["features"],
            output_names=["probabilities", "queue"],
            dynamic_axes={"features": {0: "batch"}, "probabilities": {0: "batch"}, "queue": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())
