"""Studies: the seed's claims about BatchNorm, each tested as one experiment on the user's data
and network (`models.study`), with a verdict per claim computed on read.

A study's experiments are ordinary experiments (they show in /v1/experiments) and their
children ordinary jobs; they are all stored in one transaction and enqueued after the commit,
exactly as an experiment's children are. Reports are computed from the succeeded children
each time they are read: the same runs always give the same bytes.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api import plots
from api.deps import (
    PrincipalDep,
    QueueDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    StreamedStudyId,
    StudyDep,
)
from api.errors import Conflict, InvalidInput, validation_messages
from api.experiment_plan import PlannedExperiment, prepare_experiment, store_experiment
from api.experiment_stats import experiment_summary, runs_of
from api.ratelimit import check_active_jobs
from api.resolve import dataset_shape
from api.schemas import StudyClaimOut, StudyCost, StudyOut, StudyPage, StudyRetryOut
from api.settings import ApiSettings
from api.sse import Poll, stream
from api.submission import STUDY, requeue, submit
from models.db import repository as repo
from models.db.tables import Experiment, Job, Study
from models.experiment import ExperimentSpec, variant_names
from models.spec import JobSpec, SpecError
from models.study import CLAIM_TEXT, Claim, StudyError, StudySpec, analyze_claim, decide, plan

router = APIRouter(prefix="/studies", tags=["studies"])

EXAMPLES: dict[str, Any] = {
    "quick": {"summary": "three claims, 5 seeds, a generated dataset, 20 epochs", "value": {
        "name": "quick",
        "claims": ["regularization", "placement", "train_vs_inference"],
        "base": {"dataset": {"name": "concentric_circles", "n_samples": 500, "noise": 0.1},
                 "network": {"hidden": [3, 2], "activation": "relu",
                             "batchnorm": "after_activation"},
                 "training": {"epochs": 20, "batch_size": 32, "validation_split": 0.2}},
        "seeds": 5}},
    "notebook": {"summary": "every claim on the notebook's data and BN network (defaults)",
                 "value": {"name": "bn-claims"}},
}

SPE_SAMPLE = 200  # finished jobs the throughput estimate reads
ACTIVE = ("queued", "running")


# ------------------------------------------------------------------------------ cost


def _cost(session: Session, settings: ApiSettings, jobs: list[Job],
          spe: tuple[float | None, int] | None = None) -> StudyCost:
    """Children, epochs and an upper bound on the wall time from measured throughput."""
    epochs = sum(j.epochs_total for j in jobs)
    seconds, n_jobs = spe if spe is not None else repo.seconds_per_epoch(session,
                                                                          last=SPE_SAMPLE)
    queues = {j.queue for j in jobs}
    workers = [w for w in repo.live_workers(session, within_s=settings.worker_alive_within_s)
               if queues & set(w.queues or [])]
    if seconds is None:
        return StudyCost(children=len(jobs), epochs=epochs, estimated_seconds=None,
                         note="no job has finished on this server yet, so there is no "
                              "measured throughput to estimate from")
    n_workers = max(1, len(workers))
    estimate = round(seconds * epochs / n_workers, 1)
    who = (f"{len(workers)} live worker(s)" if workers
           else "no live worker now (counted as 1)")
    return StudyCost(children=len(jobs), epochs=epochs, estimated_seconds=estimate,
                     note=(f"upper bound: median {seconds:.4g} s per epoch over this server's "
                           f"last {n_jobs} finished job(s) x {epochs} epochs / {who}; "
                           "stacked children (same spec, other seeds) train together, "
                           "so it usually takes much less"))


# ------------------------------------------------------------------------------ views


def study_out(session: Session, study: Study, settings: ApiSettings,
              exps: list[Experiment] | None = None,
              kids: dict[str, list[Job]] | None = None,
              spe: tuple[float | None, int] | None = None) -> StudyOut:
    """`exps`/`kids`: the study's experiments and their children when the caller read them
    already (a listing reads a page's with one query each)."""
    if exps is None:
        exps = repo.study_experiments(session, study_id=study.id)
    if kids is None:
        kids = repo.children_of(session, experiment_ids=[e.id for e in exps])
    claims = []
    for exp in exps:
        jobs = kids.get(exp.id, [])
        claim = exp.claim or ""
        claims.append(StudyClaimOut(
            claim=claim, text=CLAIM_TEXT[Claim(claim)] if claim in Claim.__members__ else "",
            experiment_id=exp.id,
            status=repo.experiment_status(jobs, exp.cancel_requested),  # type: ignore[arg-type]
            counts=repo.status_counts(jobs),
            epochs_done=sum(j.epochs_done for j in jobs),
            epochs_total=sum(j.epochs_total for j in jobs)))
    every = [j for e in exps for j in kids.get(e.id, [])]
    return StudyOut(
        id=study.id, name=study.name, cancel_requested=study.cancel_requested,
        status=repo.experiment_status(every, study.cancel_requested),  # type: ignore[arg-type]
        created_at=study.created_at, spec=study.spec, claims=claims,
        counts=repo.status_counts(every), cost=_cost(session, settings, every, spe))


# ------------------------------------------------------------------------------ submission


def _child_count(exp: ExperimentSpec) -> int:
    return len(variant_names(exp)) * len(exp.seed_list())


def _base_shape_errors(base: dict[str, Any]) -> list[str]:
    """What plan() reads of `base` must have the shape of a JobSpec's (the rest is checked
    when the children are expanded)."""
    errors = []
    network, training = base.get("network"), base.get("training")
    if network is not None and not isinstance(network, dict):
        errors.append("base.network: must be an object, e.g. {\"hidden\": [3, 2], "
                      "\"batchnorm\": \"after_activation\"}")
    elif isinstance(network, dict) and network.get("layers") is not None and not (
            isinstance(network["layers"], list)
            and all(isinstance(la, dict) for la in network["layers"])):
        errors.append("base.network.layers: must be a list of layer objects, e.g. "
                      "[{\"type\": \"dense\", \"units\": 3}, {\"type\": \"batchnorm\"}]")
    if training is not None and not isinstance(training, dict):
        errors.append("base.training: must be an object, e.g. {\"epochs\": 50}")
    return errors


def _plan(session: Session, body: StudySpec, settings: ApiSettings, owner: str
          ) -> list[tuple[Claim, PlannedExperiment]]:
    """plan(), the study's child limit, then every experiment expanded and resolved; raises
    SpecError naming the claim of every problem. Nothing is stored."""
    shape = _base_shape_errors(body.base)
    if shape:
        raise SpecError(shape)
    try:
        experiments = plan(body)
    except StudyError as exc:
        raise SpecError(exc.errors) from None
    except ValidationError as exc:
        raise SpecError([f"base: {m}" for m in validation_messages(exc.errors())]) from None
    counts = {claim: _child_count(exp) for claim, exp in experiments}
    total = sum(counts.values())
    if total > settings.max_study_children:
        per = ", ".join(f"{c.value}: {n}" for c, n in counts.items())
        raise SpecError([
            f"the study has {total} children ({per}); the limit (max_study_children) is "
            f"{settings.max_study_children}: use fewer seeds (now {body.seeds}), fewer claims, "
            "or shorter sweeps (learning_rates, init_scales, batch_sizes)"])
    errors: list[str] = []
    out: list[tuple[Claim, PlannedExperiment]] = []
    for claim, exp in experiments:
        try:
            out.append((claim, prepare_experiment(session, exp, settings, owner,
                                                  max_children=settings.max_study_children)))
        except SpecError as exc:
            errors += [f"claim '{claim.value}': {e}" for e in exc.errors]
    if errors:
        raise SpecError(list(dict.fromkeys(errors)))
    return out


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=StudyOut,
             responses={200: {"description": "an earlier study with the same Idempotency-Key"},
                        409: {"description": "Idempotency-Key reused with another body"},
                        422: {"description": "the study cannot run; `detail` says which claim "
                                             "and what to change"},
                        429: {"description": "rate limited, or max_active_jobs_per_key "
                                             "reached"},
                        503: {"description": "the broker is unreachable; nothing was stored"}})
