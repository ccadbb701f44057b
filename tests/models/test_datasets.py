"""Generators are pure and shaped right; the CSV reader loads the notebook file and refuses bad
input with the line and column of the problem."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import pytest

from models.datasets import (
    DatasetError,
    Table,
    class_counts,
    generate,
    load_table,
    parse_csv,
)
from models.datasets import (
    notebook_csv as shipped_csv,  # the fixture of the same name reads the file by path
)
from models.spec import (
    BlobsDataset,
    CirclesDataset,
    JobSpec,
    MoonsDataset,
    NotebookDataset,
    SpiralsDataset,
    UploadedDataset,
    XorDataset,
    generated_shape,
)


class _Limits(TypedDict):
    max_rows: int
    max_columns: int
    max_bytes: int


LIMITS: _Limits = {"max_rows": 1000, "max_columns": 10, "max_bytes": 100_000}

GeneratorSpec = CirclesDataset | MoonsDataset | XorDataset | SpiralsDataset | BlobsDataset
GENERATED: list[GeneratorSpec] = [
    CirclesDataset(name="concentric_circles", n_samples=301, noise=0.05, factor=0.4, seed=3),
    MoonsDataset(name="moons", n_samples=200, seed=1),
    XorDataset(name="xor", n_samples=203, seed=2),
    SpiralsDataset(name="spirals", n_samples=300, n_classes=3, turns=2.0, seed=4),
    BlobsDataset(name="blobs", n_samples=250, n_classes=4, n_features=5, seed=5),
]


@pytest.mark.parametrize("ds", GENERATED, ids=lambda d: d.name)
def test_generators_are_deterministic_and_shaped(ds: GeneratorSpec) -> None:
    a, b = generate(ds), generate(ds)
    assert a.X.tobytes() == b.X.tobytes()
    assert a.y.tobytes() == b.y.tobytes()
    n_features, n_classes = generated_shape(ds)
    assert a.X.shape == (ds.n_samples, n_features)
    assert a.X.dtype == np.float32
    assert a.y.shape == (ds.n_samples,)
    assert a.y.dtype == np.int64
    assert a.classes == [str(c) for c in range(n_classes)]
    assert len(a.feature_names) == n_features == a.n_features
    counts = np.bincount(a.y, minlength=n_classes)
    assert counts.max() - counts.min() <= 1  # balanced to within one row
    assert np.isfinite(a.X).all()
    # shuffled: the labels are not in generation order
    assert not np.array_equal(a.y, np.sort(a.y))
    other = generate(ds.model_copy(update={"seed": ds.seed + 1}))
    assert not np.array_equal(a.X, other.X)


def test_feature_names() -> None:
    assert generate(GENERATED[0]).feature_names == ["x", "y"]
    assert generate(GENERATED[4]).feature_names == ["x0", "x1", "x2", "x3", "x4"]


def test_circles_are_separable_by_radius() -> None:
    t = generate(CirclesDataset(name="concentric_circles", n_samples=400, noise=0.05,
                                factor=0.5, seed=0))
    radius = np.linalg.norm(t.X, axis=1)
    assert radius[t.y == 0].min() > radius[t.y == 1].max()  # class 0 outer, class 1 inner
    assert abs(np.median(radius[t.y == 0]) - 1.0) < 0.05
    assert abs(np.median(radius[t.y == 1]) - 0.5) < 0.05


def test_xor_labels_follow_quadrants_without_noise() -> None:
    t = generate(XorDataset(name="xor", n_samples=100, noise=0.0, seed=0))
    assert np.array_equal(t.y, (t.X[:, 0] * t.X[:, 1] > 0).astype(np.int64))


def test_notebook_csv_loads_as_it_is(notebook_csv: bytes) -> None:
    t = parse_csv(notebook_csv, **LIMITS)
    assert (t.n_rows, t.n_features, t.label_column) == (499, 2, "class")
    assert t.feature_names == ["X", "Y"]
    assert t.classes == ["0", "1"]
    assert class_counts(t) == {"0": 249, "1": 250}
    assert t.X.dtype == np.float32
    assert t.y.dtype == np.int64
    assert t.X[0, 0] == np.float32(-3.9500186880681)
    assert t.y[0] == 1
    same = load_table(UploadedDataset(id="nb"), content=notebook_csv)
    assert same.X.tobytes() == t.X.tobytes()


# The notebook's file as the seed shipped it; a changed byte changes every result quoted from it.
NOTEBOOK_SHA256 = "6b034abd3fff9d46b00c8a885f79be992459fcf43acac21e7be64ca54be946c5"


def test_the_shipped_notebook_csv_keeps_its_bytes(notebook_csv: bytes) -> None:
    import hashlib

    assert hashlib.sha256(notebook_csv).hexdigest() == NOTEBOOK_SHA256
    assert shipped_csv() == notebook_csv  # what the built-in dataset reads

def test_builtin_notebook_dataset_is_the_csv_in_file_order(notebook_csv: bytes) -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "concertriccir2"},
                                   "network": {"hidden": [3, 2]}})
    assert isinstance(spec.dataset, NotebookDataset)
    assert generated_shape(spec.dataset) == (2, 2)
    assert spec.dataset.n_samples == 499
    builtin = load_table(spec.dataset, content=None)
    uploaded = parse_csv(notebook_csv)
    assert builtin.X.tobytes() == uploaded.X.tobytes()  # the same rows, in the file's order
    assert builtin.y.tolist() == uploaded.y.tolist()
    assert (builtin.feature_names, builtin.classes) == (["X", "Y"], ["0", "1"])
    # Keras's validation_split=0.2 takes the last 100 rows; so does a `tail` split
    from models.splits import split

    train, val = split(builtin.y, validation_split=0.2, how="tail", seed=0)
    assert (len(train), val.tolist()) == (399, list(range(399, 499)))
    last_rows = [line.split(",")[:2] for line in notebook_csv.decode().splitlines()[-100:]]
    assert builtin.X[val].tolist() == np.asarray(last_rows, dtype=np.float32).tolist()
    with pytest.raises(ValueError, match="Extra inputs"):
        JobSpec.model_validate({"dataset": {"name": "concertriccir2", "n_samples": 10},
                                "network": {"hidden": [3]}})


def test_label_column_choice() -> None:
    csv = b"a,Target,b\n1,x,2\n3,y,4\n"
    t = parse_csv(csv, **LIMITS)
    assert t.label_column == "Target"
    assert t.feature_names == ["a", "b"]
    assert t.classes == ["x", "y"]
    last = parse_csv(b"a,b,out\n1,2,p\n3,4,q\n", **LIMITS)
    assert last.label_column == "out"
    named = parse_csv(b"a,b,class\n1,0,2\n3,1,4\n", label_column="b", **LIMITS)
    assert named.label_column == "b"
    assert named.feature_names == ["a", "class"]
    with pytest.raises(DatasetError, match="label column 'nope' is not in the header"):
        parse_csv(csv, label_column="nope", **LIMITS)


def test_numeric_labels_are_canonical_and_sorted_numerically() -> None:
    t = parse_csv(b"a,class\n1,10.0\n2,2\n3,1.0\n4,2.5\n5,10\n", **LIMITS)
    assert t.classes == ["1", "2", "2.5", "10"]
    assert t.y.tolist() == [3, 1, 0, 2, 3]
    text = parse_csv(b"a,label\n1,b\n2,a\n3,b\n", **LIMITS)
    assert text.classes == ["a", "b"]
    assert text.y.tolist() == [1, 0, 1]


def test_blank_lines_and_bom_are_tolerated() -> None:
    t = parse_csv(b"\xef\xbb\xbfX,Y,class\r\n1,2,0\r\n\r\n3,4,1\r\n\r\n", **LIMITS)
    assert t.n_rows == 2
    assert t.feature_names == ["X", "Y"]


BAD = [
    (b"X,Y,class\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n9,10,0\n11,abc,1\n",
     "line 7, column 'Y': 'abc' is not a number"),
    (b"X,Y,class\n1,2,0\n,4,1\n", "line 3, column 'X': the value is missing"),
    (b"X,Y,class\n1,2,0\n3,nan,1\n", "line 3, column 'Y': 'nan' is not a finite number"),
    (b"X,Y,class\n1,2,0\n-inf,4,1\n", "line 3, column 'X': '-inf' is not a finite number"),
    (b"X,Y,class\n1,2,0\n1e300,4,1\n", "line 3, column 'X': '1e300' is too large for float32"),
    (b"X,Y,class\n1,2,0\n3,4,\n", "line 3, column 'class': the label is missing"),
    (b"X,X,class\n1,2,0\n3,4,1\n", "duplicate column names \\['X'\\]"),
    (b"X,,class\n1,2,0\n", "line 1: column 2 of the header has no name"),
    (b"class\n0\n1\n", "the only column is the label 'class'"),
    (b"X,Y,class\n1,2,0\n3,4,0\n", "label column 'class' holds a single class \\('0'\\)"),
    (b"X,Y,class\n1,2,0\n3,4\n5,6,1\n", "line 3 has 2 fields; the header has 3"),
    (b"X,Y,class\n1,2,0\n\n3,4,1,9\n", "line 4 has 4 fields; the header has 3"),
    (b"", "the file is empty"),
    (b"\n\n", "the file is empty"),
    (b"X,Y,class\n", "no data rows"),
    (b"X,Y,class\n1,2,\xff\n", "line 2: the file is not UTF-8"),
]


@pytest.mark.parametrize(("content", "message"), BAD)
def test_bad_csv_is_refused_with_line_and_column(content: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_csv(content, **LIMITS)


def test_limits_are_named() -> None:
    rows = b"X,Y,class\n" + b"1,2,0\n3,4,1\n" * 3
    with pytest.raises(DatasetError, match=r"more than 5 data rows \(the limit, max_rows\)"):
        parse_csv(rows, max_rows=5, max_columns=10, max_bytes=10_000)
    with pytest.raises(DatasetError, match=r"header has 3 columns; the limit \(max_columns\) is 2"):
        parse_csv(rows, max_rows=100, max_columns=2, max_bytes=10_000)
    with pytest.raises(DatasetError, match=rf"{len(rows)} bytes; the limit \(max_bytes\) is 20"):
        parse_csv(rows, max_rows=100, max_columns=10, max_bytes=20)


def test_load_table_generated_and_missing_upload() -> None:
    t = load_table(GENERATED[1], content=None)
    assert isinstance(t, Table)
    assert t.n_rows == 200
    with pytest.raises(DatasetError, match="its content is needed"):
        load_table(UploadedDataset(id="abc"), content=None)
