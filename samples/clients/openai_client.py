"""OpenAI's own client against slserve's `/v1/embeddings`, unchanged but for the base URL and the key.

.venv/bin/python samples/clients/openai_client.py "serverless inference"
"""

from __future__ import annotations

import sys

import openai
from connect import api_key, gateway_url


def main() -> None:
    client = openai.OpenAI(base_url=f"{gateway_url()}/v1", api_key=api_key())
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
