"""Datasets as numpy tables: built-in generators, the seed notebook's CSV (shipped in
`models/data/`) and a strict CSV reader. No torch here.

Generators are pure functions of their parameters (one `np.random.default_rng(seed)` each), so a
job spec names its data exactly. The CSV reader uses the stdlib `csv` module on text only; every
rejection names the 1-based file line (the header is line 1) and the column.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from models.spec import (
    BlobsDataset,
    BuiltinDataset,
    CirclesDataset,
    DataDirDataset,
    DigitsDataset,
    MoonsDataset,
    NotebookDataset,
    SpiralsDataset,
    TabularSklearnDataset,
    UploadedDataset,
    XorDataset,
)

LABEL_CANDIDATES = ("class", "label", "target", "y")
# Generous bounds for load_table; the API applies its own (smaller) limits at upload time.
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_COLUMNS = 1_025
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_F32_MAX = float(np.finfo(np.float32).max)


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the line and column of the problem."""


@dataclass(frozen=True)
class Table:
    X: np.ndarray  # float32 (n, d) for tables, (n, C, H, W) for images
    y: np.ndarray  # int64 (n,), class ids 0..k-1
    feature_names: list[str]  # one per column of X flattened (images: "c{c}_y{i}_x{j}")
    classes: list[str]  # original label values as strings; index = class id
    label_column: str

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One row's shape: (F,) for a table, (C, H, W) for images."""
        return tuple(int(d) for d in self.X.shape[1:])

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)

    @property
    def is_image(self) -> bool:
        return self.X.ndim == 4

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def class_counts(t: Table) -> dict[str, int]:
    counts = np.bincount(t.y, minlength=t.n_classes)
    return {name: int(c) for name, c in zip(t.classes, counts, strict=True)}


# ---------------------------------------------------------------------------- generators

Generated = CirclesDataset | MoonsDataset | XorDataset | SpiralsDataset | BlobsDataset


