"""An experiment made ready to store: expanded into its children (variants x seeds), one child
per variant resolved against its dataset, then added as rows, an experiment's own or a study's.

POST /v1/experiments stores one of these, POST /v1/studies one per claim, in one transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from api.auth import require_visible_dataset
from api.errors import InvalidInput
from api.resolve import resolve
from api.settings import ApiSettings
from api.submission import choose_queue
from models.db import repository as repo
from models.db.tables import Experiment, Job, Study
from models.experiment import Child, ExperimentSpec, expand, variant_names
from models.spec import SpecError


def _stack_key(experiment_id: str, key: str | None) -> str | None:
    # Stacks never span experiments: cancel, retry and summaries stay per experiment.
    if key is None:
        return None
    return hashlib.sha256(f"{experiment_id}/{key}".encode()).hexdigest()[:32]


def _resolve_children(session: Session, children: list[Child], settings: ApiSettings,
                      owner: str) -> tuple[dict[int, list[str]], dict[str, str | None]]:
    """Resolve one child per variant (seeds change nothing a check looks at): warnings per
    child index and the uploaded dataset's id per variant; raises SpecError naming the
    variant of every problem."""
    errors: list[str] = []
    warnings: dict[str, list[str]] = {}
    dataset_ids: dict[str, str | None] = {}
    for child in children:
        if child.variant in warnings:
            continue
        try:
            require_visible_dataset(session, child.spec, owner)
            resolved, dataset = resolve(session, child.spec, settings.limits(),
                                        data_dir=settings.data_dir)
        except SpecError as exc:
            errors += [f"variant '{child.variant}': {e}" for e in exc.errors]
            warnings[child.variant] = []
            continue
        except InvalidInput as exc:
            details = exc.detail if isinstance(exc.detail, list) else [exc.detail]
            errors += [f"variant '{child.variant}': {e}" for e in details]
            warnings[child.variant] = []
            continue
        warnings[child.variant] = list(resolved.warnings)
        dataset_ids[child.variant] = dataset.id if dataset is not None else None
    if errors:
        raise SpecError(errors)
    return {c.index: warnings[c.variant] for c in children}, dataset_ids


@dataclass
class PlannedExperiment:
    """An experiment expanded and checked, ready to store: its children, each child's
    warnings (by index) and each variant's uploaded dataset id."""

    body: ExperimentSpec
    children: list[Child]
    warnings: dict[int, list[str]]
    dataset_ids: dict[str, str | None]


def prepare_experiment(session: Session, body: ExperimentSpec, settings: ApiSettings,
                       owner: str, *, max_children: int) -> PlannedExperiment:
    """Expand and resolve (nothing stored); raises SpecError naming every problem."""
    children = expand(body, max_children=max_children)
    warnings, dataset_ids = _resolve_children(session, children, settings, owner)
    return PlannedExperiment(body, children, warnings, dataset_ids)


def store_experiment(session: Session, planned: PlannedExperiment, settings: ApiSettings,
                     owner: str, *, stored: dict[str, Any] | None = None,
                     idempotency_key: str | None = None, request_hash: str | None = None,
                     study: Study | None = None, claim: str | None = None
                     ) -> tuple[Experiment, list[Job]]:
    """Add the experiment row (a study's when `study` is given, testing `claim`) and its
    children, flushed, not committed: the caller commits, then enqueues every job."""
    body = planned.body
    stored = body.model_dump(mode="json") if stored is None else stored
    queues = {c.index: choose_queue(session, c.spec.device, settings.worker_alive_within_s)
              for c in planned.children}
    if study is None:
        exp = repo.create_experiment(session, spec=stored, name=body.name,
                                     variants=variant_names(body), seeds=body.seed_list(),
                                     idempotency_key=idempotency_key,
                                     request_hash=request_hash, owner=owner)
    else:
        exp = repo.create_study_experiment(session, study=study, claim=claim or "",
                                           spec=stored, name=body.name,
                                           variants=variant_names(body),
                                           seeds=body.seed_list())
    jobs = [repo.create_job(
        session, job_id=repo.child_job_id(exp.id, c.variant, c.seed),
        spec=c.spec.model_dump(mode="json"), name=c.spec.name, queue=queues[c.index],
        device=c.spec.device, epochs_total=c.spec.training.epochs,
        warnings=planned.warnings[c.index],
        dataset_id=planned.dataset_ids[c.variant],
        max_attempts=settings.max_attempts, experiment_id=exp.id, variant=c.variant,
        seed=c.seed, child_index=c.index, stack_key=_stack_key(exp.id, c.stack_key),
        owner=owner)
        for c in planned.children]
    return exp, jobs
