"""Datasets: CSV upload, listing, scatter plot, and the built-in generators."""

from __future__ import annotations

from typing import Annotated, Any, get_args

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from api import plots
from api.deps import DatasetDep, PrincipalDep, SessionDep, SettingsDep
from api.errors import PayloadTooLarge
from api.schemas import DatasetOut, DatasetPage, GeneratorOut, GeneratorParam
from models.datasets import class_counts, parse_csv
from models.db import repository as repo
from models.db.tables import Dataset
from models.spec import NOTEBOOK_ROWS, GeneratedDataset

router = APIRouter(prefix="/datasets", tags=["datasets"])

CHUNK = 1 << 20
PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "a PNG image"}}


def dataset_out(d: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(d)


def _read_capped(file: UploadFile, limit: int) -> bytes:
    # Starlette spools the upload to a temporary file; read it in chunks and stop past the
    # limit so an oversized file is never held whole in memory.
    parts: list[bytes] = []
    size = 0
    while chunk := file.file.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the file is over {limit:,} bytes (max_upload_bytes): upload a "
                                  "smaller CSV or raise BNLAB_MAX_UPLOAD_BYTES")
        parts.append(chunk)
    return b"".join(parts)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut,
             responses={413: {"description": "file over max_upload_bytes"},
                        422: {"description": "the CSV cannot be used; `detail` names the line "
                                             "and column"}})
def upload_dataset(
    file: Annotated[UploadFile, File(description="CSV with a header row; numeric features and "
                                                 "one label column")],
    session: SessionDep, settings: SettingsDep, response: Response, principal: PrincipalDep,
    name: Annotated[str | None, Form(max_length=200)] = None,
    label_column: Annotated[str | None, Form(max_length=256, description=(
        "default: the first of class/label/target/y, else the last column"))] = None,
) -> DatasetOut:
    content = _read_capped(file, settings.max_upload_bytes)
    table = parse_csv(content, label_column=label_column or None,
                      max_rows=settings.max_csv_rows, max_columns=settings.max_csv_columns,
                      max_bytes=settings.max_upload_bytes)
    dataset = repo.create_dataset(
        session, name=name or file.filename, filename=file.filename, content=content,
        n_rows=table.n_rows,
        n_features=table.n_features, columns=[*table.feature_names, table.label_column],
        label_column=table.label_column, classes=table.classes,
        class_counts=class_counts(table), owner=principal.owner,
    )
    session.commit()
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return dataset_out(dataset)


@router.get("", response_model=DatasetPage)
def list_datasets(session: SessionDep, principal: PrincipalDep,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50) -> DatasetPage:
    """Newest first."""
    rows = repo.list_datasets(session, limit=limit, owner=principal.owner)
    return DatasetPage(items=[dataset_out(d) for d in rows])


def _generators() -> list[type[Any]]:
    union = get_args(GeneratedDataset)[0]
    return list(get_args(union))


def _generator_out(model: type[Any]) -> GeneratorOut:
    schema = model.model_json_schema()
    props: dict[str, Any] = schema["properties"]
    name = props["name"]["const"]
    params = [
        GeneratorParam(name=key, type=p.get("type"), default=p.get("default"),
                       description=p.get("description"), minimum=p.get("minimum"),
                       maximum=p.get("maximum"), exclusive_minimum=p.get("exclusiveMinimum"),
                       exclusive_maximum=p.get("exclusiveMaximum"))
        for key, p in props.items() if key != "name"
    ]
    return GeneratorOut(
        name=name,
        description=" ".join(schema["description"].split()) if "description" in schema else None,
        n_features="n_features" if "n_features" in props else 2,
        n_classes="n_classes" if "n_classes" in props else 2,
        n_rows="n_samples" if "n_samples" in props else NOTEBOOK_ROWS,
        parameters=params,
        example={"name": name, **{p.name: p.default for p in params}},
    )


@router.get("/builtin", response_model=list[GeneratorOut])
def list_builtin() -> list[GeneratorOut]:
    """Built-in datasets a job's `dataset` can name instead of an uploaded id: the generators,
    with their parameters, and the seed notebook's `concertriccir2` (its CSV's 499 rows)."""
    return [_generator_out(m) for m in _generators()]


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset: DatasetDep) -> DatasetOut:
    return dataset_out(dataset)


@router.get("/{dataset_id}/scatter.png", response_class=Response, responses=PNG)
def dataset_scatter(dataset: DatasetDep, session: SessionDep) -> Response:
    """The notebook's `plt.scatter(X, Y, c=class)`: first two features coloured by class."""
    content = repo.get_dataset_content(session, dataset_id=dataset.id) or b""
    table = parse_csv(content, label_column=dataset.label_column)
    png = plots.scatter_png(table.X, table.y, classes=table.classes,
                            feature_names=table.feature_names,
                            title=dataset.name or dataset.id)
    return Response(png, media_type="image/png")
