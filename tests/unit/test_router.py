"""The route table: versions, aliases, sticky canaries, shadows and tier fallback, as pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from slserve.errors import InvalidInput, ModelNotFound, SpecError
from slserve.router import RoutesConfig, RouteTable, load_routes
from slserve.spec import FunctionDef, FunctionSpec, version_order

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}


def function(name: str, model: str, version: str, tier: str) -> FunctionDef:
    spec = FunctionSpec.model_validate(
        {
            "model": {"name": model, "version": version},
            "source": {"framework": "onnx", "path": "model.onnx"},
            "signature": SIGNATURE,
            "tier": tier,
        }
    )
    return FunctionDef(name=name, directory=Path("/nowhere") / name, spec=spec)


FUNCTIONS = [
    function("enc-v1-int8", "enc", "1", "economy"),
    function("enc-v1", "enc", "1", "standard"),
    function("enc-v2", "enc", "2", "standard"),
    function("enc-v2-gpu", "enc", "2", "premium"),
    function("enc-v10", "enc", "10", "standard"),
]


def table(models: dict[str, object] | None = None, tiers: dict[str, object] | None = None) -> RouteTable:
    raw: dict[str, object] = {"models": models or {}}
    if tiers is not None:
        raw["tiers"] = tiers
    return RouteTable.build(FUNCTIONS, RoutesConfig.model_validate(raw))


def test_latest_is_the_highest_version_in_natural_order() -> None:
    assert version_order("10") > version_order("2") and version_order("1.10") > version_order("1.9")
    route = table().resolve("enc", None, "key", None)
    assert (route.version, route.alias) == ("10", "latest")
    pinned = table().resolve("enc", "1", "key", None)
    assert (pinned.version, pinned.alias) == ("1", None)


def test_a_90_10_canary_is_sticky_and_within_3_points_over_2000_keys() -> None:
    t = table({"enc": {"aliases": {"canary": {"split": {"1": 90, "2": 10}}}}})
    picks = [t.resolve("enc", "canary", f"key-{i}", None).version for i in range(2000)]
    share = picks.count("2") / len(picks) * 100
    assert 7 <= share <= 13, share
    for i in range(0, 2000, 97):  # one key, one version, every time
        assert {t.resolve("enc", "canary", f"key-{i}", None).version for _ in range(5)} == {picks[i]}


def test_aliases_chain_and_default() -> None:
    t = table({"enc": {"default": "stable", "aliases": {"stable": {"version": "prod"}, "prod": {"version": "2"}}}})
    route = t.resolve("enc", None, "k", None)
    assert (route.version, route.alias) == ("2", "stable")


def test_shadow_is_drawn_by_percent_and_never_changes_the_primary() -> None:
    t = table({"enc": {"aliases": {"stable": {"version": "1", "shadow": {"version": "2", "percent": 25}}}}})
    drawn = t.resolve("enc", "stable", "k", None, shadow_draw=0.1)
    assert drawn.version == "1" and drawn.shadow[0] == ("standard", "enc-v2")  # the caller's tier first
    missed = t.resolve("enc", "stable", "k", None, shadow_draw=0.3)
    assert missed.version == "1" and missed.shadow == []


def test_tier_fallback_downgrades_but_never_upgrades_unasked() -> None:
    t = table()
    assert t.resolve("enc", "1", "k", "standard").candidates == [("standard", "enc-v1"), ("economy", "enc-v1-int8")]
    assert t.resolve("enc", "1", "k", None).tier == "standard"
    with pytest.raises(ModelNotFound, match="allow an upgrade"):
        t.resolve("enc", "10", "k", "economy")
    upgraded = t.resolve("enc", "10", "k", "economy", allow_upgrade=True)
    assert upgraded.candidates == [("standard", "enc-v10")]
    premium = t.resolve("enc", "2", "k", "premium").candidates
    assert premium == [("premium", "enc-v2-gpu"), ("standard", "enc-v2")]
    strict = table(tiers={"economy": {"rank": 0}, "standard": {"rank": 1, "fallback": "none"}, "premium": {"rank": 2}})
    assert strict.resolve("enc", "1", "k", "standard").candidates == [("standard", "enc-v1")]


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"enc": {"aliases": {"canary": {"split": {"1": 90, "7": 10}}}}}, "unknown version(s) ['7']"),
        ({"enc": {"aliases": {"a": {"version": "b"}, "b": {"version": "a"}}}}, "cycle: a -> b -> a"),
        ({"enc": {"aliases": {"a": {"version": "nope"}}}}, "neither a version"),
        ({"enc": {"aliases": {"1": {"version": "2"}}}}, "also version names"),
        ({"enc": {"default": "gone"}}, "default 'gone'"),
        ({"other": {}}, "no function serves"),
        ({"enc": {"aliases": {"s": {"version": "1", "shadow": {"version": "9", "percent": 5}}}}}, "shadows unknown"),
    ],
)
def test_bad_routes_are_rejected_with_a_clear_message(models: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        table(models)


def test_bad_route_files_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[models.enc.aliases.canary]\nsplit = { "1" = 90, "2" = 20 }\n')
    with pytest.raises(SpecError, match="sum to 110"):
        load_routes(path)
    path.write_text('[models.enc.aliases.canary]\nversion = "1"\nsplit = { "1" = 100 }\n')
    with pytest.raises(SpecError, match="either `version` or `split`"):
        load_routes(path)
    assert load_routes(tmp_path / "missing.toml") == RoutesConfig()


def test_unknown_model_version_and_tier() -> None:
    t = table()
    with pytest.raises(ModelNotFound, match="unknown model 'nope'"):
        t.resolve("nope", None, "k", None)
    with pytest.raises(ModelNotFound, match="no version or alias 'v3'"):
        t.resolve("enc", "v3", "k", None)
    with pytest.raises(InvalidInput, match="unknown tier 'gold'"):
        t.resolve("enc", "1", "k", "gold")


def test_a_function_named_like_another_model_is_refused() -> None:
    hidden = [*FUNCTIONS, function("clf", "clf", "1", "standard"), function("enc", "clf", "2", "standard")]
    with pytest.raises(SpecError, match="function 'enc' \\(model 'clf'\\) has the name of another model"):
        RouteTable.build(hidden, RoutesConfig())
    own_name = [*FUNCTIONS, function("clf", "clf", "1", "standard")]  # a function named like its own model is fine
    assert RouteTable.build(own_name, RoutesConfig()).resolve("clf", None, "k", None).candidates == [
        ("standard", "clf")
    ]


def test_route_editing_keeps_the_operator_s_comments_and_tables(tmp_path: Path) -> None:
    from slserve.router.edit import RoutesFile

    path = tmp_path / "routes.toml"
    path.write_text(
        "# ours: do not lose this\n"
        "[tiers.economy]  # the cheap one\nrank = 0\nprice_per_request = 7\n\n"
        "[tiers.standard]\nrank = 1\n\n[tiers.premium]\nrank = 2\n\n"
        '[models.enc]\ndefault = "stable"  # what callers get\n\n'
        '[models.enc.aliases.stable]\nversion = "1"\n'
    )
    routes = RoutesFile(path, FUNCTIONS)
    routes.set_alias("enc", "canary", ["1=90", "2=10"])
    routes.set_shadow("enc", "canary", "2", 5)
    text = path.read_text()
    assert "# ours: do not lose this" in text and "# the cheap one" in text and "# what callers get" in text
    config = routes.load()
    assert config.tiers["economy"].price_per_request == 7 and config.models["enc"].default == "stable"
    canary = config.models["enc"].aliases["canary"]
    assert canary.split == {"1": 90, "2": 10} and canary.shadow is not None and canary.shadow.percent == 5
    routes.rollback()
    assert "canary" in path.read_text() and routes.load().models["enc"].aliases["canary"].shadow is None
