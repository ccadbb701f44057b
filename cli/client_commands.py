"""The commands that talk to a running service over HTTP, built on `client` (no torch, no
server imports): submit, watch, ls, status, history, curves, predict, cancel, datasets ...,
experiment ..., study ....

The server is $BNLAB_URL (or --url), the key $BNLAB_API_KEY. Read commands take --json for
scripts. Anything for a person (progress, tables, messages) goes to stderr or is a table on
stdout, drawn by cli.render; with --json, stdout holds the JSON alone. Exit codes: 0 success;
1 the watched job or experiment did not succeed, or the server refused the request; 2 bad usage.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from bnlab import BnlabError, Client, Experiment, Job, NotFound, Study
from bnlab._calls import EXPORT_SUFFIXES, STUDY_CLAIMS, STUDY_PRESETS
from cli.render import (
    LiveProgress,
    StudyProgress,
    dump,
    err,
    features_text,
    print_json,
    show,
    show_datasets,
    show_experiments,
    show_history,
    show_jobs,
    show_predictions,
    show_report,
    show_studies,
    show_study,
    show_summary,
)

P = ParamSpec("P")
R = TypeVar("R")

UrlOpt = Annotated[str | None, typer.Option(
    "--url", envvar="BNLAB_URL", show_default=False,
    help="The service's base URL (default $BNLAB_URL or http://127.0.0.1:8000).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only (for scripts).")]
IdArg = Annotated[str, typer.Argument(help="A job id or an experiment id.")]


def handles_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """A refused request is a one-line message and exit code 1, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BnlabError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path}: a JSON object is needed")
    return data


def is_experiment(spec: dict[str, Any]) -> bool:
    return "variants" in spec and "base" in spec


def job_or_experiment(bn: Client, some_id: str) -> Job | Experiment:
    try:
        return bn.jobs.get(some_id)
    except NotFound:
        try:
            return bn.experiments.get(some_id)
        except NotFound:
            raise NotFound(404, "NotFound", f"no job or experiment with id '{some_id}'") \
                from None


def watch_until_done(item: Job | Experiment, quiet: bool) -> Job | Experiment:
    """Follow `item` live (progress on stderr unless quiet) and return its final state."""
    if quiet:
        return item.wait()
    with LiveProgress(err) as live:
        if isinstance(item, Experiment):
            for c in item.children:
                live.add(c.job_id, f"{c.variant} seed={c.seed}", c.epochs, c.epoch, c.status)
        else:
            live.add(item.id, item.name or item.id, item.epochs, item.epoch, item.status)
        item.wait(progress=live)
    return item


def finish(item: Job | Experiment, as_json: bool) -> None:
    """Report the final state; exit 1 unless it succeeded."""
    show(item, as_json)
    if item.status != "succeeded":
        raise typer.Exit(1)


# -- commands -----------------------------------------------------------------------------------

@handles_errors
def submit(
    spec: Annotated[Path, typer.Argument(help="A job spec (JSON), or an experiment "
                                              "(an object with base and variants).")],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Follow it to the end; exit 1 "
                                                              "unless it succeeds.")] = False,
    as_json: JsonOpt = False, url: UrlOpt = None,
) -> None:
    """Submit a job (or an experiment); prints its id."""
    body = read_json(spec)
    with Client(url) as bn:
        item: Job | Experiment = (bn.experiments.create(body) if is_experiment(body)
                                  else bn.jobs.create(body))
        kind = "experiment" if isinstance(item, Experiment) else "job"
        if not as_json:
            err.print(f"submitted {kind} {item.id} ({item.status})", highlight=False)
            for w in getattr(item, "warnings", []):
                err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
        if watch:
            finish(watch_until_done(item, quiet=False), as_json)
        elif as_json:
            print_json(dump(item))
        else:
            sys.stdout.write(item.id + "\n")


