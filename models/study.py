"""Studies: the seed's claims about BatchNorm, each tested as one experiment on the user's data
and network, with a measure, a paired comparison and a decision rule.

A study is a plan (`plan`): per claim an `ExperimentSpec` whose variants are named by their
role ("bn", "none", "before", "after", or a grid cell such as "bn lr=0.01"), children paired by
seed (same split, batch order and shared initial weights) and stacked where they can be. When
its experiments have run, `analyze_claim` turns each claim's runs into per-seed measures and a
paired test oriented so that a positive difference is the claim's direction; `decide` applies
the Holm correction across the study's claims and gives each a verdict: `supported`,
`contradicted` or `inconclusive`, with the numbers it came from and what would firm it up.

Importable without torch (the API plans and analyzes; workers only train the children).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models import claim_stats as cs
from models.experiment import ExperimentSpec
from models.stats import Run


class Claim(StrEnum):
    faster_convergence = "faster_convergence"
    higher_learning_rates = "higher_learning_rates"
    init_insensitivity = "init_insensitivity"
    regularization = "regularization"
    batch_size = "batch_size"
    placement = "placement"
    train_vs_inference = "train_vs_inference"


CLAIM_TEXT: dict[Claim, str] = {
    Claim.faster_convergence: "BatchNorm accelerates training",
    Claim.higher_learning_rates: "BatchNorm allows higher learning rates",
    Claim.init_insensitivity: "BatchNorm reduces sensitivity to initialisation",
    Claim.regularization: "BatchNorm acts as a regulariser",
    Claim.batch_size: "BatchNorm works best with batches of 16-32 or more",
    Claim.placement: "BatchNorm works best placed before the activation",
    Claim.train_vs_inference: "BatchNorm behaves differently in training and inference",
}

PRESETS: dict[str, list[Claim]] = {"bn-claims": list(Claim)}

# The notebook's BN network as shorthand (dense 3 relu, BN, dense 2 relu, BN, sigmoid) on its
# dataset; the plain variant is the same widths without BN.
DEFAULT_BASE: dict[str, Any] = {
    "dataset": {"name": "concertriccir2"},
    "network": {"hidden": [3, 2], "activation": "relu", "batchnorm": "after_activation"},
    "training": {"epochs": 200, "batch_size": 32, "validation_split": 0.2, "split": "tail"},
}


class StudySpec(BaseModel):
    """The POST /v1/studies body."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.=,+\- ]{1,60}$")
    preset: Literal["bn-claims"] | None = "bn-claims"
    claims: list[Claim] | None = Field(default=None, description=(
        "the claims to test (default: the preset's); each is one experiment"))
    base: dict[str, Any] = Field(default_factory=lambda: copy.deepcopy(DEFAULT_BASE),
                                 description="a partial JobSpec; its network must use BatchNorm")
    seeds: int = Field(default=20, ge=2, le=1000)
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    confidence: float = Field(default=0.95, ge=0.5, le=0.999)
    learning_rates: list[float] = Field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0],
                                        min_length=2, max_length=8)
    init_scales: list[float] = Field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0],
                                     min_length=2, max_length=8)
    batch_sizes: list[int] = Field(default_factory=lambda: [2, 8, 32, 128], min_length=2,
                                   max_length=8)
    dropout_rate: float = Field(default=0.2, gt=0.0, lt=1.0, description=(
        "regularization: the rate of a third variant, the plain network with dropout after "
        "each hidden layer (shorthand networks only)"))
    threshold_fraction: float = Field(default=0.9, gt=0.0, le=1.0, description=(
        "faster_convergence: the val_accuracy to reach, as a fraction of the best any run "
        "reaches"))

    @field_validator("learning_rates", "init_scales")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not (x > 0 and math.isfinite(x)) for x in v):
            raise ValueError("values must be positive numbers")
        return sorted(set(v))

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if any(b < 2 for b in v):
            raise ValueError("batch sizes must be at least 2 (BatchNorm needs two rows)")
        return sorted(set(v))

    def claim_list(self) -> list[Claim]:
        if self.claims:
            return list(dict.fromkeys(self.claims))
        return list(PRESETS[self.preset or "bn-claims"])


# ----------------------------------------------------------------------------- the plan


def _placement(network: dict[str, Any]) -> str | None:
    """The base network's BN placement (shorthand), or None for explicit layers."""
    if network.get("layers") is not None:
        return None
    return str(network.get("batchnorm", "none"))


def _without_bn(network: dict[str, Any]) -> dict[str, Any]:
    if network.get("layers") is not None:
        return {**network, "layers": [la for la in network["layers"]
                                      if la.get("type") != "batchnorm"]}
    return {**network, "batchnorm": "none", "norm": None}


