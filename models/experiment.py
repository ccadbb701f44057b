"""Experiments: a base job spec, variants and seeds, expanded into child job specs.

Importable without torch (pydantic and the stdlib only), so the client can validate and expand.

Merging. Each child's spec is the base merged with its variant as a JSON Merge Patch
(RFC 7396): objects merge key by key, any other value replaces, and `null` removes a key (which
gives the field its default, since every nullable JobSpec field defaults to null). So a variant
that brings `"network": {"layers": [...]}` over a base with `"network": {"hidden": [...]}` writes
`"hidden": null` to drop the base's shorthand. Grid variants set dotted paths
(`"network.batchnorm"`, `"training.optimizer.lr"`; a digit indexes a list:
`"network.layers.1.momentum"`); an object value there merges the same way. Named variants may
use dotted keys too. Every child then gets `training.seed` = its seed and
`name` = "<experiment name>/<variant>/seed=<seed>", whatever base or variant said.

Order and ids. Variants outer (grid: the cartesian product over the keys in the given order, the
last key varying fastest; named: the given order), seeds inner; `Child.index` is the position,
so the same request always expands to the same children in the same order.

Pairing. Within a seed, every variant is trained on the same draw:
- the same train/validation split and the same batch order: both derive from `training.seed`
  alone (`models.training_state.ModelState` splits with it and seeds the batch-order generator with
  it), and a generated dataset's rows come from `dataset.seed`, which children share unless a
  variant changes it. (One exception: a BatchNorm net whose last batch would hold a single row
  drops that row each epoch; the order of the others is unchanged.) A variant that changes
  the split or batch size changes the draw too, by design;
- the same initial weights for the dense layers two variants share: `build_network` seeds each
  dense layer's init from (seed, its ordinal among the dense layers), weight drawn before bias,
  so adding BatchNorm or dropping a bias does not shift any other layer's draw. (Layers of
  different shape necessarily differ.)
So a paired comparison (`models.stats`) measures the variant, not the draw.

Stacking. Children whose specs are equal except for `training.seed` and `name` can train as one
batched model (`train_many`): they share `Child.stack_key`. Specs using `reduce_on_plateau`
(a learning rate per model) get `stack_key = None` and train as ordinary jobs.

Summary settings. `metrics` (default loss, accuracy, val_loss, val_accuracy) are summarised;
`thresholds` (default {"val_accuracy": 0.7}, the level the notebook's BN net reaches and its
plain net does not) gives "epochs to reach": ≥ for accuracies, ≤ for losses; `confidence`
(default 0.95) sets the t-intervals.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from models.spec import JobSpec, Metric, PlateauSchedule, SpecError

NAME_PATTERN = r"^[A-Za-z0-9_.=,+\- ]{1,64}$"
MAX_SEED = 2**32 - 1
DEFAULT_METRICS: list[Metric] = ["loss", "accuracy", "val_loss", "val_accuracy"]
_LONG_VALUE = 32  # grid values whose JSON text is longer are named "<key>[i]" instead


class NamedVariant(BaseModel):
    """`{"name": "bn", "network": {...}, "training": {...}}`: every key but `name` overrides base.

    Keys are JobSpec fields (dataset, network, training, device) or dotted paths.
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=NAME_PATTERN,
                      description="1-64 letters, digits, spaces or _ . = , + -")

    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _variants_kind(value: Any) -> str:
    return "grid" if isinstance(value, dict) else "named"


# tagged so a malformed value gets the errors of the form it looks like, not of both forms
Variants = Annotated[
    Annotated[dict[str, list[Any]], Tag("grid")] | Annotated[list[NamedVariant], Tag("named")],
    Discriminator(_variants_kind),
]

Seeds = Annotated[int, Field(ge=1, le=100_000)] | list[Annotated[int, Field(ge=0, le=MAX_SEED)]]


def _default_thresholds() -> dict[Metric, float]:
    return {"val_accuracy": 0.7}