def submit_study(
    body: Annotated[StudySpec, Body(openapi_examples=EXAMPLES)],
    session: SessionDep, settings: SettingsDep, queue: QueueDep, response: Response,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=255, description=(
        "retry-safe submission: the same key and body return the first study"))] = None,
) -> StudyOut:
    """Plan one experiment per claim, expand them all, store them in one transaction and
    enqueue every child. `cost` says how many children and roughly how long."""
    stored = body.model_dump(mode="json")

    def create(planned: list[tuple[Claim, PlannedExperiment]], request_hash: str
               ) -> tuple[Study, list[Job]]:
        study = repo.create_study(session, spec=stored, name=body.name,
                                  claims=[c.value for c, _ in planned],
                                  idempotency_key=idempotency_key, request_hash=request_hash,
                                  owner=principal.owner)
        jobs: list[Job] = []
        for claim, p in planned:
            _, exp_jobs = store_experiment(session, p, settings, principal.owner, study=study,
                                           claim=claim.value)
            jobs += exp_jobs
        return study, jobs  # undone by deleting the study: experiments and children cascade

    study = submit(session, queue, response, STUDY, stored=stored, owner=principal.owner,
                   idempotency_key=idempotency_key, max_active=settings.max_active_jobs_per_key,
                   prepare=lambda: _plan(session, body, settings, principal.owner),
                   adding=lambda planned: sum(len(p.children) for _, p in planned),
                   create=create)
    return study_out(session, study, settings)


