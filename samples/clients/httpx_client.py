"""Embeddings over the Open Inference Protocol v2 with httpx: JSON in, JSON out, and what the gateway says about
the request in its response headers (function, tier, cost, cold start).

    .venv/bin/python samples/clients/httpx_client.py "serverless inference" "scale from zero"

The gateway and the key are found as the CLI finds them (connect.py).
"""

from __future__ import annotations

import sys

import httpx
from connect import api_key, gateway_url


def embed(client: httpx.Client, texts: list[str]) -> list[list[float]]:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    response = client.post("/v2/models/minilm/infer", json=body)
    if response.status_code != 200:  # the body says what was wrong and how to fix it
        raise SystemExit(f"{response.status_code}: {response.json()['error']}")
    headers = response.headers
    print(
        f"function {headers['x-slserve-function']}, tier {headers['x-slserve-tier']}, "
        f"cost {headers['x-slserve-cost']}, cold start {headers.get('x-slserve-cold-start-ms', 'none')} ms",
        file=sys.stderr,
    )
    output = response.json()["outputs"][0]
    width = output["shape"][1]
    data = output["data"]
    return [data[i * width : (i + 1) * width] for i in range(len(texts))]


def main() -> None:
    texts = sys.argv[1:] or ["serverless inference"]
    with httpx.Client(base_url=gateway_url(), headers={"Authorization": f"Bearer {api_key()}"}, timeout=30) as client:
        for text, vector in zip(texts, embed(client, texts), strict=True):
            print(f"{text!r}: {len(vector)} floats, first {vector[:3]}")


if __name__ == "__main__":
    main()