class ExperimentSpec(BaseModel):
    """The POST /v1/experiments body. Shape is checked here; `expand` checks the children."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.=,+\- ]{1,80}$")
    base: dict[str, Any] = Field(default_factory=dict, description="a partial JobSpec")
    variants: Variants = Field(
        description="a grid {dotted path: [values]} or a list of named variants")
    seeds: Seeds = Field(description="a count n (seeds 0..n-1) or a list of distinct seeds")
    metrics: list[Metric] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    thresholds: dict[Metric, float] = Field(default_factory=_default_thresholds)
    confidence: float = Field(default=0.95, ge=0.5, le=0.999)

    @field_validator("variants")
    @classmethod
    def _variants_shape(cls, v: dict[str, list[Any]] | list[NamedVariant]
                        ) -> dict[str, list[Any]] | list[NamedVariant]:
        if len(v) == 0:
            raise ValueError("variants is empty: give a grid {\"network.batchnorm\": [...]} or "
                             "a list of named variants")
        if isinstance(v, dict):
            empty = [k for k, values in v.items() if len(values) == 0]
            if empty:
                raise ValueError(f"variants: {', '.join(repr(k) for k in empty)} "
                                 "has no values: give at least one")
        else:
            names = [nv.name for nv in v]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"variants: duplicate names {dup}: every variant needs its own")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, list):
            if not v:
                raise ValueError("seeds is empty: give a count or at least one seed")
            dup = sorted({s for s in v if v.count(s) > 1})
            if dup:
                raise ValueError(f"seeds: {dup} repeated: each seed once")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[Metric]) -> list[Metric]:
        if not v:
            raise ValueError("metrics is empty: leave it out for the default four")
        return list(dict.fromkeys(v))

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass(frozen=True)
class Child:
    index: int  # position in the expansion: variants outer, seeds inner
    variant: str
    seed: int
    spec: JobSpec
    stack_key: str | None  # equal keys train stacked; None: must train alone


# ------------------------------------------------------------------------- merging and paths


def deep_merge(base: Any, patch: Any) -> Any:
    """JSON Merge Patch (RFC 7396) of `patch` onto `base`; neither argument is modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = deep_merge(out.get(key), value)
    return out


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Merge `value` at a dotted path of `doc` in place, creating objects on the way.

    Raises ValueError when the path runs into a scalar or past a list's end.
    """
    parts = path.split(".")
    node: Any = doc
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i]) or "the spec"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"'{path}': {where} is a list of {len(node)}; "
                                 f"'{part}' is not an index in it")
            if last:
                node[int(part)] = deep_merge(node[int(part)], value)
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                if value is None:
                    node.pop(part, None)
                else:
                    node[part] = deep_merge(node.get(part), value)
            else:
                if not isinstance(node.get(part), dict | list):
                    if parts[i + 1].isdigit():
                        raise ValueError(f"'{path}': {'.'.join(parts[:i + 1])} is not set, so "
                                         f"'{parts[i + 1]}' indexes nothing: give the list in base")
                    node[part] = {}
                node = node[part]
        else:
            raise ValueError(f"'{path}': {where} is {json.dumps(node)}, not an object")


_OPEN = "open"  # dict/Any: anything may sit below


def _unwrap(annotation: Any) -> list[Any]:
    """The schema nodes an annotation can be: model classes, ("list", item), _OPEN or leaves."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [n for arg in typing.get_args(annotation) for n in _unwrap(arg)]
    if origin is list:
        return [("list", typing.get_args(annotation)[0])]
    if annotation is Any or origin is dict or annotation is dict:
        return [_OPEN]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [annotation]  # a leaf: int, str, Literal, an enum, a tuple


