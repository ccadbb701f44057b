"""Datasets: uploads (CSV, .npz, IDX pairs), listing, scatter plot, and the built-in ones."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, get_args

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from api import plots
from api.deps import DatasetDep, PrincipalDep, SessionDep, SettingsDep
from api.errors import InvalidInput, PayloadTooLarge
from api.plots import PNG
from api.resolve import uploaded_table
from api.schemas import DatasetOut, DatasetPage, GeneratorOut, GeneratorParam
from api.settings import ApiSettings
from models.datasets import DatasetError, Table, class_counts
from models.db import repository as repo
from models.db.tables import Dataset
from models.image_data import (
    DATA_DIR_DESCRIPTIONS,
    SKLEARN_DESCRIPTIONS,
    STANDARD_SHAPES,
    builtin_shape,
    idx_to_npz,
    parse_upload,
    sniff_format,
)
from models.spec import SKLEARN_SHAPES, DataDirDataset, GeneratedDataset

router = APIRouter(prefix="/datasets", tags=["datasets"])

CHUNK = 1 << 20


def dataset_out(d: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(d)


def _read_capped(file: UploadFile, limit: int, *, used: int = 0) -> bytes:
    # Starlette spools the upload to a temporary file; read it in chunks and stop past the
    # limit so an oversized file is never held whole in memory. `used`: bytes of the other
    # file of an IDX pair, which share the limit.
    parts: list[bytes] = []
    size = used
    while chunk := file.file.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the upload is over {limit:,} bytes (max_upload_bytes): upload "
                                  "a smaller file or raise BNLAB_MAX_UPLOAD_BYTES")
        parts.append(chunk)
    return b"".join(parts)


def _parse(content: bytes, labels: UploadFile | None, filename: str | None,
           label_column: str | None, settings: ApiSettings) -> tuple[bytes, str, Table]:
    """(bytes to store, their format, the table): a CSV or .npz as sent, an IDX pair
    canonicalised as an .npz of x and y."""
    limits = {"max_rows": settings.max_csv_rows, "max_bytes": settings.max_upload_bytes,
              "max_values": settings.max_upload_values}
    if labels is not None:
        if label_column not in (None, "y"):
            raise DatasetError(f"label_column '{label_column}': an IDX pair's labels are its "
                               "labels file (stored as 'y'); leave label_column out")
        labels_content = _read_capped(labels, settings.max_upload_bytes, used=len(content))
        stored, table = idx_to_npz(content, labels_content, **limits)
        return stored, "npz", table
    fmt = sniff_format(content, filename)
    if fmt == "idx":
        raise DatasetError("this looks like an IDX (or gzip-compressed) file, which needs its "
                           "labels: send the images file as `file` and the labels file as "
                           "`labels` (CLI: bnlab datasets upload IMAGES --labels LABELS)")
    table = parse_upload(content, fmt=fmt, label_column=label_column,
                         max_columns=settings.max_csv_columns, **limits)
    return content, fmt, table


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut,
             responses={413: {"description": "the upload is over max_upload_bytes"},
                        422: {"description": "the file cannot be used; `detail` says what is "
                                             "wrong (a CSV's line and column) and what to "
                                             "change"}})
def upload_dataset(
    file: Annotated[UploadFile, File(description=(
        "a CSV with a header row (numeric features and one label column); an .npz with "
        "arrays x ((N, F), (N, H, W) or (N, C, H, W)) and y ((N,) integers or strings); or an "
        "IDX images file (MNIST's format, optionally .gz) with its labels in `labels`"))],
    session: SessionDep, settings: SettingsDep, response: Response, principal: PrincipalDep,
    labels: Annotated[UploadFile | None, File(description=(
        "the IDX labels file of the images in `file`; the pair is stored as an .npz"))] = None,
    name: Annotated[str | None, Form(max_length=200)] = None,
    label_column: Annotated[str | None, Form(max_length=256, description=(
        "CSV: default the first of class/label/target/y, else the last column; .npz: the "
        "label array, default y (or label/labels/target/class)"))] = None,
) -> DatasetOut:
    """Store an upload. The format is detected from the content (a zip is an .npz) or the
    file name (.npz); an IDX pair is stored as the .npz of its arrays (np.savez_compressed,
    x as (N, 1, H, W) and y, in the files' dtypes), so it reads back as format "npz"."""
    content = _read_capped(file, settings.max_upload_bytes)
    stored, fmt, table = _parse(content, labels, file.filename, label_column or None, settings)
    dataset = repo.create_dataset(
        session, name=name or file.filename, filename=file.filename, content=stored,
        n_rows=table.n_rows, n_features=table.n_features, format=fmt,
        input_shape=table.input_shape, columns=[*table.feature_names, table.label_column],
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


def _param(key: str, p: dict[str, Any]) -> GeneratorParam:
    return GeneratorParam(name=key, type=p.get("type"), default=p.get("default"),
                          description=p.get("description"), minimum=p.get("minimum"),
                          maximum=p.get("maximum"), exclusive_minimum=p.get("exclusiveMinimum"),
                          exclusive_maximum=p.get("exclusiveMaximum"), choices=p.get("enum"))


def _data_dir_facts(name: str, data_dir: Path | None) -> dict[str, Any]:
    ds = DataDirDataset(name=name)  # type: ignore[arg-type]
    try:
        shape, n_classes, n_rows = builtin_shape(ds, data_dir)
    except DatasetError as exc:
        shape, n_classes, _ = STANDARD_SHAPES[name]
        return {"input_shape": list(shape), "n_features": math.prod(shape), "n_classes": n_classes,
                "n_rows": None, "available": False, "note": str(exc)}
    return {"input_shape": list(shape), "n_features": math.prod(shape), "n_classes": n_classes,
            "n_rows": n_rows, "note": "n_rows is the train split's (the default)"}


def _facts(model: type[Any], name: str, props: dict[str, Any], data_dir: Path | None
           ) -> dict[str, Any]:
    """What a listing says of one built-in dataset's shape, with the default parameters."""
    if model is DataDirDataset:
        return _data_dir_facts(name, data_dir)
    if name in SKLEARN_SHAPES:
        shape, n_classes, n_rows = builtin_shape(model(name=name))
        return {"input_shape": list(shape), "n_features": SKLEARN_SHAPES[name][0],
                "n_classes": n_classes, "n_rows": n_rows}
    return {"input_shape": None if "n_features" in props else [2],
            "n_features": "n_features" if "n_features" in props else 2,
            "n_classes": "n_classes" if "n_classes" in props else 2,
            "n_rows": "n_samples" if "n_samples" in props else builtin_shape(model(name=name))[2]}


def _generator_out(model: type[Any], data_dir: Path | None = None) -> list[GeneratorOut]:
    """One entry per name the model accepts (scikit-learn's tables and the data-directory
    datasets share a model each)."""
    schema = model.model_json_schema()
    props: dict[str, Any] = schema["properties"]
    names = [props["name"]["const"]] if "const" in props["name"] else props["name"]["enum"]
    params = [_param(key, p) for key, p in props.items() if key != "name"]
    out = []
    for name in names:
        description = SKLEARN_DESCRIPTIONS.get(name) or DATA_DIR_DESCRIPTIONS.get(name) or (
            " ".join(schema["description"].split()) if "description" in schema else None)
        out.append(GeneratorOut(
            name=name, description=description, parameters=params,
            example={"name": name, **{p.name: p.default for p in params}},
            **_facts(model, name, props, data_dir)))
    return out


@router.get("/builtin", response_model=list[GeneratorOut])
def list_builtin(settings: SettingsDep) -> list[GeneratorOut]:
    """Built-in datasets a job's `dataset` can name instead of an uploaded id: the generators,
    with their parameters; the seed notebook's `concertriccir2` (its CSV's 499 rows);
    scikit-learn's digits, iris, wine and breast_cancer; and mnist, fashion_mnist and cifar10,
    read from BNLAB_DATA_DIR (`available` false, with a note, when their files are not there)."""
    return [out for m in _generators() for out in _generator_out(m, settings.data_dir)]


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset: DatasetDep) -> DatasetOut:
    return dataset_out(dataset)


@router.get("/{dataset_id}/scatter.png", response_class=Response, responses=PNG)
def dataset_scatter(dataset: DatasetDep, session: SessionDep) -> Response:
    """The notebook's `plt.scatter(X, Y, c=class)`: first two features coloured by class.
    Image datasets answer 422: two pixels of an image say nothing."""
    if len(dataset.input_shape) > 1:
        shape = " x ".join(map(str, dataset.input_shape))
        raise InvalidInput(f"dataset '{dataset.id}' holds images ({shape}): a scatter plot of "
                           "two pixel values says nothing, so there is none; tables (CSV, or "
                           "an .npz whose x is (N, F)) have one")
    table = uploaded_table(session, dataset, dataset.label_column)
    png = plots.scatter_png(table.X, table.y, classes=table.classes,
                            feature_names=table.feature_names,
                            title=dataset.name or dataset.id)
    return Response(png, media_type="image/png")
