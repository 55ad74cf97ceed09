"""LitServe with the model, at its defaults (one worker, no batching), on the v2 path so one client measures
every server.

    python benchmarks/peers/litserve_server.py --model minilm|mlp --port 8200 [--weights mlp.safetensors]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import litserve
import numpy as np
from models import minilm, mlp


class Api(litserve.LitAPI):  # type: ignore[misc]
    def __init__(self, model: str, weights: Path | None) -> None:
        super().__init__(api_path=f"/v2/models/{'minilm' if model == 'minilm' else 'big-mlp'}/infer")
        self.model, self.weights = model, weights

    def setup(self, device: str) -> None:
        self.fn = minilm() if self.model == "minilm" else mlp(self.weights)  # type: ignore[arg-type]

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # LitServe reads the annotation: none = JSON body
        tensor = request["inputs"][0]
        if self.model == "minilm":
            return tensor["data"]
        return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])

    def predict(self, x: Any) -> np.ndarray:
        return self.fn(x)

    def encode_response(self, out: np.ndarray) -> dict[str, Any]:
        output = {"name": "y", "datatype": "FP32", "shape": list(out.shape), "data": out.ravel().tolist()}
        return {"outputs": [output]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["minilm", "mlp"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--weights", type=Path)
    args = parser.parse_args()
    server = litserve.LitServer(Api(args.model, args.weights), accelerator="cpu", healthcheck_path="/v2/health/ready")
    server.run(port=args.port, host="127.0.0.1", generate_client_file=False)
