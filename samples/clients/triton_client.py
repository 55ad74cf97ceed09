"""Triton's own client (`tritonclient.http`) against slserve, unchanged: JSON tensors, then binary tensors both
ways (the request's bytes after its JSON header, the answer's likewise).

    .venv/bin/python samples/clients/triton_client.py

Note: `infer` writes `Inference-Header-Content-Length` into the headers dict you pass it (for binary requests).
Pass a fresh dict to every call, or the next JSON request would claim a binary header that is not there.
"""

from __future__ import annotations

import numpy as np
import tritonclient.http as triton
from connect import api_key, gateway_url


def headers() -> dict[str, str]:
    """A fresh dict per call (see above)."""
    return {"Authorization": f"Bearer {api_key()}"}


def main() -> None:
    client = triton.InferenceServerClient(gateway_url().removeprefix("http://"))
    texts = np.array([b"serverless inference", b"scale from zero"], dtype=np.object_)
    for binary in (False, True):
        text = triton.InferInput("text", [len(texts)], "BYTES")
        text.set_data_from_numpy(texts, binary_data=binary)
        wanted = [triton.InferRequestedOutput("embedding", binary_data=binary)]
        result = client.infer("minilm", [text], outputs=wanted, headers=headers())
        embedding = result.as_numpy("embedding")
        assert embedding is not None
        norms = np.linalg.norm(embedding, axis=1)
        print(f"{'binary' if binary else 'JSON'} tensors: {embedding.shape} {embedding.dtype}, norms {norms.round(4)}")
    print("model metadata:", client.get_model_metadata("minilm", headers=headers())["inputs"])


if __name__ == "__main__":
    main()
