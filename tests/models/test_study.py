"""Studies below the service: the plan, a planted effect the study must find, a null case it
must not, and reproducibility. Children train in-process with the real trainer, stacked by
seed exactly as a worker stacks an experiment's siblings."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from models.datasets import load_table
from models.experiment import ExperimentSpec, NamedVariant, expand, stack_groups
from models.resolution import resolve_job
from models.stats import Run
from models.study import Claim, StudyError, StudySpec, analyze_claim, decide, plan
from models.trainer import train_many

CPU = torch.device("cpu")
CIRCLES = {"name": "concentric_circles", "n_samples": 400, "noise": 0.05, "factor": 0.5,
           "seed": 1}


def train_experiment(exp: ExperimentSpec) -> list[Run]:
    """Every child of the experiment, each stack of seed-siblings in one train_many call."""
    groups, alone = stack_groups(expand(exp, max_children=10_000))
    runs: list[Run] = []
    for group in [*groups.values(), *([c] for c in alone)]:
        spec = group[0].spec
        table = load_table(spec.dataset, content=None)
        job = resolve_job(spec, input_shape=table.input_shape, n_classes=table.n_classes,
                          n_rows=table.n_rows)
        results = train_many(job, table, seeds=[c.seed for c in group], device=CPU)
        runs += [Run(c.variant, c.seed, r.history) for c, r in zip(group, results, strict=True)]
    return runs


def run_study(spec: StudySpec) -> list[dict[str, Any]]:
    results = []
    for claim, exp in plan(spec):
        epochs = int(spec.base["training"]["epochs"])
        results.append(analyze_claim(claim, train_experiment(exp), spec, epochs=epochs,
                                     n_classes=2))
    return decide(results, alpha=spec.alpha)


def test_the_preset_plans_one_experiment_per_claim() -> None:
    spec = StudySpec(seeds=3)
    planned = plan(spec)
    assert [c for c, _ in planned] == list(Claim)
    counts = {c.value: len(expand(e, max_children=10_000)) for c, e in planned}
    assert counts == {"faster_convergence": 6, "higher_learning_rates": 24,
                      "init_insensitivity": 30, "regularization": 9, "batch_size": 24,
                      "placement": 6, "train_vs_inference": 3}
    # variants of a claim share everything but the seed within a stack: one stack per variant
    for _, exp in planned:
        children = expand(exp, max_children=10_000)
        groups, alone = stack_groups(children)
        assert not alone
        assert len(groups) == len({c.variant for c in children})


def test_plans_refuse_what_cannot_test_a_claim() -> None:
    with pytest.raises(StudyError, match="has no BatchNorm"):
        plan(StudySpec(base={"dataset": CIRCLES, "network": {"hidden": [4]}}))
    explicit = {"dataset": CIRCLES, "network": {"layers": [
        {"type": "dense", "units": 4, "activation": "relu"}, {"type": "batchnorm"},
        {"type": "dense", "units": 1, "activation": "sigmoid"}]}}
    with pytest.raises(StudyError, match="placement needs the base network as the hidden"):
        plan(StudySpec(base=explicit, claims=[Claim.placement]))
    # the other claims take explicit layers: "none" is the same list without its BN layers
    ((_, exp),) = plan(StudySpec(base=explicit, claims=[Claim.regularization]))
    none = next(v for v in exp.variants if isinstance(v, NamedVariant) and v.name == "none")
    assert [la["type"] for la in none.overrides()["network"]["layers"]] == ["dense", "dense"]


def planted_spec() -> StudySpec:
    # BatchNorm trained on batches of 2 has batch statistics far from the running ones it
    # serves with: by construction batch 2 hurts it far more than it hurts the same network
    # without BN.
    return StudySpec(
        name="planted", claims=[Claim.batch_size], seeds=6, batch_sizes=[2, 64],
        base={"dataset": CIRCLES,
              "network": {"hidden": [8, 8], "batchnorm": "before_activation"},
              "training": {"epochs": 4, "optimizer": {"lr": 0.01}, "split": "stratified"}})


def test_a_planted_effect_is_found() -> None:
    (entry,) = run_study(planted_spec())
    assert entry["claim"] == "batch_size"
    assert entry["verdict"] == "supported", entry
    assert entry["test"]["n"] == 6
    assert entry["test"]["mean"] > 0.05
    assert entry["adjusted_p"] is not None
    assert entry["adjusted_p"] < 0.05


def test_identical_variants_are_inconclusive_for_every_claim() -> None:
    """The null case: each claim's roles get the very same runs (the base network trained once
    per seed and per swept value), so every paired difference is 0."""
    spec = StudySpec(seeds=4, learning_rates=[0.01, 0.1], init_scales=[0.5, 2.0],
                     batch_sizes=[16, 64],
                     base={"dataset": CIRCLES,
                           "network": {"hidden": [6], "batchnorm": "before_activation"},
                           "training": {"epochs": 3, "record_train_mode_val": True}})
    results = []
    for claim, exp in plan(spec):
        runs = train_experiment(exp)
        roles = {"bn": "none", "before": "after"}
        mirrored = [Run(_swap(r.variant, roles), r.seed, r.history) for r in runs
                    if r.variant.startswith(("bn", "before"))]
        kept = [r for r in runs if r.variant.startswith(("bn", "before"))]
        if claim == Claim.train_vs_inference:  # train mode == eval mode: no BN in effect
            kept = [Run(r.variant, r.seed, {**r.history, "train_mode_val_accuracy":
                                            r.history["val_accuracy"]}) for r in kept]
        results.append(analyze_claim(claim, kept + mirrored, spec, epochs=3, n_classes=2))
    verdicts = decide(results, alpha=spec.alpha)
    assert [v["verdict"] for v in verdicts] == ["inconclusive"] * len(Claim), verdicts


def _swap(variant: str, roles: dict[str, str]) -> str:
    for a, b in roles.items():
        if variant == a or variant.startswith(a + " "):
            return b + variant[len(a):]
    return variant


def test_the_same_study_twice_gives_the_same_report() -> None:
    first = json.dumps(run_study(planted_spec()), sort_keys=True)
    second = json.dumps(run_study(planted_spec()), sort_keys=True)
    assert first == second