def path_error(path: str) -> str | None:
    """Why a dotted path names no JobSpec field (None when it does)."""
    if path == "name":
        return "'name': children are named '<experiment>/<variant>/seed=<seed>'; name the " \
               "experiment instead"
    if path == "training.seed":
        return "'training.seed': seeds come from 'seeds'; list the seeds there"
    parts = path.split(".")
    if any(p == "" for p in parts):
        return f"'{path}' is not a dotted path (empty segment)"
    nodes: list[Any] = [JobSpec]
    for i, part in enumerate(parts):
        nxt: list[Any] = []
        fields: list[str] = []
        for node in nodes:
            if node == _OPEN:
                return None
            if isinstance(node, type) and issubclass(node, BaseModel):
                fields += list(node.model_fields)
                if part in node.model_fields:
                    nxt += _unwrap(node.model_fields[part].annotation)
            elif isinstance(node, tuple) and part.isdigit():
                nxt += _unwrap(node[1])
        if not nxt:
            where = ".".join(parts[:i]) or "the job spec"
            known = f" (its fields: {', '.join(dict.fromkeys(fields))})" if fields else ""
            return f"unknown path '{path}': '{part}' is not a field of {where}{known}"
        nodes = nxt
    return None


# ------------------------------------------------------------------------- variants


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _grid(variants: dict[str, list[Any]]) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(name, {path: value}) per grid cell, and the problems with the grid itself."""
    errors: list[str] = []
    keys = list(variants)
    last = [k.split(".")[-1] for k in keys]
    labels = [seg if last.count(seg) == 1 else k for k, seg in zip(keys, last, strict=True)]
    texts: dict[str, list[str]] = {}
    for key, label in zip(keys, labels, strict=True):
        values = variants[key]
        canon = [json.dumps(v, sort_keys=True) for v in values]
        dup = sorted({c for c in canon if canon.count(c) > 1})
        if dup:
            errors.append(f"variants: '{key}' lists {', '.join(dup)} more than once")
        raw = [_value_text(v) for v in values]
        names = [t if len(t) <= _LONG_VALUE else f"{label}[{j}]" for j, t in enumerate(raw)]
        clash = sorted({n for n in names if names.count(n) > 1} - set(dup))
        if clash:
            errors.append(f"variants: '{key}' has values that read the same as text "
                          f"({', '.join(clash)}): make them distinct")
        texts[key] = names
    cells: list[tuple[str, dict[str, Any]]] = []
    for combo in itertools.product(*(range(len(variants[k])) for k in keys)):
        assignment = {k: variants[k][j] for k, j in zip(keys, combo, strict=True)}
        if len(keys) == 1:
            name = texts[keys[0]][combo[0]]
        else:
            name = ",".join(f"{label}={texts[k][j]}"
                            for k, label, j in zip(keys, labels, combo, strict=True))
        cells.append((name, assignment))
    return cells, errors


def variant_names(exp: ExperimentSpec) -> list[str]:
    """The variants' names in expansion order (grid cells or the named list)."""
    if isinstance(exp.variants, dict):
        return [name for name, _ in _grid(exp.variants)[0]]
    return [v.name for v in exp.variants]


def _variant_docs(exp: ExperimentSpec
                  ) -> tuple[list[tuple[str, dict[str, Any], dict[str, Any]]], list[str]]:
    """(name, merged spec dict, {path the variant owns: its value}) per variant, and the
    errors found so far."""
    errors: list[str] = []
    out: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    if isinstance(exp.variants, dict):
        cells, errors = _grid(exp.variants)
        bad_paths = {k: e for k in exp.variants if (e := path_error(k))}
        errors += [f"variants: {e}" for e in bad_paths.values()]
        for name, assignment in cells:
            doc = copy.deepcopy(exp.base)
            for path, value in assignment.items():
                if path in bad_paths:
                    continue
                try:
                    set_path(doc, path, value)
                except ValueError as e:
                    errors.append(f"variants: {e}")
            out.append((name, doc, assignment))
        return out, errors
    for nv in exp.variants:
        nested = {k: v for k, v in nv.overrides().items() if "." not in k}
        dotted = {k: v for k, v in nv.overrides().items() if "." in k}
        problems = [p for k in [*nested, *dotted] if (p := path_error(k))]
        errors += [f"variant '{nv.name}': {p}" for p in problems]
        doc = deep_merge(exp.base, {k: v for k, v in nested.items() if not path_error(k)})
        for path, value in dotted.items():
            if path_error(path):
                continue
            try:
                set_path(doc, path, value)
            except ValueError as e:
                errors.append(f"variant '{nv.name}': {e}")
        owned = _owned(nested, exp.base)
        owned.update(dotted)
        out.append((nv.name, doc, owned))
    return out, errors