# ------------------------------------------------------------------------------ reads


@router.get("", response_model=StudyPage)
def list_studies(
    session: SessionDep, principal: PrincipalDep, settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> StudyPage:
    """Newest first."""
    try:
        rows, next_cursor = repo.list_studies(session, limit=limit, cursor=cursor,
                                              owner=principal.owner)
    except repo.InvalidCursor as exc:
        raise InvalidInput([f"cursor: {exc}"]) from None
    exps = repo.experiments_of(session, studies=rows)
    kids = repo.children_of(session, experiment_ids=[e.id for es in exps.values() for e in es])
    spe = repo.seconds_per_epoch(session, last=SPE_SAMPLE)
    return StudyPage(items=[study_out(session, s, settings, exps[s.id], kids, spe)
                            for s in rows], next_cursor=next_cursor)


@router.get("/{study_id}", response_model=StudyOut)
def get_study(study: StudyDep, session: SessionDep, settings: SettingsDep) -> StudyOut:
    """Status and per-claim progress (each claim's experiment, its status and counts)."""
    return study_out(session, study, settings)


@router.post("/{study_id}/cancel", response_model=StudyOut)
def cancel_study(study: StudyDep, session: SessionDep, settings: SettingsDep) -> StudyOut:
    """Cancel every claim's experiment: queued children at once, running ones at their next
    epoch end."""
    repo.cancel_study(session, study_id=study.id)
    session.commit()
    session.refresh(study)
    return study_out(session, study, settings)


@router.post("/{study_id}/retry", response_model=StudyRetryOut)
def retry_study(study: StudyDep, session: SessionDep, queue: QueueDep,
                settings: SettingsDep) -> StudyRetryOut:
    """Queue the failed children of every claim's experiment again from scratch."""
    exps = repo.study_experiments(session, study_id=study.id)
    kids = repo.children_of(session, experiment_ids=[e.id for e in exps])
    failed = sum(str(j.status) == "failed" for jobs in kids.values() for j in jobs)
    if failed:
        check_active_jobs(session, owner=study.owner, adding=failed,
                          limit=settings.max_active_jobs_per_key)
    ids = repo.reset_failed_study(session, study_id=study.id)
    if not ids:
        raise Conflict(f"study '{study.id}' has no failed children: nothing to retry")
    session.commit()
    requeue(session, queue, ids)
    session.refresh(study)
    return StudyRetryOut(retried=ids, study=study_out(session, study, settings))


# ------------------------------------------------------------------------------ reports


def _json_safe(value: Any) -> Any:
    """NaN and inf as null (JSON has neither); tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _n_classes(session: Session, job: Job, settings: ApiSettings,
               cache: dict[str, int]) -> int:
    """The resolved dataset's class count (2 if the dataset is gone)."""
    spec = JobSpec.model_validate(job.spec)
    key = json.dumps(spec.dataset.model_dump(mode="json"), sort_keys=True)
    if key not in cache:
        try:
            cache[key] = dataset_shape(session, spec, data_dir=settings.data_dir)[1]
        except (InvalidInput, SpecError, ValueError, OSError):  # e.g. the upload was deleted
            cache[key] = 2
    return cache[key]


def _analysis(session: Session, study: Study, settings: ApiSettings
              ) -> tuple[list[Experiment], list[dict[str, Any]], dict[str, Any]]:
    """(experiments, decide()'s raw entries, the JSON report) from the succeeded children."""
    spec = StudySpec.model_validate(study.spec)
    exps = [e for e in repo.study_experiments(session, study_id=study.id)
            if (e.claim or "") in Claim.__members__]
    kids = repo.children_of(session, experiment_ids=[e.id for e in exps])
    results = []
    statuses = []
    cache: dict[str, int] = {}
    for exp in exps:
        jobs = kids[exp.id]
        exp_status = repo.experiment_status(jobs, exp.cancel_requested)
        statuses.append(exp_status)
        epochs = max((j.epochs_total for j in jobs), default=0)
        n_classes = _n_classes(session, jobs[0], settings, cache) if jobs else 2
        results.append(analyze_claim(Claim(exp.claim or ""), runs_of(session, jobs, "succeeded"),
                                     spec, epochs=epochs, n_classes=n_classes,
                                     partial=exp_status in ACTIVE))
    entries = decide(results, alpha=spec.alpha)
    for entry, exp, exp_status in zip(entries, exps, statuses, strict=True):
        entry["experiment_id"] = exp.id
        entry["experiment_status"] = exp_status
    every = [j for e in exps for j in kids[e.id]]
    report = _json_safe({
        "id": study.id, "name": study.name,
        "status": repo.experiment_status(every, study.cancel_requested),
        "created_at": study.created_at.isoformat(),
        "partial": any(e["partial"] for e in entries), "alpha": spec.alpha,
        "confidence": spec.confidence, "seeds": spec.seeds, "claims": entries})
    return exps, entries, report


def study_report(session: Session, study: Study, settings: ApiSettings) -> dict[str, Any]:
    """GET /report's body: {id, name, status, created_at, partial, alpha, confidence, seeds,
    claims: decide()'s entries, each with experiment_id and experiment_status}."""
    return _analysis(session, study, settings)[2]


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return "n/a"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}" if math.isfinite(x) else "n/a"
    return str(x)


