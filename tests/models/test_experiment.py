"""Experiment expansion: the issue's bodies, order, naming, merging, stacking keys and errors."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from models.experiment import (
    Child,
    ExperimentSpec,
    deep_merge,
    expand,
    stack_groups,
    stack_key,
    variant_names,
)
from models.spec import NOTEBOOK_BN_LAYERS, NOTEBOOK_PLAIN_LAYERS, SpecError
from tests.support.paths import REPO

BN_PLACEMENT: dict[str, Any] = {
    "name": "bn-placement",
    "base": {"dataset": {"name": "concentric_circles", "n_samples": 500, "noise": 0.1},
             "network": {"hidden": [3, 2], "activation": "relu"},
             "training": {"epochs": 50, "batch_size": 32,
                          "optimizer": {"name": "adam", "lr": 0.001},
                          "validation_split": 0.2, "split": "random"}},
    "variants": {"network.batchnorm": ["none", "before_activation", "after_activation"]},
    "seeds": 5,
}

NOTEBOOK: dict[str, Any] = {
    "name": "notebook",
    "base": {"dataset": {"id": "nb0123"},
             "training": {"epochs": 200, "batch_size": 32,
                          "optimizer": {"name": "adam", "lr": 0.001},
                          "validation_split": 0.2, "split": "tail"}},
    "variants": [{"name": "plain", "network": {"layers": NOTEBOOK_PLAIN_LAYERS}},
                 {"name": "bn", "network": {"layers": NOTEBOOK_BN_LAYERS}}],
    "seeds": [1, 2, 3],
}


def children(body: dict[str, Any], max_children: int = 1000) -> list[Child]:
    return expand(ExperimentSpec.model_validate(body), max_children=max_children)


def errors_of(body: dict[str, Any], max_children: int = 1000) -> list[str]:
    with pytest.raises(SpecError) as info:
        children(body, max_children)
    return info.value.errors


def with_(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**body, **changes}


def test_bn_placement_body_gives_15_children_variants_outer_seeds_inner() -> None:
    kids = children(BN_PLACEMENT)
    assert len(kids) == 15
    assert [c.index for c in kids] == list(range(15))
    assert [(c.variant, c.seed) for c in kids[:6]] == [
        ("none", 0), ("none", 1), ("none", 2), ("none", 3), ("none", 4),
        ("before_activation", 0)]
    assert variant_names(ExperimentSpec.model_validate(BN_PLACEMENT)) == [
        "none", "before_activation", "after_activation"]
    c = kids[7]
    assert c.spec.name == "bn-placement/before_activation/seed=2"
    assert c.spec.training.seed == 2
    assert c.spec.network.batchnorm == "before_activation"
    assert c.spec.network.hidden == [3, 2]
    assert c.spec.training.split == "random"


def test_notebook_pair_gives_6_children_with_their_own_networks() -> None:
    kids = children(NOTEBOOK)
    assert [(c.variant, c.seed) for c in kids] == [
        ("plain", 1), ("plain", 2), ("plain", 3), ("bn", 1), ("bn", 2), ("bn", 3)]
    assert len(kids[0].spec.network.layers or []) == 3
    assert [layer.type for layer in kids[3].spec.network.layers or []] == [
        "dense", "batchnorm", "dense", "batchnorm", "dense"]
    assert all(c.spec.training.split == "tail" and c.spec.dataset.id == "nb0123"  # type: ignore[union-attr]
               for c in kids)


def test_expansion_is_deterministic() -> None:
    for body in (BN_PLACEMENT, NOTEBOOK):
        first, second = children(body), children(body)
        assert [c.spec.model_dump(mode="json") for c in first] == [
            c.spec.model_dump(mode="json") for c in second]
        assert [(c.index, c.variant, c.seed, c.stack_key) for c in first] == [
            (c.index, c.variant, c.seed, c.stack_key) for c in second]


def test_stack_key_groups_seeds_of_one_variant() -> None:
    kids = children(BN_PLACEMENT)
    groups, alone = stack_groups(kids)
    assert alone == []
    assert len(groups) == 3
    assert [[c.seed for c in g] for g in groups.values()] == [[0, 1, 2, 3, 4]] * 3
    assert all(len(c.stack_key or "") == 32 for c in kids)
    # the experiment's name does not enter the key; the spec does
    renamed = children(with_(BN_PLACEMENT, name="other"))
    assert [c.stack_key for c in renamed] == [c.stack_key for c in kids]


def test_reduce_on_plateau_children_cannot_stack() -> None:
    body = with_(BN_PLACEMENT, variants={"training.lr_schedule": [
        None, {"type": "reduce_on_plateau"}]}, seeds=2)
    kids = children(body)
    assert [c.variant for c in kids] == ["null", "null", '{"type":"reduce_on_plateau"}',
                                         '{"type":"reduce_on_plateau"}']
    assert kids[0].stack_key is not None
    assert kids[0].stack_key == kids[1].stack_key
    assert kids[2].stack_key is None
    assert kids[3].stack_key is None
    assert stack_groups(kids)[1] == kids[2:]


def test_grid_of_two_keys_names_cells_by_last_segment() -> None:
    body = with_(BN_PLACEMENT, variants={"network.batchnorm": ["none", "after_activation"],
                                         "training.optimizer.lr": [0.01, 0.001]}, seeds=1)
    kids = children(body)
    assert [c.variant for c in kids] == [
        "batchnorm=none,lr=0.01", "batchnorm=none,lr=0.001",
        "batchnorm=after_activation,lr=0.01", "batchnorm=after_activation,lr=0.001"]
    assert kids[1].spec.training.optimizer.lr == 0.001
    assert kids[1].spec.training.optimizer.name == "adam"  # merged, not replaced
    assert len({c.stack_key for c in kids}) == 4


def test_ambiguous_last_segments_fall_back_to_full_paths() -> None:
    body = with_(BN_PLACEMENT, seeds=1, variants={
        "network.momentum": [0.1], "training.optimizer.momentum": [0.0, 0.5]})
    names = [c.variant for c in children(body)]
    assert names == ["network.momentum=0.1,training.optimizer.momentum=0.0",
                     "network.momentum=0.1,training.optimizer.momentum=0.5"]


def test_named_variant_can_drop_base_keys_with_null_and_use_dotted_keys() -> None:
    body = with_(BN_PLACEMENT, seeds=[7], variants=[
        {"name": "explicit", "network": {"hidden": None, "layers": NOTEBOOK_PLAIN_LAYERS}},
        {"name": "lr=0.01", "training.optimizer.lr": 0.01}])
    plain, fast = children(body)
    assert plain.spec.network.hidden is None
    assert len(plain.spec.network.layers or []) == 3
    assert fast.spec.training.optimizer.lr == 0.01
    assert fast.spec.network.hidden == [3, 2]
    assert fast.spec.name == "bn-placement/lr=0.01/seed=7"


def test_base_name_and_seed_are_replaced_per_child() -> None:
    base = deep_merge(BN_PLACEMENT["base"], {"name": "x", "training": {"seed": 99}})
    kids = children(with_(BN_PLACEMENT, base=base, name=None, seeds=[4]))
    assert kids[0].spec.name == "experiment/none/seed=4"
    assert kids[0].spec.training.seed == 4


def test_deep_merge_is_json_merge_patch() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [3], "e": None}, "d": None}) == {"a": {"b": 1, "c": [3]}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # untouched


def test_unknown_path_and_bad_value_are_named() -> None:
    errors = errors_of(with_(BN_PLACEMENT, variants={
        "network.batchnrom": ["none"], "network.batchnorm": ["none", "sideways"]}))
    assert any("unknown path 'network.batchnrom'" in e and "batchnorm" in e for e in errors)
    assert any("'network.batchnorm' value \"sideways\"" in e and "before_activation" in e
               for e in errors)
    assert len(errors) == 2  # the bad value is reported once, not once per grid cell


def test_errors_say_which_variant_and_what() -> None:
    body = {"base": {"network": {"hidden": [3]}},
            "variants": [{"name": "a", "dataset": {"id": "d1"},
                          "network": {"layers": NOTEBOOK_PLAIN_LAYERS}},
                         {"name": "b", "dataset": {"id": "d1"}, "training": {"epochs": 0}},
                         {"name": "c"}],
            "seeds": 2}
    errors = errors_of(body)
    assert any(e.startswith("variant 'a': network") and "exactly one of" in e
               and '"hidden": null' in e for e in errors)
    assert any(e.startswith("variant 'b': training.epochs = 0") for e in errors)
    assert "variant 'c': dataset: Field required (set it in base or in the variant)" in errors
    missing_everywhere = errors_of({"base": {"network": {"hidden": [3]}},
                                    "variants": {"network.batchnorm": ["none"]}, "seeds": 1})
    assert missing_everywhere == ["base: dataset: Field required"]


@pytest.mark.parametrize(("variants", "needle"), [
    ({"training.seed": [1, 2]}, "seeds come from 'seeds'"),
    ({"name": ["x"]}, "name the experiment"),
    ({"network.layers.1.momentum": [0.1]}, "network.layers is not set"),
    ({"network.hidden.x": [1]}, "unknown path 'network.hidden.x'"),
    ({"network.batchnorm": ["none", "none"]}, "more than once"),
    ({"training.optimizer.lr": [1, "1"]}, "read the same as text"),
])
def test_grid_problems(variants: dict[str, list[Any]], needle: str) -> None:
    errors = errors_of(with_(BN_PLACEMENT, variants=variants))
    assert any(needle in e for e in errors), errors


def test_identical_variants_are_refused() -> None:
    body = with_(NOTEBOOK, variants=[{"name": "a", "network": {"layers": NOTEBOOK_BN_LAYERS}},
                                     {"name": "b", "network": {"layers": NOTEBOOK_BN_LAYERS}}])
    assert any("'a' and 'b' give the same job spec" in e for e in errors_of(body))


def test_too_many_children() -> None:
    errors = errors_of(BN_PLACEMENT, max_children=14)
    assert errors == ["the experiment has 3 variants x 5 seeds = 15 children; the limit is 14: "
                      "use fewer variants or seeds"]
    assert len(children(BN_PLACEMENT, max_children=15)) == 15


@pytest.mark.parametrize(("changes", "needle"), [
    ({"variants": {}}, "variants is empty"),
    ({"variants": []}, "variants is empty"),
    ({"variants": {"network.batchnorm": []}}, "has no values"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "duplicate names"),
    ({"variants": [{"name": "bad/name"}]}, "String should match pattern"),
    ({"seeds": 0}, "greater than or equal to 1"),
    ({"seeds": []}, "seeds is empty"),
    ({"seeds": [1, 2, 1]}, "[1] repeated"),
    ({"seeds": [-1]}, "greater than or equal to 0"),
    ({"metrics": ["val_f1"]}, "val_accuracy"),
    ({"bogus": 1}, "Extra inputs"),
])
def test_shape_errors_are_validation_errors(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        ExperimentSpec.model_validate(with_(BN_PLACEMENT, **changes))
    assert needle in str(info.value)


def test_defaults_for_the_summary() -> None:
    exp = ExperimentSpec.model_validate(BN_PLACEMENT)
    assert exp.metrics == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert exp.thresholds == {"val_accuracy": 0.7}
    assert exp.confidence == 0.95
    assert exp.seed_list() == [0, 1, 2, 3, 4]


def test_importable_without_torch() -> None:
    code = ("import sys, models.experiment; "
            "assert not {'torch', 'numpy', 'scipy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_children_keys_and_specs_agree_and_keras_momentum_converts_once() -> None:
    body = with_(BN_PLACEMENT, variants=[
        {"name": "keras-bn", "network": {"batchnorm": "after_activation", "momentum": 0.99,
                                         "momentum_convention": "keras"}}], seeds=3)
    kids = children(body)
    assert all(c.spec.network.momentum == pytest.approx(0.01) for c in kids)
    assert all(stack_key(c.spec) == c.stack_key for c in kids)
    assert len({c.stack_key for c in kids}) == 1


def test_switching_dataset_points_at_base_leftovers() -> None:
    body = with_(BN_PLACEMENT, variants={"dataset": [{"name": "moons"}]})
    body["base"] = deep_merge(body["base"], {"dataset": {"factor": 0.3}})
    errors = errors_of(body)
    assert any("'dataset' value" in e and "dataset.factor" in e and "null" in e
               for e in errors), errors
    body["variants"] = {"dataset": [{"name": "moons", "factor": None}]}
    assert children(body)[0].spec.dataset.name == "moons"  # type: ignore[union-attr]


def test_grid_can_index_into_base_layers() -> None:
    body = with_(NOTEBOOK, variants={"network.layers.1.momentum": [0.1, 0.01]}, seeds=1)
    body["base"] = deep_merge(body["base"], {"network": {"layers": NOTEBOOK_BN_LAYERS}})
    kids = children(body)
    assert [c.variant for c in kids] == ["0.1", "0.01"]
    assert [c.spec.network.layers[1].momentum for c in kids] == [0.1, 0.01]  # type: ignore[index,union-attr]
    assert kids[0].spec.network.layers[3].momentum == 0.1  # type: ignore[index,union-attr]


def test_named_variant_with_unknown_key_is_named() -> None:
    body = with_(NOTEBOOK, variants=[{"name": "a", "netwrok": {"layers": []}},
                                     {"name": "b", "training.optimizer.lrr": 0.1}])
    errors = errors_of(body)
    assert any(e.startswith("variant 'a': unknown path 'netwrok'") for e in errors), errors
    assert any(e.startswith("variant 'b': unknown path 'training.optimizer.lrr'")
               and "lr" in e for e in errors), errors


def test_stored_json_round_trips_to_the_same_children() -> None:
    for body in (BN_PLACEMENT, NOTEBOOK):
        exp = ExperimentSpec.model_validate(body)
        again = ExperimentSpec.model_validate(exp.model_dump(mode="json"))
        assert [c.spec for c in expand(again, max_children=100)] == [
            c.spec for c in expand(exp, max_children=100)]