def _per_class(n: int, k: int) -> list[int]:
    """Split n rows over k classes as evenly as possible (earlier classes get the remainder)."""
    return [n // k + (1 if c < n % k else 0) for c in range(k)]


def _circles(ds: CirclesDataset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # sklearn's make_circles: class 0 on the unit circle, class 1 on radius `factor`
    n_out, n_in = _per_class(ds.n_samples, 2)
    t_out = np.linspace(0.0, 2 * np.pi, n_out, endpoint=False)
    t_in = np.linspace(0.0, 2 * np.pi, n_in, endpoint=False)
    X = np.concatenate([np.c_[np.cos(t_out), np.sin(t_out)],
                        ds.factor * np.c_[np.cos(t_in), np.sin(t_in)]])
    y = np.repeat([0, 1], [n_out, n_in])
    return X + rng.normal(0.0, ds.noise, X.shape), y


def _moons(ds: MoonsDataset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n_out, n_in = _per_class(ds.n_samples, 2)
    t_out = np.linspace(0.0, np.pi, n_out)
    t_in = np.linspace(0.0, np.pi, n_in)
    X = np.concatenate([np.c_[np.cos(t_out), np.sin(t_out)],
                        np.c_[1.0 - np.cos(t_in), 0.5 - np.sin(t_in)]])
    y = np.repeat([0, 1], [n_out, n_in])
    return X + rng.normal(0.0, ds.noise, X.shape), y


def _xor(ds: XorDataset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Rows cycle through the four quadrants so the classes stay balanced; the label comes from
    # the clean point, then noise blurs the quadrant boundaries.
    signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
    quadrant = np.arange(ds.n_samples) % 4
    clean = rng.uniform(0.0, 1.0, (ds.n_samples, 2)) * signs[quadrant]
    y = (clean[:, 0] * clean[:, 1] > 0).astype(np.int64)
    return clean + rng.normal(0.0, ds.noise, clean.shape), y


def _spirals(ds: SpiralsDataset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    parts, labels = [], []
    for c, n in enumerate(_per_class(ds.n_samples, ds.n_classes)):
        r = np.linspace(0.05, 1.0, n)
        theta = 2 * np.pi * (ds.turns * r + c / ds.n_classes)
        parts.append(np.c_[r * np.cos(theta), r * np.sin(theta)])
        labels.append(np.full(n, c))
    X = np.concatenate(parts)
    return X + rng.normal(0.0, ds.noise, X.shape), np.concatenate(labels)


def _blobs(ds: BlobsDataset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # sklearn's make_blobs: centres uniform in a (-10, 10) box; `noise` is not used here
    centers = rng.uniform(-10.0, 10.0, (ds.n_classes, ds.n_features))
    counts = _per_class(ds.n_samples, ds.n_classes)
    y = np.repeat(np.arange(ds.n_classes), counts)
    return centers[y] + rng.normal(0.0, ds.cluster_std, (ds.n_samples, ds.n_features)), y


_GENERATORS = {
    "concentric_circles": _circles,
    "moons": _moons,
    "xor": _xor,
    "spirals": _spirals,
    "blobs": _blobs,
}


NOTEBOOK_CSV = "concertriccir2.csv"


@cache
def notebook_csv() -> bytes:
    """The seed notebook's dataset, byte for byte as the notebook read it."""
    return resources.files("models").joinpath("data", NOTEBOOK_CSV).read_bytes()


def generate(ds: BuiltinDataset) -> Table:
    """The generator's rows in a shuffled order; same parameters -> bitwise-identical arrays.
    The notebook's dataset keeps its file order (a `tail` split then matches Keras's), and so
    do scikit-learn's tables (models.image_data). Data-directory datasets need `load_table`."""
    if isinstance(ds, NotebookDataset):
        return parse_csv(notebook_csv())
    if isinstance(ds, DigitsDataset | TabularSklearnDataset):
        from models.image_data import sklearn_table  # it imports this module

        return sklearn_table(ds)
    if isinstance(ds, DataDirDataset):
        raise DatasetError(f"dataset '{ds.name}' is read from the data directory "
                           "(BNLAB_DATA_DIR), not generated: load it with load_table")
    rng = np.random.default_rng(ds.seed)
    X, y = _GENERATORS[ds.name](ds, rng)  # type: ignore[operator]
    order = rng.permutation(len(y))
    n_classes = ds.n_classes if isinstance(ds, SpiralsDataset | BlobsDataset) else 2
    d = X.shape[1]
    names = ["x", "y"] if d == 2 else [f"x{i}" for i in range(d)]
    return Table(
        X=np.ascontiguousarray(X[order], dtype=np.float32),
        y=np.ascontiguousarray(y[order], dtype=np.int64),
        feature_names=names,
        classes=[str(c) for c in range(n_classes)],
        label_column="class",
    )


# ---------------------------------------------------------------------------- CSV


def _decode(content: bytes, max_bytes: int) -> str:
    if len(content) > max_bytes:
        raise DatasetError(f"the file is {len(content):,} bytes; the limit (max_bytes) is "
                           f"{max_bytes:,}")
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = content[: e.start].count(b"\n") + 1
        raise DatasetError(f"line {line}: the file is not UTF-8 text (byte 0x{content[e.start]:02x}"
                           f" at offset {e.start}); save it as UTF-8 CSV") from None


def _pick_label(header: list[str], label_column: str | None) -> int:
    if label_column is not None:
        if label_column in header:
            return header.index(label_column)
        folded = [i for i, name in enumerate(header) if name.lower() == label_column.lower()]
        if len(folded) == 1:
            return folded[0]
        raise DatasetError(f"label column '{label_column}' is not in the header; the columns "
                           f"are {header}")
    lowered = [name.lower() for name in header]
    for candidate in LABEL_CANDIDATES:
        if candidate in lowered:
            return lowered.index(candidate)
    return len(header) - 1


def _parse_header(row: list[str], max_columns: int) -> list[str]:
    header = [name.strip() for name in row]
    if len(header) > max_columns:
        raise DatasetError(f"line 1: the header has {len(header)} columns; the limit "
                           f"(max_columns) is {max_columns}")
    for i, name in enumerate(header):
        if not name:
            raise DatasetError(f"line 1: column {i + 1} of the header has no name")
    dupes = sorted(name for name, c in Counter(header).items() if c > 1)
    if dupes:
        raise DatasetError(f"line 1: duplicate column names {dupes}: every column needs a "
                           "unique name")
    return header


def _feature_value(text: str, line: int, column: str) -> float:
    value = text.strip()
    where = f"line {line}, column '{column}'"
    if not value:
        raise DatasetError(f"{where}: the value is missing (empty)")
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DatasetError(f"{where}: {value!r} is not a finite number (NaN and inf are refused)")
    if abs(number) > _F32_MAX:
        raise DatasetError(f"{where}: {value!r} is too large for float32")
    return number


def _canonical_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _encode_labels(raw: list[str]) -> tuple[np.ndarray, list[str]]:
    """Class ids and names: numeric labels sort numerically ("1.0" -> "1"), others as text."""
    numbers = [_canonical_number(v) for v in raw]
    keys: list[str]
    if all(n is not None for n in numbers):
        finite = [n for n in numbers if n is not None]
        keys = [str(int(n)) if n.is_integer() else repr(n) for n in finite]
        values = dict(zip(keys, finite, strict=True))
        classes = sorted(values, key=values.__getitem__)
    else:
        keys = raw
        classes = sorted(set(raw))
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[k] for k in keys], dtype=np.int64), classes


def parse_csv(content: bytes, *, label_column: str | None = None,
              max_rows: int = DEFAULT_MAX_ROWS, max_columns: int = DEFAULT_MAX_COLUMNS,
              max_bytes: int = DEFAULT_MAX_BYTES) -> Table:
    """A header row, numeric finite feature columns and one label column; anything else raises.

    The label column is `label_column` if given, else the first of class/label/target/y present
    (case-insensitive), else the last column. Blank lines are skipped.
    """
    reader = csv.reader(io.StringIO(_decode(content, max_bytes), newline=""))
    try:
        first = next((row for row in reader if row), None)
        if first is None:
            raise DatasetError("the file is empty: it needs a header row and data rows")
        header = _parse_header(first, max_columns)
        label_at = _pick_label(header, label_column)
        label_name = header[label_at]
        if len(header) < 2:
            raise DatasetError(f"line 1: the only column is the label '{label_name}'; the file "
                               "needs at least one numeric feature column")
        feature_at = [i for i in range(len(header)) if i != label_at]
        rows: list[list[float]] = []
        labels: list[str] = []
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            if len(row) != len(header):
                raise DatasetError(f"line {line} has {len(row)} fields; the header has "
                                   f"{len(header)}")
            if len(rows) >= max_rows:
                raise DatasetError(f"the file has more than {max_rows:,} data rows (the limit, "
                                   "max_rows)")
            rows.append([_feature_value(row[i], line, header[i]) for i in feature_at])
            label = row[label_at].strip()
            if not label:
                raise DatasetError(f"line {line}, column '{label_name}': the label is missing "
                                   "(empty)")
            labels.append(label)
    except csv.Error as e:
        raise DatasetError(f"line {reader.line_num}: malformed CSV ({e})") from None
    if not rows:
        raise DatasetError("the file has a header but no data rows")
    y, classes = _encode_labels(labels)
    if len(classes) < 2:
        raise DatasetError(f"label column '{label_name}' holds a single class ({classes[0]!r}); "
                           "a classifier needs at least two")
    return Table(
        X=np.asarray(rows, dtype=np.float32).reshape(len(rows), len(feature_at)),
        y=y,
        feature_names=[header[i] for i in feature_at],
        classes=classes,
        label_column=label_name,
    )


def load_table(ds_spec: UploadedDataset | BuiltinDataset, *, content: bytes | None,
               fmt: str = "csv", data_dir: Path | None = None) -> Table:
    """The table a job trains on: a built-in dataset (generated, shipped with bnlab or
    scikit-learn, or read from `data_dir`) or an upload's stored bytes in its format
    ("csv" or "npz")."""
    from models.image_data import load_data_dir, parse_upload  # it imports this module

    if isinstance(ds_spec, UploadedDataset):
        if content is None:
            raise DatasetError(f"dataset '{ds_spec.id}' is an upload: its content is needed")
        return parse_upload(content, fmt=fmt, label_column=ds_spec.label_column)
    if isinstance(ds_spec, DataDirDataset):
        return load_data_dir(ds_spec, data_dir)
    return generate(ds_spec)