def _effect(test: dict[str, Any]) -> str:
    return (f"{_fmt(test.get('estimate'))} "
            f"[{_fmt(test.get('ci_low'))}, {_fmt(test.get('ci_high'))}]")


def _partial_banner(report: dict[str, Any]) -> str | None:
    running = [c["claim"] for c in report["claims"] if c["partial"]]
    if not running:
        return None
    return (f"Partial: {len(running)} of {len(report['claims'])} claims' experiments have not "
            f"finished ({', '.join(running)}); their verdicts stay inconclusive and every "
            "number here may change until they do.")


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits, for reading (the JSON report keeps them whole)."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _detail_lines(details: dict[str, Any]) -> list[str]:
    out = []
    for key, value in details.items():
        text = json.dumps(_rounded(value), separators=(", ", ": "))
        if len(text) > 400:
            text = text[:400] + " ..."
        out.append(f"{key}: {text}")
    return out


def _test_line(test: dict[str, Any]) -> str:
    conf = test.get("confidence")
    level = f"{conf:.0%}" if isinstance(conf, float) else "CI"
    parts = [f"test {test.get('test')}", f"n = {_fmt(test.get('n'))}",
             f"estimate {_fmt(test.get('estimate'))}",
             f"{level} CI [{_fmt(test.get('ci_low'))}, {_fmt(test.get('ci_high'))}]",
             f"mean {_fmt(test.get('mean'))}", f"median {_fmt(test.get('median'))}",
             f"std {_fmt(test.get('std'))}", f"effect size d_z {_fmt(test.get('effect_size'))}",
             f"p (two-sided) {_fmt(test.get('p_two_sided'))}"]
    if test.get("n_dropped"):
        parts.append(f"{test['n_dropped']} dropped")
    return ", ".join(parts)