def _has_bn(network: dict[str, Any]) -> bool:
    if network.get("layers") is not None:
        return any(la.get("type") == "batchnorm" for la in network["layers"])
    norm = network.get("norm")
    return network.get("batchnorm", "none") != "none" and norm in (None, "batchnorm")


class StudyError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


# The swept claims: (variant-name key, spec path, StudySpec field of the swept values).
SWEEPS: dict[Claim, tuple[str, str, str]] = {
    Claim.higher_learning_rates: ("lr", "training.optimizer.lr", "learning_rates"),
    Claim.init_insensitivity: ("scale", "training.init_scale", "init_scales"),
    Claim.batch_size: ("batch", "training.batch_size", "batch_sizes"),
}
ROLES = ("bn", "none")


def _cell(role: str, key: str, value: float) -> str:
    """A sweep variant's name: "bn lr=0.01", "none batch=2"."""
    return f"{role} {key}={value:g}"


def plan(spec: StudySpec) -> list[tuple[Claim, ExperimentSpec]]:
    """One experiment per claim, variants named by role; raises StudyError saying what to
    change when the base cannot test a claim."""
    base = copy.deepcopy(spec.base)
    network = base.pop("network", None) or DEFAULT_BASE["network"]
    if not _has_bn(network):
        raise StudyError(["base.network has no BatchNorm: give it one (e.g. \"batchnorm\": "
                          "\"before_activation\"); each claim compares it with the same "
                          "network without BN"])
    bn, none = network, _without_bn(network)
    training = base.get("training") or {}
    out: list[tuple[Claim, ExperimentSpec]] = []
    errors: list[str] = []

    def exp(claim: Claim, variants: list[dict[str, Any]], extra_training: dict[str, Any]
            | None = None) -> None:
        b = copy.deepcopy(base)
        if extra_training:
            b["training"] = {**training, **extra_training}
        name = f"{spec.name or 'study'} {claim.value}"[:80]
        out.append((claim, ExperimentSpec.model_validate({
            "name": name, "base": b, "variants": variants, "seeds": spec.seeds,
            "confidence": spec.confidence})))

    for claim in spec.claim_list():
        if claim == Claim.faster_convergence:
            exp(claim, [{"name": "bn", "network": bn}, {"name": "none", "network": none}])
        elif claim == Claim.regularization:
            variants = [{"name": "bn", "network": bn}, {"name": "none", "network": none}]
            if _placement(bn) is not None:  # the shorthand can add dropout to the plain net
                variants.append({"name": "dropout",
                                 "network": {**none, "dropout": spec.dropout_rate}})
            exp(claim, variants)
        elif claim in SWEEPS:
            key, path, values = SWEEPS[claim]
            exp(claim, [{"name": _cell(role, key, v), "network": net, path: v}
                        for role, net in zip(ROLES, (bn, none), strict=True)
                        for v in getattr(spec, values)])
        elif claim == Claim.placement:
            if _placement(bn) is None:
                errors.append("placement needs the base network as the hidden/conv shorthand "
                              "(\"batchnorm\": \"before_activation\" | \"after_activation\"), "
                              "not explicit layers: or leave the claim out")
                continue
            exp(claim, [{"name": "before", "network": {**bn, "batchnorm": "before_activation"}},
                        {"name": "after", "network": {**bn, "batchnorm": "after_activation"}}])
        elif claim == Claim.train_vs_inference:
            exp(claim, [{"name": "bn", "network": bn}], {"record_train_mode_val": True})
    if errors:
        raise StudyError(errors)
    return out


# ----------------------------------------------------------------------------- analysis


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def _final(run: Run, metric: str) -> float | None:
    values = [v for v in run.history.get(metric, []) if _finite(v)]
    return float(values[-1]) if values else None


def _by_seed(runs: Sequence[Run], variant: str) -> dict[int, Run]:
    return {r.seed: r for r in runs if r.variant == variant}


def _trained(run: Run | None, n_classes: int, epochs: int) -> bool:
    """It ran every epoch without diverging and ends above chance by 0.1."""
    if run is None:
        return False
    h = run.history.get("loss", [])
    acc = _final(run, "val_accuracy")
    return len(h) >= epochs and all(_finite(v) for v in h) and acc is not None \
        and acc > 1.0 / n_classes + 0.1


@dataclass
class ClaimResult:
    claim: Claim
    measure: str
    comparison: str
    rule: str
    test: dict[str, Any]  # claim_stats.paired_test's dict (d > 0: the claim's direction)
    details: dict[str, Any] = field(default_factory=dict)  # per-variant numbers for the report
    partial: bool = False


