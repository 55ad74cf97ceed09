"""How far a derived variant (int8, fp16) strays from its fp32 source, on a built-in calibration set; a variant
that strays more than its spec allows is refused."""

from __future__ import annotations

import numpy as np

from slserve.drift.comparison import OutputComparison
from slserve.errors import BuildError
from slserve.runtime.base import load_runtime
from slserve.runtime.onnx_runtime import CPU
from slserve.runtime.tensors import NUMPY_OF
from slserve.snapshot import Artifact
from slserve.spec import Datatype, FunctionDef, Signature

CALIBRATION_ROWS = 32
CALIBRATION_TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "A cheetah is running behind its prey.",
    "The new movie is awesome.",
    "The cat sits outside.",
    "The new movie is so great.",
    "I love pasta.",
    "Do you like pizza?",
    "Serverless inference scales to zero.",
    "Der Himmel ist blau.",
    "Il pleut.",
    "How do I reset my password?",
    "The quick brown fox jumps over the lazy dog.",
    "ok",
    "Quarterly revenue grew by twelve percent.",
    "Photosynthesis converts light into chemical energy.",
    "Please send the invoice by Friday.",
    "The train leaves at nine.",
    "What is the capital of France?",
    "He plays the guitar badly but loudly.",
    "Rain is expected tomorrow afternoon.",
    "Our API returns embeddings as float32 arrays.",
    "She finished the marathon in under four hours.",
    "Bring an umbrella.",
    "Tensors are never re-encoded as JSON inside the house.",
]


def calibration_inputs(signature: Signature) -> dict[str, np.ndarray]:
    """Deterministic inputs for any signature: real sentences for text, seeded normals for numbers."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for t in signature.inputs:
        shape = [CALIBRATION_ROWS, *(8 if d == -1 else d for d in t.shape[1:])]
        if t.datatype is Datatype.BYTES:
            texts = [s.encode() for s in CALIBRATION_TEXTS[:CALIBRATION_ROWS]]
            out[t.name] = np.array(texts, dtype=object).reshape([CALIBRATION_ROWS, *([1] * (len(shape) - 1))])
        elif NUMPY_OF[t.datatype].kind == "f":
            out[t.name] = rng.standard_normal(shape).astype(NUMPY_OF[t.datatype])
        else:
            out[t.name] = np.zeros(shape, dtype=NUMPY_OF[t.datatype])
    return out


def check_agreement(fdef: FunctionDef, artifact: Artifact, reference: bytes) -> dict[str, float]:
    import onnxruntime as ort

    variant = load_runtime(artifact, device="cpu")
    session = ort.InferenceSession(reference, providers=[CPU])
    feeds = variant.prepare(calibration_inputs(fdef.spec.signature))
    wanted = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted}), strict=True))
    got = variant.run(feeds)
    stats = OutputComparison()
    stats.add(expected, got)
    summary = {k: float(v) for k, v in stats.to_dict().items() if v is not None and k not in ("requests", "failures")}
    score = summary.get("min_cosine", summary.get("argmax_agreement", 1.0))
    threshold = fdef.spec.source.min_agreement
    if score < threshold:
        what = "min cosine" if "min_cosine" in summary else "label agreement"
        raise BuildError(
            f"{fdef.name}: the {fdef.spec.source.quantize} variant's {what} with fp32 is {score:.6f} on the "
            f"calibration set, below source.min_agreement = {threshold}; keep fp32 or lower the threshold"
        )
    return summary