def _owned(patch: dict[str, Any], base: Any, prefix: str = "") -> dict[str, Any]:
    """{path: value} a variant's patch owns: where it merges into a base object, its keys;
    anything base lacks, the whole value."""
    owned: dict[str, Any] = {}
    for k, v in patch.items():
        below = base.get(k) if isinstance(base, dict) else None
        if isinstance(v, dict) and v and isinstance(below, dict):
            owned.update(_owned(v, below, f"{prefix}{k}."))
        else:
            owned[f"{prefix}{k}"] = v
    return owned


def _child_doc(doc: dict[str, Any], exp_name: str, variant: str, seed: int) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["name"] = f"{exp_name}/{variant}/seed={seed}"
    training = doc.get("training")
    if not isinstance(training, dict):
        training = doc["training"] = {} if training is None else training
    if isinstance(training, dict):
        training["seed"] = seed
    return doc


def stack_key(spec: JobSpec) -> str | None:
    """Children with equal keys differ only in seed and name, so they can train stacked."""
    if isinstance(spec.training.lr_schedule, PlateauSchedule):
        return None  # reduce_on_plateau sets a learning rate per model
    doc = spec.model_dump(mode="json")
    doc.pop("name", None)
    doc["training"].pop("seed", None)
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


def expand(exp: ExperimentSpec, *, max_children: int) -> list[Child]:
    """The children, variants outer and seeds inner; raises SpecError listing every problem."""
    seeds = exp.seed_list()
    n_variants = (math.prod(len(v) for v in exp.variants.values())
                  if isinstance(exp.variants, dict) else len(exp.variants))
    if n_variants * len(seeds) > max_children:
        raise SpecError([f"the experiment has {n_variants} variants x {len(seeds)} seeds = "
                         f"{n_variants * len(seeds)} children; the limit is {max_children}: "
                         "use fewer variants or seeds"])
    docs, errors = _variant_docs(exp)
    exp_name = exp.name or "experiment"
    specs: list[tuple[str, JobSpec]] = []
    invalid: list[_Invalid] = []
    for name, doc, paths in docs:
        child = _child_doc(doc, exp_name, name, seeds[0])
        try:
            specs.append((name, JobSpec.model_validate(child)))
        except ValidationError as e:
            invalid.append(_Invalid(name, child, paths, e))
    errors += _attribute(invalid, exp.base, grid=isinstance(exp.variants, dict),
                         n_variants=len(docs))
    if not errors:
        errors += _identical(specs)
    if errors:
        raise SpecError(list(dict.fromkeys(errors)))
    children: list[Child] = []
    for name, spec in specs:
        key = stack_key(spec)
        for seed in seeds:
            doc = spec.model_dump(mode="json", exclude_unset=False)
            child_spec = JobSpec.model_validate(_child_doc(doc, exp_name, name, seed))
            children.append(Child(len(children), name, seed, child_spec, key))
    return children


# ------------------------------------------------------------------------- error attribution


@dataclass(frozen=True)
class _Invalid:
    """A variant whose child spec (checked on the first seed) failed validation."""

    name: str
    child: dict[str, Any]  # the child's spec document as validated
    paths: dict[str, Any]  # {path the variant owns: its value}
    error: ValidationError


def _attribute(invalid: list[_Invalid], base: dict[str, Any], *, grid: bool,
               n_variants: int) -> list[str]:
    """Each validation problem as one message, said where the user can fix it: at the grid value
    or variant whose own paths it touches; else at base when every variant has it, or at each
    variant that has it."""
    errors: list[str] = []
    unrelated: dict[tuple[str, str], list[str]] = {}  # errors the variant's own paths don't touch
    problems = [(v, loc, msg) for v in invalid for loc, msg in _problems(v.child, v.error)]
    for variant, loc, msg in problems:
        error = _attributed(variant, loc, msg, base, grid=grid)
        if error is None:
            unrelated.setdefault((loc, msg), []).append(variant.name)
        else:
            errors.append(error)
    for (loc, msg), names in unrelated.items():
        if len(names) == n_variants:
            errors.append(f"base: {loc}: {msg}")
        else:
            errors += [f"variant '{n}': {loc}: {msg} (set it in base or in the variant)"
                       for n in names]
    return errors