def _diffs(a: dict[int, float | None], b: dict[int, float | None]) -> list[float]:
    """b - a per seed both have (finite)."""
    return [float(b[s]) - float(a[s]) for s in sorted(set(a) & set(b))  # type: ignore[arg-type]
            if _finite(a[s]) and _finite(b[s])]


def analyze_claim(claim: Claim, runs: Sequence[Run], spec: StudySpec, *, epochs: int,
                  n_classes: int, partial: bool = False) -> ClaimResult:
    """The claim's measure per seed and its paired test. `runs`: the claim experiment's
    finished children (variant names as `plan` gives them)."""
    conf = spec.confidence
    if claim == Claim.faster_convergence:
        bn, none = _by_seed(runs, "bn"), _by_seed(runs, "none")
        best = max((v for r in runs for v in r.history.get("val_accuracy", []) if _finite(v)),
                   default=float("nan"))
        threshold = spec.threshold_fraction * best

        def reach(r: Run) -> float | None:
            for i, v in enumerate(r.history.get("val_accuracy", [])):
                if _finite(v) and v >= threshold:
                    return float(i + 1)
            return None
        seeds = sorted(set(bn) & set(none))
        test = cs.censored_paired([reach(bn[s]) for s in seeds], [reach(none[s]) for s in seeds],
                                  limit=float(epochs), confidence=conf)
        return ClaimResult(claim, f"epochs to reach val_accuracy {threshold:.4f} "
                           f"({spec.threshold_fraction:g} x the best any run reached)",
                           "none - bn, paired by seed (Wilcoxon signed-rank)",
                           "supported if BN reaches it in fewer epochs", test,
                           {"threshold": threshold}, partial)
    if claim == Claim.regularization:
        roles = sorted({r.variant for r in runs} & {"bn", "none", "dropout"})
        gap = {v: {s: (_final(r, "accuracy") or math.nan) - (_final(r, "val_accuracy") or math.nan)
                   for s, r in _by_seed(runs, v).items()} for v in roles}
        gap.setdefault("bn", {})
        gap.setdefault("none", {})
        test = cs.paired_test(_diffs(gap["bn"], gap["none"]), confidence=conf)  # type: ignore[arg-type]
        details: dict[str, Any] = {"mean_gap": {v: _mean(gap[v].values()) for v in gap}}
        if "dropout" in gap:  # informative, outside the Holm family: the verdict is BN vs none
            vs = cs.paired_test(_diffs(gap["bn"], gap["dropout"]),  # type: ignore[arg-type]
                                confidence=conf)
            details["bn_vs_dropout"] = {
                "comparison": "gap(dropout) - gap(bn), paired by seed (t); not in the Holm "
                              "family", "estimate": vs["estimate"], "ci_low": vs["ci_low"],
                "ci_high": vs["ci_high"], "p_two_sided": vs["p_two_sided"], "n": vs["n"]}
        return ClaimResult(claim, "final train accuracy - val_accuracy (the generalisation gap)",
                           "gap(none) - gap(bn), paired by seed (t)",
                           "supported if BN's gap is smaller", test, details, partial)
    if claim == Claim.placement:
        acc = {v: {s: _final(r, "val_accuracy") for s, r in _by_seed(runs, v).items()}
               for v in ("before", "after")}
        test = cs.paired_test(_diffs(acc["after"], acc["before"]), confidence=conf)
        return ClaimResult(claim, "final val_accuracy", "before - after, paired by seed (t)",
                           "supported if BN before the activation ends higher", test,
                           {"mean_val_accuracy": {v: _mean(acc[v].values()) for v in acc}},
                           partial)
    if claim in SWEEPS:
        key, _, field_name = SWEEPS[claim]
        values = getattr(spec, field_name)
        per = {role: {v: _by_seed(runs, _cell(role, key, v)) for v in values} for role in ROLES}
        details = {field_name: values, "mean_final_val_accuracy": {
            role: [_mean(_final(r, "val_accuracy") for r in per[role][v].values())
                   for v in values] for role in ROLES}}
        # batch_size compares the smallest batch with the largest; the others use every value
        used = [values[0], values[-1]] if claim == Claim.batch_size else values
        per_seed: dict[str, dict[int, float | None]] = {role: {} for role in ROLES}
        for role in ROLES:
            for s in sorted(set.intersection(*(set(per[role][v]) for v in used))):
                per_seed[role][s] = _sweep_measure(claim, [per[role][v][s] for v in used],
                                                   used, n_classes, epochs)
    if claim == Claim.higher_learning_rates:
        test = cs.paired_test(_diffs(per_seed["none"], per_seed["bn"]), confidence=conf,
                              test="wilcoxon")
        return ClaimResult(claim, "log10 of the highest learning rate at which the seed trains "
                           "(every epoch finite, final val_accuracy above chance + 0.1; none: "
                           "one decade below the lowest)",
                           "bn - none, paired by seed (Wilcoxon signed-rank)",
                           "supported if BN trains at higher learning rates", test, details,
                           partial)
    if claim == Claim.init_insensitivity:
        test = cs.paired_test(_diffs(per_seed["bn"], per_seed["none"]), confidence=conf)
        return ClaimResult(claim, "std of final val_accuracy across the init scales, per seed "
                           "(a diverged run counts as 0)", "spread(none) - spread(bn), paired "
                           "by seed (t)", "supported if BN's spread is smaller", test, details,
                           partial)
    if claim == Claim.batch_size:
        small, large = spec.batch_sizes[0], spec.batch_sizes[-1]
        test = cs.paired_test(_diffs(per_seed["none"], per_seed["bn"]), confidence=conf)
        return ClaimResult(claim, f"val_accuracy at batch {large} - at batch {small}, per seed",
                           "drop(bn) - drop(none), paired by seed (t)",
                           f"supported if batch {small} hurts BN more than it hurts the plain "
                           "network", test, details, partial)
    # train_vs_inference: train-mode minus eval-mode validation accuracy, per epoch
    gaps: dict[int, list[float]] = {}
    for s, r in _by_seed(runs, "bn").items():
        a = r.history.get("train_mode_val_accuracy", [])
        b = r.history.get("val_accuracy", [])
        gaps[s] = [abs(x - y) for x, y in zip(a, b, strict=False) if _finite(x) and _finite(y)]
    mean_gap = [float(sum(g) / len(g)) for g in gaps.values() if g]
    test = cs.paired_test(mean_gap, confidence=conf, test="wilcoxon")
    per_epoch = [_mean(g[e] for g in gaps.values() if len(g) > e)
                 for e in range(max((len(g) for g in gaps.values()), default=0))]
    settles = next((e + 1 for e in range(len(per_epoch))
                    if all(v is not None and v < 0.01 for v in per_epoch[e:])), None)
    return ClaimResult(claim, "mean over epochs of |train-mode - eval-mode val_accuracy|",
                       "the gap against 0, per seed (Wilcoxon signed-rank)",
                       "supported if the gap is above 0", test,
                       {"mean_gap_per_epoch": per_epoch, "below_0.01_from_epoch": settles},
                       partial)