def _claim_items(c: dict[str, Any]) -> list[str]:
    """A claim's report lines (plain text), the same in the Markdown and the HTML report."""
    items = [f"Measure: {c['measure']}", f"Comparison: {c['comparison']}", f"Rule: {c['rule']}",
             f"Numbers: {_test_line(c['test'])}; Holm-adjusted p {_fmt(c['adjusted_p'])}"]
    if c["test"].get("note"):
        items.append(f"Note: {c['test']['note']}")
    items += _detail_lines(c["details"])
    if c.get("firm_up"):
        items.append(f"To firm it up: {c['firm_up'].get('text')}")
    return items


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report_markdown(report: dict[str, Any]) -> str:
    title = report["name"] or report["id"]
    lines = [f"# Study {title}", "",
             f"Study `{report['id']}`, created {report['created_at']}: status "
             f"{report['status']}; {report['seeds']} seeds per variant; verdicts at alpha "
             f"{report['alpha']:g}, Holm-adjusted across the {len(report['claims'])} claims.",
             ""]
    banner = _partial_banner(report)
    if banner:
        lines += [f"> **{banner}**", ""]
    conf = f"{report['confidence']:.0%}"
    lines += [f"| claim | verdict | effect [{conf} CI] | adjusted p | n |",
              "|---|---|---|---|---|"]
    for c in report["claims"]:
        lines.append(f"| {_md_cell(c['text'])} (`{c['claim']}`) | {c['verdict']} | "
                     f"{_effect(c['test'])} | {_fmt(c['adjusted_p'])} | "
                     f"{_fmt(c['test'].get('n'))} |")
    for c in report["claims"]:
        lines += ["", f"## {c['text']} (`{c['claim']}`)", "",
                  f"**{c['verdict']}**: {c['reason']}", ""]
        lines += [f"- {item}" for item in _claim_items(c)]
        lines.append(f"- Experiment: `{c['experiment_id']}` ({c['experiment_status']}; "
                     f"GET /v1/experiments/{c['experiment_id']}/summary)")
    return "\n".join(lines) + "\n"


_SWEEPS = (("learning_rates", "learning rate", "log"), ("init_scales", "init scale", "log"),
           ("batch_sizes", "batch size", "log2"))


def _claim_png(session: Session, exp: Experiment, entry: dict[str, Any]) -> bytes | None:
    details = entry["details"]
    title = entry["text"]
    for key, label, scale in _SWEEPS:
        if key in details and isinstance(details.get("mean_final_val_accuracy"), dict):
            return plots.study_sweep_png(details[key], details["mean_final_val_accuracy"],
                                         xlabel=label, xscale=scale, title=title)
    if "mean_gap_per_epoch" in details:
        return plots.study_gap_png(details["mean_gap_per_epoch"], title=title)
    summary = experiment_summary(session, exp, "succeeded")
    threshold = details.get("threshold")
    summary["thresholds"] = ({"val_accuracy": threshold}
                             if isinstance(threshold, float) and math.isfinite(threshold)
                             else {})
    return plots.study_curves_png(summary, "val_accuracy", f"{title}: val_accuracy")


CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#222}table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;
padding:.3rem .6rem;text-align:left;vertical-align:top}th{background:#f3f3f3}
.supported{color:#1a7f37;font-weight:600}.contradicted{color:#b3261e;font-weight:600}
.inconclusive{color:#7a5c00;font-weight:600}.partial{background:#fff4ce;padding:.6rem 1rem;
border-left:4px solid #e0a800}code{background:#f3f3f3;padding:0 .2rem}img{max-width:100%}
li{margin:.2rem 0}"""


def report_html(session: Session, study: Study, settings: ApiSettings) -> str:
    exps, entries, report = _analysis(session, study, settings)
    e = html.escape
    title = e(report["name"] or report["id"])
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Study {title}</title><style>{CSS}</style></head><body>",
             f"<h1>Study {title}</h1>",
             f"<p>Study <code>{e(report['id'])}</code>, created {e(report['created_at'])}: "
             f"status {e(report['status'])}; {report['seeds']} seeds per variant; verdicts "
             f"at alpha {report['alpha']:g}, Holm-adjusted across the "
             f"{len(report['claims'])} claims.</p>"]
    banner = _partial_banner(report)
    if banner:
        parts.append(f'<p class="partial">{e(banner)}</p>')
    conf = f"{report['confidence']:.0%}"
    parts.append(f"<table><tr><th>claim</th><th>verdict</th><th>effect [{conf} CI]</th>"
                 "<th>adjusted p</th><th>n</th></tr>")
    for c in report["claims"]:
        parts.append(f'<tr><td><a href="#{e(c["claim"])}">{e(c["text"])}</a></td>'
                     f'<td class="{e(c["verdict"])}">{e(c["verdict"])}</td>'
                     f"<td>{e(_effect(c['test']))}</td><td>{e(_fmt(c['adjusted_p']))}</td>"
                     f"<td>{e(_fmt(c['test'].get('n')))}</td></tr>")
    parts.append("</table>")
    by_id = {x.id: x for x in exps}
    for c, raw in zip(report["claims"], entries, strict=True):
        parts += [f'<h2 id="{e(c["claim"])}">{e(c["text"])} (<code>{e(c["claim"])}</code>)'
                  "</h2>",
                  f'<p><span class="{e(c["verdict"])}">{e(c["verdict"])}</span>: '
                  f"{e(c['reason'])}</p><ul>"]
        parts += [f"<li>{e(item)}</li>" for item in _claim_items(c)]
        parts.append(f"<li>Experiment: <code>{e(c['experiment_id'])}</code> "
                     f"({e(c['experiment_status'])})</li></ul>")
        png = _claim_png(session, by_id[c["experiment_id"]], raw)
        if png is not None:
            data = base64.b64encode(png).decode()
            parts.append(f'<p><img alt="{e(c["text"])}" '
                         f'src="data:image/png;base64,{data}"></p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


@router.get("/{study_id}/report")
def get_report(study: StudyDep, session: SessionDep, settings: SettingsDep) -> Any:
    """Per claim: measure, comparison, rule, the paired test's numbers, the Holm-adjusted p,
    the verdict and its reason (and, when inconclusive, how many seeds would settle it).
    Computed from the succeeded children on every read; `partial` while any claim's
    experiment is still running (its verdict is then inconclusive)."""
    return study_report(session, study, settings)


@router.get("/{study_id}/report.md", response_class=Response,
            responses={200: {"content": {"text/markdown": {}}}})
def get_report_md(study: StudyDep, session: SessionDep, settings: SettingsDep) -> Response:
    """The report as Markdown: a summary table and one section per claim."""
    text = report_markdown(study_report(session, study, settings))
    return Response(text, media_type="text/markdown; charset=utf-8")


@router.get("/{study_id}/report.html", response_class=Response,
            responses={200: {"content": {"text/html": {}}}})
def get_report_html(study: StudyDep, session: SessionDep, settings: SettingsDep) -> Response:
    """The report as one self-contained page (inline CSS, one inline PNG per claim)."""
    return Response(report_html(session, study, settings), media_type="text/html")


@dataclass
class StudyEvents:
    """The poller of one study's stream: a `progress` event whenever a claim's counts or
    status change, then `done` with the study and its report's verdicts."""

    study_id: str
    settings: ApiSettings
    sent: dict[str, Any] = field(default_factory=dict)

    def poll(self, session: Session) -> Poll:
        study = repo.get_study(session, study_id=self.study_id)
        if study is None:
            return Poll([ServerSentEvent(event="error", data={
                "error": "NotFound", "detail": f"study '{self.study_id}' was deleted"})], True)
        out = study_out(session, study, self.settings)
        progress = [{"claim": c.claim, "status": c.status, "counts": c.counts}
                    for c in out.claims]
        events = []
        if progress != self.sent.get("progress"):
            self.sent["progress"] = progress
            events.append(ServerSentEvent(event="progress", data={
                "study_id": out.id, "status": out.status, "claims": progress}))
        if out.status in ("succeeded", "failed", "cancelled"):
            report = study_report(session, study, self.settings)
            verdicts = [{"claim": c["claim"], "verdict": c["verdict"]}
                        for c in report["claims"]]
            events.append(ServerSentEvent(event="done", data={
                "study": out.model_dump(mode="json"), "verdicts": verdicts}))
            return Poll(events, True)
        return Poll(events)


@router.get("/{study_id}/events", response_class=EventSourceResponse, responses={
    200: {"description": "`progress` when a claim's counts change, then `done`"},
    404: {"description": "no such study"}})
async def study_events(study_id: StreamedStudyId, sessions: SessionsDep,
                       settings: SettingsDep) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events of a study: per-claim progress as children finish, then `done` with
    the study and each claim's verdict. A reconnect starts from the current progress."""
    async for event in stream(sessions, StudyEvents(study_id, settings)):
        yield event