def _attributed(variant: _Invalid, loc: str, msg: str, base: dict[str, Any], *,
                grid: bool) -> str | None:
    """The message for a problem at `loc` that the variant's own paths (or its name) explain;
    None when they do not touch it."""
    paths = variant.paths
    related = [p for p in paths if _related(loc, [p])]
    if related and msg.startswith("Extra inputs") and loc not in paths and \
            _value_at(base, loc) is not _MISSING:
        msg += " (it comes from base: set it to null in the variant to drop it)"
    if loc == "name":
        return (f"variant '{variant.name}': the child name '{variant.child['name']}' is too "
                "long: shorten the experiment name or use named variants")
    if grid and len(related) == 1:
        # one grid value is at fault: say so once, not once per grid cell
        path = related[0]
        where = "" if loc == path else f" {loc}:"
        return f"variants: '{path}' value {json.dumps(paths[path])}:{where} {msg}"
    if related:
        return f"variant '{variant.name}': {loc}{_shown(_value_at(variant.child, loc))}: {msg}"
    return None


def _problems(doc: dict[str, Any], e: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in e.errors(include_url=False):
        loc = _user_loc(doc, tuple(err["loc"]))
        msg = err["msg"]
        if "exactly one of 'layers'" in msg:
            msg += " (a variant's network merges into base's: write \"hidden\": null or " \
                   "\"layers\": null in the variant to drop base's)"
        out.append((loc, msg))
    return out


def _user_loc(doc: Any, loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the user's dotted path (union tags dropped)."""
    parts: list[str] = []
    node: Any = doc
    for i, seg in enumerate(loc):
        if isinstance(node, dict) and seg in node:
            node = node[seg]
        elif isinstance(node, list) and isinstance(seg, int) and seg < len(node):
            node = node[seg]  # a separate branch: mypy needs the narrowing
        elif isinstance(node, dict) and i < len(loc) - 1:
            continue  # a discriminated union's tag, not a key the user wrote
        else:
            node = None
        parts.append(str(seg))
    return ".".join(parts) or "spec"


def _related(loc: str, paths: list[str]) -> bool:
    return any(loc == p or loc.startswith(p + ".") or p.startswith(loc + ".") for p in paths)


_MISSING = object()


def _shown(value: Any) -> str:
    """" = <value>" for a short value; nothing for a missing or long one."""
    if value is _MISSING:
        return ""
    text = _value_text(value)
    return f" = {text}" if len(text) <= 40 else ""


def _value_at(doc: Any, loc: str) -> Any:
    node = doc
    for part in loc.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _identical(specs: list[tuple[str, JobSpec]]) -> list[str]:
    seen: dict[str, str] = {}
    errors: list[str] = []
    for name, spec in specs:
        doc = spec.model_dump(mode="json")
        doc.pop("name", None)
        canon = json.dumps(doc, sort_keys=True)
        if canon in seen:
            errors.append(f"variants '{seen[canon]}' and '{name}' give the same job spec: they "
                          "would train identical models; remove one or make them differ")
        else:
            seen[canon] = name
    return errors


def stack_groups(children: list[Child]) -> tuple[dict[str, list[Child]], list[Child]]:
    """Children by stack_key (each list in index order), and those that must train alone."""
    groups: dict[str, list[Child]] = {}
    alone: list[Child] = []
    for c in children:
        if c.stack_key is None:
            alone.append(c)
        else:
            groups.setdefault(c.stack_key, []).append(c)
    return groups, alone


__all__ = ["DEFAULT_METRICS", "Child", "ExperimentSpec", "NamedVariant", "deep_merge", "expand",
           "path_error", "set_path", "stack_groups", "stack_key", "variant_names"]
