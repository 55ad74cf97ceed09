"""A plain FastAPI + uvicorn server with the model in-process: torch at its default threads, no batching. It
speaks the v2 request slserve speaks, so one client measures both.

    python benchmarks/peers/fastapi_server.py --model minilm|mlp --port 8200 [--weights mlp.safetensors]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse
from models import minilm, mlp

parser = argparse.ArgumentParser()
parser.add_argument("--model", choices=["minilm", "mlp"], required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--weights", type=Path)
args = parser.parse_args()
app = FastAPI()
encode = minilm() if args.model == "minilm" else None
forward = mlp(args.weights) if args.model == "mlp" else None


@app.get("/v2/health/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> ORJSONResponse:
    tensor = (await request.json())["inputs"][0]
    if encode is not None:
        out = encode(tensor["data"])
    else:
        assert forward is not None
        out = forward(np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]))
    output = {"name": "y", "datatype": "FP32", "shape": list(out.shape), "data": out.ravel().tolist()}
    return ORJSONResponse({"model_name": name, "outputs": [output]})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
