"""A plain FastAPI + uvicorn server with MiniLM in-process, as a team would write one: the same weights and
tokenizer as slserve's `minilm-torch`, torch at its default threads (every core), no batching, no padding
beyond the request's own longest sentence. It speaks the v2 request slserve speaks, so one client measures both.

    python benchmarks/peers/fastapi_minilm.py --port 8200
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse
from safetensors.torch import load_file
from tokenizers import Tokenizer

from slserve_samples.minilm import build_encoder, model_dir

app = FastAPI()
model = build_encoder()
model.load_state_dict(load_file(str(model_dir() / "model.safetensors")), strict=False)
model.eval()
tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
tokenizer.enable_truncation(256)
tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")


@app.get("/v2/health/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/v2/models/minilm/infer")
async def infer(request: Request) -> ORJSONResponse:
    body = await request.json()
    texts = body["inputs"][0]["data"]
    encodings = tokenizer.encode_batch(texts)
    ids = torch.from_numpy(np.array([e.ids for e in encodings], dtype=np.int64))
    mask = torch.from_numpy(np.array([e.attention_mask for e in encodings], dtype=np.int64))
    with torch.inference_mode():
        embedding = model(input_ids=ids, attention_mask=mask).numpy()
    shape = list(embedding.shape)
    output = {"name": "embedding", "datatype": "FP32", "shape": shape, "data": embedding.ravel().tolist()}
    return ORJSONResponse({"model_name": "minilm", "outputs": [output]})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