@handles_errors
def watch(some_id: IdArg, as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """Follow a job or an experiment live; exit 1 unless it succeeds."""
    with Client(url) as bn:
        finish(watch_until_done(job_or_experiment(bn, some_id), quiet=False), as_json)


@handles_errors
def ls(
    status: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
    as_json: JsonOpt = False, url: UrlOpt = None,
) -> None:
    """List jobs, newest first."""
    with Client(url) as bn:
        jobs = list(bn.jobs.list(status=status, limit=limit, page_size=min(limit, 200)))
    if as_json:
        print_json([dump(j) for j in jobs])
        return
    show_jobs(jobs)


@handles_errors
def status(some_id: IdArg, as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """A job's or an experiment's state."""
    with Client(url) as bn:
        item = job_or_experiment(bn, some_id)
    show(item, as_json)


@handles_errors
def history(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV, one row per epoch.")] = False,
    as_json: JsonOpt = False, url: UrlOpt = None,
) -> None:
    """A job's per-epoch metrics (Keras's history)."""
    with Client(url) as bn:
        if as_csv:
            sys.stdout.write(bn.jobs.history_csv(job_id))
            return
        h = bn.jobs.history(job_id)
    if as_json:
        print_json(h)
        return
    show_history(h)


@handles_errors
def curves(
    ids: Annotated[str, typer.Argument(help="A job id, several (comma-separated, overlaid), "
                                            "or an experiment id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")],
    metrics: Annotated[str | None, typer.Option(help="Comma-separated (one, for an "
                                                     "experiment; default val_accuracy).")] = None,
    url: UrlOpt = None,
) -> None:
    """Save training curves as a PNG."""
    with Client(url) as bn:
        if "," in ids:
            png = bn.curves(ids.split(","), metrics or "val_accuracy")
        else:
            item = job_or_experiment(bn, ids)
            if isinstance(item, Experiment):
                png = bn.experiments.curves(item.id, (metrics or "val_accuracy").split(",")[0])
            elif metrics:
                png = bn.jobs.curves(item.id, metrics)
            else:
                png = bn.jobs.curves(item.id)
    output.write_bytes(png)
    err.print(f"wrote {output} ({len(png)} bytes)", highlight=False)


def read_rows(path: Path, feature_columns: list[str] | None) -> list[list[float]]:
    """Rows of a CSV: with a header, the dataset's feature columns by name (so the label
    column, if present, is left out); without one, every column in order."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    rows = [r for r in rows if r]
    if not rows:
        raise typer.BadParameter(f"{path}: no rows")

    def numeric(row: list[str]) -> bool:
        try:
            [float(x) for x in row]
        except ValueError:
            return False
        return True

    if numeric(rows[0]):
        return [[float(x) for x in r] for r in rows]
    header, body = rows[0], rows[1:]
    wanted = [c for c in (feature_columns or header) if c in header]
    if feature_columns and len(wanted) != len(feature_columns):
        missing = sorted(set(feature_columns) - set(header))
        raise typer.BadParameter(f"{path}: columns {missing} missing (need {feature_columns})")
    idx = [header.index(c) for c in wanted]
    try:
        return [[float(r[i]) for i in idx] for r in body]
    except (ValueError, IndexError) as exc:
        raise typer.BadParameter(f"{path}: {exc}") from None


@handles_errors
def predict(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="CSV of feature rows (a header "
                                                              "names the columns).")],
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "last",
    as_json: JsonOpt = False, url: UrlOpt = None,
) -> None:
    """Eval-mode predictions for the rows of a CSV."""
    with Client(url) as bn:
        job = bn.jobs.get(job_id)
        features = bn.datasets.get(job.dataset_id).feature_columns if job.dataset_id else None
        result = bn.jobs.predict(job_id, read_rows(input, features), checkpoint=checkpoint)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    show_predictions(result)


@handles_errors
def export(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    format: Annotated[str, typer.Option(
        "--format", "-f", help="onnx, safetensors (zip: weights + JSON sidecar) or "
                                "torch_export (.pt2).")] = "onnx",
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "last",
    fold_bn: Annotated[bool, typer.Option(
        "--fold-bn", help="Fold each BatchNorm into the adjacent dense layer.")] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="File to write (default: <job>-<checkpoint>[-folded].<ext>).")
    ] = None,
    url: UrlOpt = None,
) -> None:
    """Download the job's eval-mode model as ONNX, safetensors + sidecar, or torch.export."""
    if format not in EXPORT_SUFFIXES:
        raise typer.BadParameter(f"--format {format!r}: use one of {', '.join(EXPORT_SUFFIXES)}")
    path = output or Path(f"{job_id}-{checkpoint}{'-folded' if fold_bn else ''}"
                          f"{EXPORT_SUFFIXES[format]}")
    with Client(url) as bn:
        content = bn.jobs.export(job_id, format=format, checkpoint=checkpoint, fold_bn=fold_bn)
    path.write_bytes(content)
    err.print(f"{path} ({len(content):,} bytes)", highlight=False)


@handles_errors
def cancel(some_id: IdArg, as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """Cancel a job or an experiment (a running job stops at its next epoch end)."""
    with Client(url) as bn:
        item = job_or_experiment(bn, some_id)
        item = item.cancel()
    if as_json:
        print_json(dump(item))
    else:
        err.print(f"{item.id}: {item.status}"
                  + (" (cancel requested)" if item.cancel_requested else ""), highlight=False)


# -- bnlab datasets ...

datasets_app = typer.Typer(help="Upload and list datasets.", no_args_is_help=True)


@datasets_app.command("upload")
@handles_errors
def datasets_upload(
    file: Annotated[Path, typer.Argument(help=(
        "A CSV with a header row, an .npz with arrays x and y, or an IDX images file (with "
        "--labels)."))],
    labels: Annotated[Path | None, typer.Option(help=(
        "The IDX labels file of the IDX images in FILE (MNIST's format, optionally .gz)."))
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name to show.")] = None,
    label_column: Annotated[str | None, typer.Option(help=(
        "The class column of a CSV, or label array of an .npz (default: the server's rule)."))
    ] = None,
    as_json: JsonOpt = False, url: UrlOpt = None,
) -> None:
    """Upload a CSV, an .npz or an IDX pair; prints its id."""
    with Client(url) as bn:
        ds = bn.datasets.upload(file, name=name, label_column=label_column, labels=labels)
    if as_json:
        print_json(ds.model_dump(mode="json"))
        return
    what = "images" if ds.is_image else "features"
    err.print(f"dataset {ds.id} ({ds.format}): {ds.n_rows} rows, {what} {features_text(ds)}, "
              f"label {ds.label_column} {ds.class_counts}", highlight=False)
    sys.stdout.write(ds.id + "\n")


@datasets_app.command("ls")
@handles_errors
def datasets_ls(as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """List uploaded datasets."""
    with Client(url) as bn:
        items = bn.datasets.list()
    if as_json:
        print_json([d.model_dump(mode="json") for d in items])
        return
    show_datasets(items)


# -- bnlab experiment ...

experiment_app = typer.Typer(help="Experiments: variants x seeds, summarised.",
                             no_args_is_help=True)


@experiment_app.command("submit")
@handles_errors
def experiment_submit(
    file: Annotated[Path, typer.Argument(help="An experiment spec (JSON).")],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Follow it to the end; exit 1 "
                                                              "unless it succeeds.")] = False,
    as_json: JsonOpt = False, url: UrlOpt = None,
) -> None:
    """Submit an experiment; prints its id."""
    body = read_json(file)
    with Client(url) as bn:
        exp = bn.experiments.create(body)
        if not as_json:
            err.print(f"submitted experiment {exp.id}: {len(exp.children)} jobs "
                      f"({len(exp.variants)} variants x {len(exp.seeds)} seeds)",
                      highlight=False)
        if watch:
            finish(watch_until_done(exp, quiet=False), as_json)
        elif as_json:
            print_json(dump(exp))
        else:
            sys.stdout.write(exp.id + "\n")


@experiment_app.command("ls")
@handles_errors
def experiment_ls(limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
                  as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """List experiments, newest first."""
    with Client(url) as bn:
        items = list(bn.experiments.list(limit=limit, page_size=min(limit, 200)))
    if as_json:
        print_json([dump(e) for e in items])
        return
    show_experiments(items)


@experiment_app.command("summary")
@handles_errors
def experiment_summary(
    experiment_id: Annotated[str, typer.Argument(help="An experiment id.")],
    as_csv: Annotated[bool, typer.Option("--csv", help="Per-epoch bands as CSV.")] = False,
    as_json: JsonOpt = False, url: UrlOpt = None,
) -> None:
    """Per-variant final values with confidence intervals, and paired differences."""
    with Client(url) as bn:
        if as_csv:
            sys.stdout.write(bn.experiments.summary_csv(experiment_id))
            return
        s = bn.experiments.summary(experiment_id)
    if as_json:
        print_json(s)
        return
    show_summary(s)


@experiment_app.command("status")
@handles_errors
def experiment_status(experiment_id: Annotated[str, typer.Argument(help="An experiment id.")],
                      as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """An experiment's state and its children."""
    with Client(url) as bn:
        exp = bn.experiments.get(experiment_id)
    show(exp, as_json)


@experiment_app.command("cancel")
@handles_errors
def experiment_cancel(experiment_id: Annotated[str, typer.Argument(help="An experiment id.")],
                      as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """Cancel every child that has not finished."""
    with Client(url) as bn:
        exp = bn.experiments.cancel(experiment_id)
    show(exp, as_json)


@experiment_app.command("retry")
@handles_errors
def experiment_retry(experiment_id: Annotated[str, typer.Argument(help="An experiment id.")],
                     as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """Queue the failed children again."""
    with Client(url) as bn:
        exp = bn.experiments.retry(experiment_id)
    show(exp, as_json)


# -- bnlab study ...

study_app = typer.Typer(help="Studies: the claims about BatchNorm tested on your data and "
                             "network, a verdict per claim.", no_args_is_help=True)

# The built-in datasets' names (models.spec's BuiltinDataset): `--dataset NAME` is one of them,
# anything else the id of an uploaded dataset.
BUILTIN_DATASETS = ("concertriccir2", "concentric_circles", "moons", "xor", "spirals", "blobs",
                    "digits", "iris", "wine", "breast_cancer", "mnist", "fashion_mnist",
                    "cifar10")
StudyIdArg = Annotated[str, typer.Argument(help="A study id.")]


def dataset_ref(value: str) -> dict[str, Any]:
    """`--dataset`: a built-in's name -> {"name": ...}, a JSON object as given (a built-in
    with options), anything else an uploaded dataset's id -> {"id": ...}."""
    text = value.strip()
    if text.startswith("{"):
        try:
            ref = json.loads(text)
        except ValueError as exc:
            raise typer.BadParameter(f"--dataset: {exc}") from None
        if not isinstance(ref, dict):
            raise typer.BadParameter("--dataset: a JSON object is needed")
        return ref
    return {"name": text} if text in BUILTIN_DATASETS else {"id": text}


def claim_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    claims = [c.strip() for c in value.split(",") if c.strip()]
    unknown = [c for c in claims if c not in STUDY_CLAIMS]
    if unknown or not claims:
        raise typer.BadParameter(f"--claims {value!r}: use some of {', '.join(STUDY_CLAIMS)}")
    return claims


def finish_study(study: Study, as_json: bool) -> None:
    """The verdicts of a finished study (or its state, if there is no report); exit 1 unless
    it succeeded."""
    try:
        report: dict[str, Any] | None = study.report()
    except BnlabError as exc:
        if study.status == "succeeded":
            raise
        report = None
        if not as_json:
            err.print(f"no report: {exc}", highlight=False)
    if as_json:
        print_json({"study": study.model_dump(mode="json"), "report": report})
    elif report is not None:
        show_report(report)
    else:
        show_study(study)
    if study.status != "succeeded":
        raise typer.Exit(1)


def watch_study(study: Study, poll: float) -> Study:
    with StudyProgress(err) as live:
        live(study)
        study.wait(progress=live, poll=poll)
    return study


WatchOpt = Annotated[bool, typer.Option("--watch", "-w", help=(
    "Follow it to the end with a bar per claim, then print the verdicts; exit 1 unless every "
    "run succeeded."))]
PollOpt = Annotated[float, typer.Option(help="Seconds between polls while watching.")]


@study_app.command("run")
@handles_errors
def study_run(
    preset: Annotated[str, typer.Argument(help="The claims to test: bn-claims.")] = "bn-claims",
    dataset: Annotated[str | None, typer.Option(help=(
        "A built-in dataset's name (e.g. concertriccir2), an uploaded dataset's id, or a JSON "
        "object (a built-in with options). Default: the server's (concertriccir2)."))] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per variant (paired across variants).")
                     ] = 20,
    claims: Annotated[str | None, typer.Option(help=(
        "Comma-separated subset: " + ", ".join(STUDY_CLAIMS) + "."))] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per run.")] = None,
    base: Annotated[Path | None, typer.Option(help=(
        "A partial job spec (JSON: dataset, network, training); --dataset and --epochs "
        "override its fields."))] = None,
    name: Annotated[str | None, typer.Option(help="A name to show.")] = None,
    watch: WatchOpt = False, poll: PollOpt = 2.0, as_json: JsonOpt = False, url: UrlOpt = None,
) -> None:
    """Start a study; prints its id (with --watch: live progress, then the verdicts)."""
    if preset not in STUDY_PRESETS:
        raise typer.BadParameter(f"preset {preset!r}: use one of {', '.join(STUDY_PRESETS)}")
    body = read_json(base) if base is not None else {}
    if dataset is not None:
        body["dataset"] = dataset_ref(dataset)
    if epochs is not None:
        body["training"] = {**(body.get("training") or {}), "epochs": epochs}
    with Client(url) as bn:
        study = bn.studies.create(preset, base=body or None, claims=claim_list(claims),
                                  seeds=seeds, name=name)
        if not as_json:
            cost = study.cost
            err.print(f"submitted study {study.id}: {len(study.claims)} claims"
                      + (f", {cost.children} jobs" if cost is not None else "")
                      + (f", about {cost.estimated_seconds:.0f} s"
                         if cost is not None and cost.estimated_seconds is not None else ""),
                      highlight=False)
            for w in study.warnings:
                err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
        if watch:
            finish_study(watch_study(study, poll) if not as_json
                         else study.wait(poll=poll), as_json)
        elif as_json:
            print_json(study.model_dump(mode="json"))
        else:
            sys.stdout.write(study.id + "\n")


@study_app.command("watch")
@handles_errors
def study_watch(study_id: StudyIdArg, poll: PollOpt = 2.0, as_json: JsonOpt = False,
                url: UrlOpt = None) -> None:
    """Follow a study to the end, then print its verdicts; exit 1 unless all ran."""
    with Client(url) as bn:
        study = bn.studies.get(study_id)
        finish_study(study.wait(poll=poll) if as_json else watch_study(study, poll),
                     as_json)


@study_app.command("show")
@handles_errors
def study_show(study_id: StudyIdArg, as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """A study's state: each claim's experiment and how far it is."""
    with Client(url) as bn:
        study = bn.studies.get(study_id)
    if as_json:
        print_json(study.model_dump(mode="json"))
    else:
        show_study(study)


@study_app.command("ls")
@handles_errors
def study_ls(limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
             as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """List studies, newest first."""
    with Client(url) as bn:
        items = list(bn.studies.list(limit=limit, page_size=min(limit, 100)))
    if as_json:
        print_json([s.model_dump(mode="json") for s in items])
        return
    show_studies(items)


@study_app.command("report")
@handles_errors
def study_report(
    study_id: StudyIdArg,
    format: Annotated[str, typer.Option("--format", "-f", help=(
        "md (Markdown), json, html (a page with the figures), or table (the verdicts)."))
    ] = "md",
    output: Annotated[Path | None, typer.Option("--output", "-o", help=(
        "File to write (default: stdout)."))] = None,
    url: UrlOpt = None,
) -> None:
    """A study's report: per claim the verdict, its reason and numbers."""
    if format not in ("md", "json", "html", "table"):
        raise typer.BadParameter(f"--format {format!r}: use md, json, html or table")
    with Client(url) as bn:
        if format == "table":
            show_report(bn.studies.report(study_id))
            return
        text = (bn.studies.report_markdown(study_id) if format == "md"
                else bn.studies.report_html(study_id) if format == "html"
                else json.dumps(bn.studies.report(study_id), indent=2, default=str) + "\n")
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    err.print(f"wrote {output} ({len(text):,} characters)", highlight=False)


@study_app.command("cancel")
@handles_errors
def study_cancel(study_id: StudyIdArg, as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """Cancel every run of the study that has not finished."""
    with Client(url) as bn:
        study = bn.studies.cancel(study_id)
    if as_json:
        print_json(study.model_dump(mode="json"))
    else:
        err.print(f"{study.id}: {study.status}"
                  + (" (cancel requested)" if study.cancel_requested else ""), highlight=False)


@study_app.command("retry")
@handles_errors
def study_retry(study_id: StudyIdArg, as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """Queue the study's failed runs again."""
    with Client(url) as bn:
        study = bn.studies.retry(study_id)
    if as_json:
        print_json(study.model_dump(mode="json"))
    else:
        show_study(study)


def register(app: typer.Typer) -> None:
    """Add the client commands to `bnlab`."""
    for command in (submit, watch, ls, status, history, curves, predict, export, cancel):
        app.command()(command)
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(experiment_app, name="experiment")
    app.add_typer(study_app, name="study")
