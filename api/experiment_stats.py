"""An experiment's statistics across seeds, from its children's stored epochs."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy.orm import Session

from api.presenters import series
from models.db import repository as repo
from models.db.tables import Experiment, Job
from models.experiment import ExperimentSpec
from models.stats import Run, summarize


def runs_of(session: Session, children: list[Job], include: str) -> list[Run]:
    """Runs (variant, seed, history) of an experiment's loaded children."""
    jobs = [j for j in children if include != "succeeded" or str(j.status) == "succeeded"]
    rows = repo.histories(session, job_ids=[j.id for j in jobs])  # one query, not one a child
    runs = []
    for job in jobs:
        history = series(rows[job.id])
        runs.append(Run(variant=job.variant or "", seed=job.seed or 0, history={
            k: [math.nan if v is None else float(v) for v in values]
            for k, values in history.items() if k not in ("epoch", "wall_time")}))
    return runs


def experiment_summary(session: Session, exp: Experiment, include: str) -> dict[str, Any]:
    spec = ExperimentSpec.model_validate(exp.spec)
    runs = runs_of(session, repo.children(session, experiment_id=exp.id), include)
    summary = summarize(runs, variants=list(exp.variants), metrics=list(spec.metrics),
                        thresholds={str(k): v for k, v in spec.thresholds.items()},
                        confidence=spec.confidence)
    return {"experiment_id": exp.id, "name": exp.name, "include": include, **summary}
