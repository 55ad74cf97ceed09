"""OpenAI's own client against slserve's `/v1/embeddings`, unchanged but for the base URL and the key.

.venv/bin/python samples/clients/openai_client.py "serverless inference"
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import openai


def main() -> None:
    url = os.environ.get("SLSERVE_URL", "http://127.0.0.1:8080")
    key = os.environ.get("SLSERVE_API_KEY") or Path(".slserve/state/dev-key").read_text().strip()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
    texts = sys.argv[1:] or ["serverless inference"]
    response = client.embeddings.create(model="minilm", input=texts)
    for text, item in zip(texts, response.data, strict=True):
        print(f"{text!r}: {len(item.embedding)} floats, first {item.embedding[:3]}")
    print(f"usage: {response.usage.prompt_tokens} tokens")
    try:
        client.embeddings.create(model="no-such-model", input=texts)
    except openai.NotFoundError as e:  # errors come in OpenAI's shape
        print(f"as expected: {e.status_code} {e.body}")


if __name__ == "__main__":
    main()
