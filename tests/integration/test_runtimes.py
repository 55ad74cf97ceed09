"""Both runtimes on every sample, against references computed without slserve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slserve.build.function import build_function
from slserve.errors import BuildError, InvalidInput, RuntimeUnavailable
from slserve.runtime import load_runtime
from slserve.runtime.base import RequestContext
from slserve.runtime.onnx_runtime import OnnxRuntime, check_single_install
from slserve.spec import load_function

SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome!",
    "Les chats dorment beaucoup.",  # not English
    "数据库连接失败",  # not Latin script
    "",  # empty
    "  lots   of    whitespace\tand\nnewlines  ",
    "emoji 🚀🔥 and punctuation?!…",
    " ".join(["a very long sentence that goes past the 256-token limit"] * 40),  # truncated at 256 tokens
]
TRUNCATE = RequestContext(options={"truncate": True})  # as sentence-transformers does, for the long sentence


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def sentence_transformers_reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from slserve_samples.minilm import model_dir

    model = SentenceTransformer(str(model_dir()), device="cpu")
    return np.asarray(model.encode(SENTENCES, normalize_embeddings=True, batch_size=len(SENTENCES)))


def test_minilm_torch_matches_sentence_transformers(build_sample, sentence_transformers_reference) -> None:  # type: ignore[no-untyped-def]
    runtime = load_runtime(build_sample("minilm-torch"))
    out = runtime.infer({"text": np.array(SENTENCES, dtype=object)}, TRUNCATE)["embedding"]
    assert out.shape == (len(SENTENCES), 384) and out.dtype == np.float32
    assert _cosine(out, sentence_transformers_reference).min() > 0.9999
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert runtime.device == "cpu"


def test_minilm_int8_variant_agrees_with_fp32_within_its_recorded_threshold(build_sample) -> None:  # type: ignore[no-untyped-def]
    int8 = build_sample("minilm-int8")
    fp32 = build_sample("minilm-onnx")
    agreement = int8.manifest.build.agreement
    threshold = int8.manifest.spec.source.min_agreement
    assert agreement["min_cosine"] >= threshold and agreement["mean_cosine"] > 0.98
    assert int8.manifest.weight_bytes < fp32.manifest.weight_bytes / 3  # int8 weights: a quarter, plus scales
    texts = {"text": np.array(SENTENCES, dtype=object)}
    got = load_runtime(int8).infer(texts, TRUNCATE)["embedding"]
    assert _cosine(got, load_runtime(fp32).infer(texts, TRUNCATE)["embedding"]).min() >= threshold


def test_minilm_fp16_variant_agrees_with_fp32_and_halves_the_weights(build_sample) -> None:  # type: ignore[no-untyped-def]
    fp16 = build_sample("minilm-fp16")
    fp32 = build_sample("minilm-onnx")
    agreement = fp16.manifest.build.agreement
    assert agreement["min_cosine"] >= fp16.manifest.spec.source.min_agreement >= 0.9999
    assert {t.dtype for t in fp16.manifest.tensors.values() if t.nbytes > 4096} == {"float16"}
    assert fp16.manifest.weight_bytes < fp32.manifest.weight_bytes * 0.55
    texts = {"text": np.array(SENTENCES, dtype=object)}
    got = load_runtime(fp16).infer(texts, TRUNCATE)["embedding"]
    assert got.dtype == np.float32  # fp32 at the edges: the signature is unchanged
    assert _cosine(got, load_runtime(fp32).infer(texts, TRUNCATE)["embedding"]).min() >= 0.9999


def test_a_variant_below_its_agreement_threshold_is_refused(copy_function, store) -> None:  # type: ignore[no-untyped-def]
    folder = copy_function("minilm-int8")
    spec = folder / "function.toml"
    spec.write_text(spec.read_text().replace("min_agreement = 0.95", "min_agreement = 0.9999"))
    with pytest.raises(
        BuildError, match=r"int8 variant's min cosine with fp32 is 0\.9\d+ .* below source.min_agreement"
    ):
        build_function(load_function(folder), store)
    assert store.ref("minilm-int8") is None  # nothing was published


def test_minilm_onnx_agrees_with_torch(build_sample, sentence_transformers_reference) -> None:  # type: ignore[no-untyped-def]
    torch_out = load_runtime(build_sample("minilm-torch")).infer({"text": np.array(SENTENCES, dtype=object)}, TRUNCATE)
    onnx_rt = load_runtime(build_sample("minilm-onnx"))
    assert isinstance(onnx_rt, OnnxRuntime) and onnx_rt.providers == ["CPUExecutionProvider"]
    onnx_out = onnx_rt.infer({"text": np.array(SENTENCES, dtype=object)}, TRUNCATE)
    assert _cosine(onnx_out["embedding"], torch_out["embedding"]).min() > 0.9999
    assert _cosine(onnx_out["embedding"], sentence_transformers_reference).min() > 0.9999


def test_minilm_one_sentence_equals_its_row_in_a_batch(build_sample) -> None:  # type: ignore[no-untyped-def]
    runtime = load_runtime(build_sample("minilm-onnx"))
    batch = runtime.infer({"text": np.array(SENTENCES[:3], dtype=object)}, TRUNCATE)["embedding"]
    single = runtime.infer({"text": np.array(SENTENCES[1:2], dtype=object)})["embedding"]
    assert _cosine(single[0], batch[1]) > 0.99999


def test_classifier_matches_onnxruntime_on_the_exported_model(build_sample) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    from slserve_samples.classifier import dataset, export_onnx

    x, y = dataset(n_per_class=50, seed=7)
    reference = ort.InferenceSession(export_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    ref_probs, ref_labels = reference.run(None, {"features": x})
    out = load_runtime(build_sample("classifier")).infer({"features": x})
    np.testing.assert_allclose(out["probabilities"], ref_probs, rtol=1e-5, atol=1e-6)
    assert np.array_equal(out["label"], ref_labels)
    assert (out["label"] == y).mean() > 0.9  # it learned the clusters


def test_big_mlp_matches_a_plain_torch_module(build_sample) -> None:  # type: ignore[no-untyped-def]
    from slserve_samples.big_mlp import build

    artifact = build_sample("big-mlp")
    assert 0.9e9 < artifact.manifest.weight_bytes < 1.2e9
    torch.manual_seed(artifact.manifest.spec.source.seed)
    reference = build().eval()
    x = np.random.default_rng(0).standard_normal((3, 1024)).astype(np.float32)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(x)).numpy()
    del reference
    out = load_runtime(artifact).infer({"x": x})["y"]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing input(s) ['features']"),
        ({"features": np.zeros((1, 4), np.float32), "extra": np.zeros(1)}, "unknown input(s) ['extra']"),
        ({"features": np.zeros((1, 4), np.float64)}, "datatype FP64 does not match the signature's FP32"),
        ({"features": np.zeros((1, 5), np.float32)}, "shape [1, 5] does not match the signature's [-1, 4]"),
        ({"features": np.zeros(4, np.float32)}, "shape [4] does not match"),
        ({"features": np.array(["a"], dtype=object)}, "datatype BYTES does not match"),
    ],
)
def test_bad_inputs_are_typed_errors(build_sample, inputs, message) -> None:  # type: ignore[no-untyped-def]
    runtime = load_runtime(build_sample("classifier"))
    with pytest.raises(InvalidInput) as info:
        runtime.infer(inputs)
    assert message in info.value.message
    assert info.value.status == 400
    assert runtime.infer({"features": np.zeros((2, 4), np.float32)})["label"].shape == (2,)  # still serving


def test_bytes_input_must_be_text(build_sample) -> None:  # type: ignore[no-untyped-def]
    runtime = load_runtime(build_sample("minilm-onnx"))
    with pytest.raises(InvalidInput, match="element 1 is int"):
        runtime.infer({"text": np.array(["ok", 3], dtype=object)})
    with pytest.raises(InvalidInput, match="shape"):
        runtime.infer({"text": np.array([["a"]], dtype=object)})


def test_cuda_request_on_a_cpu_host_is_a_clear_error(build_sample) -> None:  # type: ignore[no-untyped-def]
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with pytest.raises(RuntimeUnavailable, match="no usable CUDA"):
        load_runtime(build_sample("classifier"), device="cuda")


def test_exactly_one_onnxruntime_distribution_is_installed() -> None:
    check_single_install()  # the environment `make` built must never hold both wheels


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_minilm_on_cuda_matches_cpu(build_sample) -> None:  # type: ignore[no-untyped-def]
    text = {"text": np.array(SENTENCES, dtype=object)}
    cpu = load_runtime(build_sample("minilm-torch"), device="cpu").infer(text, TRUNCATE)["embedding"]
    gpu_rt = load_runtime(build_sample("minilm-torch"), device="cuda")
    assert gpu_rt.device == "cuda"
    assert _cosine(gpu_rt.infer(text, TRUNCATE)["embedding"], cpu).min() > 0.9999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_minilm_onnx_on_cuda_really_gets_the_cuda_provider(build_sample) -> None:  # type: ignore[no-untyped-def]
    runtime = load_runtime(build_sample("minilm-onnx"), device="cuda")
    assert isinstance(runtime, OnnxRuntime)
    assert runtime.providers[0] == "CUDAExecutionProvider"  # what the session got, not what the wheel lists
    text = {"text": np.array(SENTENCES, dtype=object)}
    cpu = load_runtime(build_sample("minilm-onnx"), device="cpu").infer(text, TRUNCATE)["embedding"]
    assert _cosine(runtime.infer(text, TRUNCATE)["embedding"], cpu).min() > 0.9999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_minilm_fp16_on_cuda_agrees_with_fp32_and_batching_was_proven_there(build_sample) -> None:  # type: ignore[no-untyped-def]
    artifact = build_sample("minilm-fp16")
    runtime = load_runtime(artifact)  # the function names a GPU: CUDA on this host
    assert runtime.device == "cuda"
    assert set(artifact.manifest.build.batch_floors) == {"cpu", "cuda"}
    text = {"text": np.array(SENTENCES, dtype=object)}
    cpu = load_runtime(build_sample("minilm-onnx"), device="cpu").infer(text, TRUNCATE)["embedding"]
    assert _cosine(runtime.infer(text, TRUNCATE)["embedding"], cpu).min() >= artifact.manifest.spec.source.min_agreement


@pytest.mark.parametrize("function", ["minilm-torch", "minilm-onnx"])
def test_more_threads_are_granted_only_where_they_give_the_one_thread_rows(build_sample, function: str) -> None:  # type: ignore[no-untyped-def]
    """MiniLM's builds prove, per text length bucket and call size, where two threads compute the same bits as
    one (torch: its thread count per call; ONNX Runtime: a second session); everywhere they granted them, they
    do."""
    from slserve.host import cores
    from slserve.runtime.batching import merge, shape_key

    if cores() < 2:
        pytest.skip("one core: no thread counts to prove")
    artifact = build_sample(function)
    grants = artifact.manifest.build.thread_grants["cpu"]
    floors = artifact.manifest.build.batch_floors["cpu"]
    assert grants and set(grants) <= set(floors)
    runtime = load_runtime(artifact, device="cpu")
    examples = {shape_key(f): f for f in runtime.feed_examples()}
    checked = 0
    for key, sizes in sorted(grants.items())[:4]:
        one = {k: v[:1] for k, v in examples[key].items()}
        for size, threads in sorted(sizes.items())[:2]:
            merged, _ = merge([one], int(size))
            runtime.set_threads(1)  # type: ignore[attr-defined]
            reference = runtime.run(merged)
            runtime.set_threads(threads)  # type: ignore[attr-defined]
            produced = runtime.run(merged)
            assert all(np.array_equal(produced[k], reference[k]) for k in reference), (key, size)
            checked += 1
    runtime.set_threads(1)  # type: ignore[attr-defined]
    assert checked >= 4


def test_onnx_sessions_for_more_threads_are_made_in_the_background(build_sample) -> None:  # type: ignore[no-untyped-def]
    """An instance asks for its granted thread counts' sessions at start; until one is made, calls run on the
    serving session (one thread: always exact), and none waits for it."""
    import time

    runtime = load_runtime(build_sample("minilm-onnx"), device="cpu")
    serving = runtime.session  # type: ignore[attr-defined]
    runtime.prepare_threads({2})  # type: ignore[attr-defined]
    runtime.set_threads(2)  # type: ignore[attr-defined]
    assert runtime.session is serving or 2 in runtime._sessions  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while 2 not in runtime._sessions:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the two-thread session was never made"
        time.sleep(0.01)
    runtime.set_threads(1)  # type: ignore[attr-defined]
    runtime.set_threads(2)  # type: ignore[attr-defined]
    assert runtime.session is runtime._sessions[2] is not serving  # type: ignore[attr-defined]
    text = {"text": np.array(SENTENCES, dtype=object)}
    two = runtime.infer(text, TRUNCATE)["embedding"]
    runtime.set_threads(1)  # type: ignore[attr-defined]
    assert np.array_equal(two, runtime.infer(text, TRUNCATE)["embedding"])
