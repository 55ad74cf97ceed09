"""Pipelines' parts without a server: specs, the graph check (misfits name both ends), built-in ops, feature
tables (CSV and Parquet through pyarrow, the cache's bound and TTL), and the graph run (steps at once, errors
naming the step)."""

from __future__ import annotations

import asyncio
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from slserve.compose import ops
from slserve.compose.catalog import PipelineCatalog, build_pipeline, signatures_of
from slserve.compose.graph import Graph
from slserve.compose.run import lookup, run_graph
from slserve.compose.spec import PipelineDef, PipelineSpec, Step, parse_pipeline
from slserve.errors import EntityNotFound, InvalidInput, RuntimeUnavailable, SpecError
from slserve.features import CachedFeatures, SQLiteFeatureStore
from slserve.features.load import load_table
from slserve.snapshot import ArtifactStore
from slserve.spec import Datatype, FunctionSpec, Signature, TensorSpec

ROOT = Path(__file__).resolve().parents[2]


def function(
    model: str, version: str, inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]]
) -> Any:
    class F:
        name = f"{model}-v{version}"
        spec = FunctionSpec.model_validate(
            {
                "model": {"name": model, "version": version},
                "source": {"framework": "onnx", "path": "m.onnx"},
                "signature": {
                    "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in inputs],
                    "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in outputs],
                },
            }
        )

    return F()


FUNCTIONS = [
    function("minilm", "1", [("text", "BYTES", [-1])], [("embedding", "FP32", [-1, 384])]),
    function(
        "triage", "1", [("features", "FP32", [-1, 388])], [("probabilities", "FP32", [-1, 3]), ("queue", "INT64", [-1])]
    ),
]
SAMPLE = tomllib.loads((ROOT / "functions" / "ticket-router" / "pipeline.toml").read_text())


def sample(**changes: Any) -> dict[str, Any]:
    doc = {**SAMPLE, "steps": [dict(s) for s in SAMPLE["steps"]]}
    for where, value in changes.items():
        index, field = where.split("__")
        doc["steps"][int(index)][field] = value
    return doc


def check(doc: dict[str, Any], functions: list[Any] = FUNCTIONS) -> Graph:
    return Graph.check(parse_pipeline(doc, "pipeline.toml"), signatures_of(functions))


def test_the_sample_pipeline_checks_and_orders_its_steps() -> None:
    graph = check(sample())
    assert [s.name for s in graph.order] == ["embed", "customer", "joined", "triage"]
    assert graph.needs["joined"] == {"embed", "customer"}
    assert graph.tensors["joined.output"].shape == [-1, 388]


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        (
            {"1__width": 8},
            "triage version 1's input 'features' is FP32 [-1, 388], but it is wired to joined.output (FP32 [-1, 392])",
        ),
        (
            {"0__inputs": {"text": "customer_id", "extra": "text"}},
            "wires inputs ['extra', 'text']; minilm version 1 takes ['text']",
        ),
        (
            {"2__inputs": ["embed.embedding", "custmer.features"]},
            "reads 'custmer.features', which is neither a pipeline input",
        ),
        ({"3__model": "nope"}, "model 'nope' is served by no function"),
        ({"2__inputs": ["embed.embedding", "triage.probabilities"]}, "read each other in a cycle"),
    ],
)
def test_a_misfit_is_a_build_error_naming_both_ends(changes: dict[str, Any], said: str) -> None:
    with pytest.raises(SpecError) as e:
        check(sample(**changes))
    assert said in e.value.message


def test_outputs_and_unused_steps_are_checked() -> None:
    doc = sample()
    doc["outputs"] = {"probabilities": "embed.embedding", "queue": "triage.queue"}
    with pytest.raises(
        SpecError, match=r"output 'probabilities' is declared FP32 \[-1, 3\] but is wired to embed.embedding"
    ):
        check(doc)
    doc = sample()
    doc["steps"].append({"name": "spare", "op": "normalize", "inputs": ["embed.embedding"]})
    with pytest.raises(SpecError, match=r"steps \['spare'\] feed no other step and no output"):
        check(doc)


def test_a_step_that_may_reach_versions_with_other_outputs_must_pin_one() -> None:
    v2 = function(
        "triage", "2", [("features", "FP32", [-1, 388])], [("probabilities", "FP32", [-1, 4]), ("queue", "INT64", [-1])]
    )
    with pytest.raises(
        SpecError, match="may reach triage version 1 and triage version 2, which return different outputs"
    ):
        check(sample(), [*FUNCTIONS, v2])
    assert check(sample(**{"3__version": "1"}), [*FUNCTIONS, v2])