def _sweep_measure(claim: Claim, runs: list[Run], values: list[float], n_classes: int,
                   epochs: int) -> float | None:
    """One seed's measure over a sweep: its run at each swept value, in order."""
    if claim == Claim.higher_learning_rates:  # log10 of the highest lr that trains
        ok = [v for v, r in zip(values, runs, strict=True) if _trained(r, n_classes, epochs)]
        return math.log10(max(ok)) if ok else math.log10(values[0]) - 1.0
    finals = [_final(r, "val_accuracy") for r in runs]
    if claim == Claim.init_insensitivity:  # the spread across scales; diverged: 0 accuracy
        return cast(float | None, cs.spread([v if v is not None else 0.0 for v in finals])["std"])
    # batch_size: the largest batch's accuracy minus the smallest's
    return (finals[-1] or 0.0) - (finals[0] or 0.0)


def _mean(values: Any) -> float | None:
    xs = [float(v) for v in values if _finite(v)]
    return sum(xs) / len(xs) if xs else None


def decide(results: Sequence[ClaimResult], *, alpha: float) -> list[dict[str, Any]]:
    """Holm-adjusted verdicts, in the results' order, each with its numbers."""
    adjusted = cs.holm([r.test.get("p_two_sided") for r in results])
    out = []
    for r, p in zip(results, adjusted, strict=True):
        v = cs.verdict(r.test, p, alpha=alpha)
        if r.partial:
            v = {**v, "verdict": "inconclusive",
                 "reason": "partial: not every run has finished; " + v["reason"]}
        entry: dict[str, Any] = {
            "claim": r.claim.value, "text": CLAIM_TEXT[r.claim], "measure": r.measure,
            "comparison": r.comparison, "rule": r.rule, "test": r.test,
            "adjusted_p": p, "details": r.details, "partial": r.partial, **v}
        if v["verdict"] == "inconclusive":
            entry["firm_up"] = cs.seeds_needed(r.test, alpha=alpha)
        out.append(entry)
    return out