@pytest.mark.parametrize(
    ("step", "said"),
    [
        ({"name": "a", "model": "m", "op": "concat"}, "exactly one of model, op or lookup"),
        ({"name": "a", "op": "topk", "inputs": ["x"]}, "op 'topk' needs k"),
        ({"name": "a", "lookup": "t", "key": "x"}, "a lookup needs key"),
        ({"name": "a", "lookup": "t", "key": "x", "width": 2, "default": [1.0]}, "default has 1 values, width is 2"),
        ({"name": "a", "model": "m", "inputs": ["x"]}, "a model step's inputs are a table"),
    ],
)
def test_step_specs_say_what_is_wrong(step: dict[str, Any], said: str) -> None:
    doc = {**SAMPLE, "steps": [step]}
    with pytest.raises(SpecError, match=said):
        parse_pipeline(doc, "pipeline.toml")


def test_ops() -> None:
    x = np.array([[3.0, 4.0, 1.0], [1.0, 1.0, 2.0]], dtype=np.float32)
    s = Step(name="s", op="select", inputs=["x"], columns=[2, 0])
    assert ops.apply(s, [x])["output"].tolist() == [[1.0, 3.0], [2.0, 1.0]]
    t = Step(name="t", op="topk", inputs=["x"], k=2)
    out = ops.apply(t, [x])
    assert out["values"].tolist() == [[4.0, 3.0], [2.0, 1.0]] and out["indices"].tolist() == [[1, 0], [2, 0]]
    n = Step(name="n", op="normalize", inputs=["x"])
    assert np.allclose(np.linalg.norm(ops.apply(n, [x[:, :2]])["output"], axis=1), 1.0)
    r = Step(name="r", op="reshape", inputs=["x"], shape=[3, 1])
    assert ops.apply(r, [x])["output"].shape == (2, 3, 1)
    c = Step(name="c", op="concat", inputs=["x", "y"])
    with pytest.raises(InvalidInput, match=r"different numbers of rows \[1, 2\]"):
        ops.apply(c, [x, x[:1]])
    spec = TensorSpec(name="x", datatype=Datatype.FP32, shape=[-1, 3])
    assert ops.infer(c, [spec, spec])["output"].shape == [-1, 6]
    with pytest.raises(SpecError, match="k = 5 is more than the 3 columns of 'x'"):
        ops.infer(Step(name="t", op="topk", inputs=["x"], k=5), [spec])


CSV = "id,plan,spend\n007,1,2.5\n8,2,0.5\n"


def test_feature_tables_load_from_csv_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    from pyarrow import parquet

    store = SQLiteFeatureStore(tmp_path / "features.sqlite")
    (tmp_path / "f.csv").write_text(CSV)
    loaded = load_table(store, "t", tmp_path / "f.csv")
    assert (loaded.rows, loaded.columns) == (2, ["plan", "spend"])
    got = store.get("t", ["007", "7", "8"])  # keys stay text: "007" is not 7
    assert sorted(got) == ["007", "8"] and got["007"].tolist() == [1.0, 2.5]
    parquet.write_table(pa.table({"user": [5, 6], "a": [0.5, 1.5], "b": [1, 2]}), tmp_path / "f.parquet")
    load_table(store, "t", tmp_path / "f.parquet", key="user")  # replaces the table whole
    assert sorted(store.get("t", ["007", "5", "6"])) == ["5", "6"]
    assert store.info("t").columns == ["a", "b"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("id,plan\n1,2\n1,3\n", "keys appear more than once: ['1']"),
        ("id,plan\n1,\n2,3\n", "column 'plan' has 1 missing value"),
        ("id,plan\n1,gold\n", "column 'plan' is string; feature columns are numbers"),
        ("id\n1\n", "no feature columns"),
    ],
)
def test_bad_feature_files_are_refused_and_change_nothing(tmp_path: Path, text: str, said: str) -> None:
    store = SQLiteFeatureStore(tmp_path / "features.sqlite")
    (tmp_path / "good.csv").write_text(CSV)
    load_table(store, "t", tmp_path / "good.csv")
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(InvalidInput, match=said.replace("[", r"\[").replace("]", r"\]")):
        load_table(store, "t", tmp_path / "bad.csv")
    assert store.info("t").rows == 2  # type: ignore[union-attr]


def test_a_reader_never_creates_the_table_file(tmp_path: Path) -> None:
    store = SQLiteFeatureStore(tmp_path / "state" / "features.sqlite")
    assert store.info("t") is None and store.get("t", ["1"]) == {} and store.tables() == []
    assert not (tmp_path / "state").exists()  # a read-only state folder (the router on Lambda) stays untouched


def test_the_cache_is_bounded_and_expires(tmp_path: Path) -> None:
    store = SQLiteFeatureStore(tmp_path / "features.sqlite")
    (tmp_path / "f.csv").write_text(CSV)
    load_table(store, "t", tmp_path / "f.csv")
    cache = CachedFeatures(store, entries=1, ttl_s=0.2)
    cache.get("t", ["007"])
    cache.get("t", ["007"])
    assert (cache.hits, cache.misses) == (1, 1)
    cache.get("t", ["8"])  # one entry at most: "007" goes
    cache.get("t", ["007"])
    assert cache.misses == 3
    (tmp_path / "g.csv").write_text("id,plan,spend\n007,9,9\n8,9,9\n")
    load_table(store, "t", tmp_path / "g.csv")
    deadline = time.monotonic() + 5
    while cache.get("t", ["007"])["007"][0] != 9.0:  # the reload is seen once the cached row expires
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_lookup_defaults_and_unknown_keys(tmp_path: Path) -> None:
    store = SQLiteFeatureStore(tmp_path / "features.sqlite")
    (tmp_path / "f.csv").write_text(CSV)
    load_table(store, "t", tmp_path / "f.csv")
    keys = np.array([b"8", b"nobody", b"007"], dtype=object)
    step = Step(name="who", lookup="t", key="k", width=2, default=[0.0, -1.0])
    assert lookup(step, keys, store).tolist() == [[2.0, 0.5], [0.0, -1.0], [1.0, 2.5]]
    with pytest.raises(EntityNotFound, match="has no key 'nobody'"):
        lookup(step.model_copy(update={"default": None}), keys, store)
    with pytest.raises(RuntimeUnavailable, match="has 2 features per key, the step takes 3"):
        lookup(step.model_copy(update={"width": 3, "default": None}), keys, store)
    with pytest.raises(RuntimeUnavailable, match="feature table 'other' is not loaded"):
        lookup(step.model_copy(update={"lookup": "other"}), keys, store)
    assert lookup(step, np.array([8], dtype=np.int64), store).tolist() == [[2.0, 0.5]]


FAN = {
    "model": {"name": "fan"},
    "signature": {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    },
    "steps": [
        {"name": "a", "model": "slow", "inputs": {"x": "x"}},
        {"name": "b", "model": "slow", "inputs": {"x": "x"}},
        {"name": "both", "op": "concat", "inputs": ["a.y", "b.y"]},
    ],
    "outputs": {"y": "both.output"},
}


def test_independent_steps_run_at_once_and_errors_name_their_step() -> None:
    slow = function("slow", "1", [("x", "FP32", [-1, 2])], [("y", "FP32", [-1, 2])])
    graph = Graph.check(PipelineSpec.model_validate(FAN), signatures_of([slow]))

    started: dict[str, asyncio.Event] = {}

    async def call_model(step: Step, inputs: dict[str, np.ndarray]) -> Any:
        # Each step answers only once the other has started: run one after the other, they would wait for ever.
        started.setdefault(step.name, asyncio.Event()).set()
        other = "b" if step.name == "a" else "a"
        await asyncio.wait_for(started.setdefault(other, asyncio.Event()).wait(), 10)
        if inputs["x"][0, 0] < 0:
            raise InvalidInput("negative")

        outputs = {"y": inputs["x"] * (2 if step.name == "a" else 3)}
        return SimpleNamespace(result=SimpleNamespace(outputs=outputs), cost=1)

    x = np.ones((1, 2), dtype=np.float32)
    done = asyncio.run(run_graph(graph, {"x": x}, call_model, None))
    assert done.outputs["y"].tolist() == [[2.0, 2.0, 3.0, 3.0]]
    started.clear()
    with pytest.raises(InvalidInput, match=r"^step 'a' \(model slow\): negative$"):
        asyncio.run(run_graph(graph, {"x": -x}, call_model, None))


def test_a_published_pipeline_serves_until_rebuilt(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    folder = tmp_path / "functions" / "ticket-router"
    folder.mkdir(parents=True)
    text = (ROOT / "functions" / "ticket-router" / "pipeline.toml").read_text()
    (folder / "pipeline.toml").write_text(text)
    catalog = PipelineCatalog(store, tmp_path / "functions")
    assert catalog.pipelines()["ticket-router"].error == "ticket-router is not built: run `slserve build ticket-router`"
    pdef = PipelineDef(name="ticket-router", directory=folder, spec=parse_pipeline(SAMPLE, "x"))
    digest = build_pipeline(pdef, FUNCTIONS, store)
    assert catalog.refresh() and catalog.pipelines()["ticket-router"].digest == digest
    (folder / "pipeline.toml").write_text(text.replace('version = "1"', 'version = "2"', 1))
    assert catalog.refresh()
    served = catalog.pipelines()["ticket-router"]
    assert served.digest == digest and served.spec.model.version == "1"  # the last build, as built
    assert served.stale is not None and "changed since its build" in served.stale


def test_signature_types_are_shared() -> None:
    assert isinstance(Signature.model_validate(SAMPLE["signature"]), Signature)
