"""Real datasets beyond CSV: scikit-learn's tables, .npz uploads, IDX files (plain and gzip)
and CIFAR-10's binary batches, every file written here in its exact byte format; every
refusal says what is wrong."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest

from models.datasets import DatasetError, generate, load_table, parse_csv
from models.image_data import (
    CLASS_NAMES,
    builtin_classes,
    builtin_labels,
    builtin_shape,
    data_dir_shape,
    idx_to_npz,
    load_data_dir,
    parse_idx,
    parse_npz,
    parse_upload,
    sklearn_table,
    sniff_format,
)
from models.spec import (
    SKLEARN_SHAPES,
    BlobsDataset,
    DataDirDataset,
    DigitsDataset,
    NotebookDataset,
    TabularSklearnDataset,
    UploadedDataset,
)

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class _Limits(TypedDict):
    max_rows: int
    max_bytes: int
    max_values: int


SMALL: _Limits = {"max_rows": 1_000, "max_bytes": 1_000_000, "max_values": 100_000}


def idx(arr: np.ndarray, code: int = 0x08) -> bytes:
    """MNIST's IDX: 0x00 0x00 <type> <ndim>, ndim big-endian uint32 sizes, big-endian data."""
    a = np.asarray(arr)
    return (bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
            + a.astype(IDX_TYPES[code]).tobytes())


def npz(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # allow_pickle (its default) named, else mypy matches **arrays against that bool
    (np.savez_compressed if compressed else np.savez)(buf, allow_pickle=True, **arrays)
    return buf.getvalue()


def images(n: int, h: int = 4, w: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def cifar_batch(labels: np.ndarray, pixels: np.ndarray) -> bytes:
    """CIFAR-10 binary: per image 1 label byte, then 1024 red, 1024 green, 1024 blue bytes."""
    rows = np.concatenate([labels.astype(np.uint8)[:, None],
                           pixels.astype(np.uint8).reshape(len(labels), -1)], axis=1)
    return rows.tobytes()


# ---------------------------------------------------------------------------- scikit-learn


def test_digits_image_and_flat_layouts() -> None:
    image = sklearn_table(DigitsDataset(name="digits"))
    assert image.X.shape == (1797, 1, 8, 8)
    assert image.X.dtype == np.float32
    assert image.is_image
    assert image.input_shape == (1, 8, 8)
    assert image.n_features == 64
    assert image.classes == [str(d) for d in range(10)]
    assert image.label_column == "target"
    assert image.feature_names[3 * 8 + 5] == "c0_y3_x5"
    assert len(image.feature_names) == 64
    assert float(image.X.min()) == 0.0
    assert float(image.X.max()) == 16.0
    flat = sklearn_table(DigitsDataset(name="digits", layout="flat"))
    assert flat.X.shape == (1797, 64)
    assert flat.feature_names[:2] == ["pixel_0_0", "pixel_0_1"]
    assert np.array_equal(flat.X, image.X.reshape(1797, 64))
    assert np.array_equal(flat.y, image.y)
    assert builtin_shape(DigitsDataset(name="digits")) == ((1, 8, 8), 10, 1797)
    assert builtin_shape(DigitsDataset(name="digits", layout="flat")) == ((64,), 10, 1797)


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer"])
def test_sklearn_tables_have_real_names_and_shapes(name: str) -> None:
    ds = TabularSklearnDataset(name=name)  # type: ignore[arg-type]
    t = generate(ds)
    n_features, n_classes, n_rows = SKLEARN_SHAPES[name]
    assert t.X.shape == (n_rows, n_features)
    assert t.n_classes == n_classes
    assert builtin_shape(ds) == ((n_features,), n_classes, n_rows) == (
        t.input_shape, t.n_classes, t.n_rows)
    assert builtin_classes(ds) == t.classes
    assert t.label_column == "target"
    assert np.bincount(t.y).sum() == n_rows
    assert not any(n.startswith("x") for n in
                                                        t.feature_names[:1])
    assert load_table(ds, content=None).X.tobytes() == t.X.tobytes()


def test_sklearn_names_and_the_breast_cancer_range() -> None:
    iris = sklearn_table(TabularSklearnDataset(name="iris"))
    assert iris.feature_names[0] == "sepal length (cm)"
    assert iris.classes == ["setosa", "versicolor", "virginica"]
    cancer = sklearn_table(TabularSklearnDataset(name="breast_cancer"))
    assert cancer.classes == ["malignant", "benign"]
    assert cancer.feature_names[0] == "mean radius"
    positive = cancer.X[cancer.X > 0]
    assert float(positive.min()) < 0.002
    assert float(cancer.X.max()) > 4000


# ---------------------------------------------------------------------------- .npz


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_three_shapes_and_dtypes(compressed: bool) -> None:
    x2 = np.arange(12, dtype=np.int16).reshape(6, 2)
    t = parse_npz(npz(compressed, x=x2, y=np.array([3, 1, 3, 1, 10, 1])), **SMALL)
    assert t.X.shape == (6, 2)
    assert t.X.dtype == np.float32
    assert not t.is_image
    assert np.array_equal(t.X, x2.astype(np.float32))  # as given: no scaling
    assert t.classes == ["1", "3", "10"]
    assert t.y.tolist() == [1, 0, 1, 0, 2, 0]
    assert t.feature_names == ["x0", "x1"]
    assert t.label_column == "y"

    x3 = images(5)
    t = parse_npz(npz(compressed, x=x3, y=np.array(["b", "a", "b", "a", "c"])), **SMALL)
    assert t.X.shape == (5, 1, 4, 3)
    assert t.input_shape == (1, 4, 3)
    assert t.is_image
    assert np.array_equal(t.X[:, 0], x3.astype(np.float32))
    assert t.classes == ["a", "b", "c"]
    assert t.feature_names[-1] == "c0_y3_x2"

    x4 = np.random.default_rng(1).random((4, 3, 2, 2)).astype(np.float16)
    t = parse_npz(npz(compressed, X=x4, label=np.array([0, 1, 0, 1], dtype=np.uint8)),
                  **SMALL)
    assert t.X.shape == (4, 3, 2, 2)
    assert t.label_column == "label"
    assert np.array_equal(t.X, x4.astype(np.float32))

    flags = parse_npz(npz(x=np.array([[True], [False]]), y=np.array([0, 1])), **SMALL)
    assert flags.X.tolist() == [[1.0], [0.0]]


def test_npz_label_column_picks_another_array_and_labels_sort_like_csv() -> None:
    content = npz(x=np.zeros((4, 2)), y=np.array([0, 0, 1, 1]),
                  kind=np.array(["10", "2", "2.0", "10"]))
    t = parse_upload(content, fmt="npz", label_column="kind", **SMALL)
    csv = parse_csv(b"a,kind\n0,10\n0,2\n0,2.0\n0,10\n")
    assert (t.classes, t.y.tolist(), t.label_column) == (csv.classes, csv.y.tolist(), "kind")


def _bad_npz_cases() -> list[tuple[bytes, str]]:
    x, y = np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1])
    nan = x.copy()
    nan[2, 1] = np.nan
    inf = np.zeros((3, 2, 2))
    inf[1, 0, 1] = np.inf
    return [
        (npz(features=x, y=y), r"no features array 'x'; its arrays are \['features', 'y'\]"),
        (npz(x=x, labels_=y), r"no labels array 'y'; its arrays are \['labels_', 'x'\]"),
        (npz(x=x.astype(np.complex64), y=y), "x has dtype complex64: features must be numbers"),
        (npz(x=np.array([["a", "b"]] * 4), y=y), "x has dtype <U1: features must be numbers"),
        (npz(x=x, y=y.astype(np.float64)), "y has dtype float64: labels must be integers"),
        (npz(x=x, y=np.array([b"a", b"b", b"a", b"b"])), "use unicode strings"),
        (npz(x=x, y=y.astype(bool)), "y has dtype bool"),
        (npz(x=x, y=np.array(["a" * 65, "b", "a", "b"])), "at most 64"),
        (npz(x=x, y=y.reshape(4, 1)), r"y has shape \(4, 1\): labels must be one value per row"),
        (npz(x=np.zeros(4), y=y), r"x has shape \(4,\): give \(N, F\)"),
        (npz(x=np.zeros((4, 1, 1, 1, 1)), y=y), r"x has shape \(4, 1, 1, 1, 1\)"),
        (npz(x=np.zeros((4, 0)), y=y), "holds no values"),
        (npz(x=x, y=np.array([0, 1, 0])), "x has 4 rows but y has 3 labels"),
        (npz(x=nan, y=y), r"x\[2, 1\] is nan: NaN and inf are refused"),
        (npz(x=inf, y=y[:3]), r"x\[1, 0, 1\] is inf"),
        (npz(x=np.full((4, 1), 1e39), y=y), "too large for float32"),
        (npz(x=x, y=np.zeros(4, np.int64)), r"single class \('0'\)"),
        (npz(x=x, y=np.array(["a", "", "a", "b"])), r"y\[1\] is an empty string"),
        (npz(x=np.zeros((1001, 1)), y=np.arange(1001) % 2),
         r"1,001 rows; the limit \(max_rows, the server's BNLAB_MAX_CSV_ROWS\) is 1,000"),
        (npz(x=np.zeros((10, 20_000), np.uint8), y=np.arange(10) % 2),
         r"200,000 values \(10 x 20000\); the limit \(max_values, the server's "
         r"BNLAB_MAX_UPLOAD_VALUES\) is 100,000"),
        (b"X,Y,class\n1,2,0\n", "not a zip archive, not an .npz: save features and labels"),
        (npz(x=x, y=y)[:200], "corrupt or not a zip archive"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_npz_cases())))
def test_npz_refusals_say_what_to_change(case: int) -> None:
    content, message = _bad_npz_cases()[case]
    with pytest.raises(DatasetError, match=message):
        parse_npz(content, **SMALL)


def test_npz_limits_on_bytes_and_odd_archives() -> None:
    content = npz(x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DatasetError, match=r"max_bytes, the server's BNLAB_MAX_UPLOAD_BYTES"):
        parse_npz(content, max_bytes=100)
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    with pytest.raises(DatasetError, match=r"a single .npy array"):
        parse_npz(buf.getvalue())
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("data.csv", "a,b\n1,2\n")
    with pytest.raises(DatasetError, match=r"no .npy arrays \(its entries: \['data.csv'\]\)"):
        parse_npz(plain.getvalue())
    with pytest.raises(DatasetError, match=r"no array 'target' for the labels"):
        parse_npz(content, label_column="target")
    with pytest.raises(DatasetError, match="unknown dataset format 'parquet'"):
        parse_upload(content, fmt="parquet")


UNPICKLED: list[str] = []


def _record_unpickle() -> list[str]:
    UNPICKLED.append("unpickled")
    return UNPICKLED


class _Trap:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _record_unpickle, ()


def test_object_arrays_are_refused_without_unpickling() -> None:
    trap = np.empty(4, dtype=object)
    trap[:] = [_Trap() for _ in range(4)]
    for arrays in ({"x": trap, "y": np.array([0, 1, 0, 1])},
                   {"x": np.zeros((4, 1)), "y": trap}):
        with pytest.raises(DatasetError, match=r"holds Python objects .* never loaded"):
            parse_npz(npz(**arrays))
    assert UNPICKLED == []


def _member_with_header(shape: tuple[int, ...], data: bytes, descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue() + data


def test_decompression_bombs_are_refused_before_reading() -> None:
    y = _member_with_header((4,), np.array([0, 1, 0, 1], "<i8").tobytes(), "<i8")
    # an entry far larger uncompressed than its header says the array needs
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", _member_with_header((4, 2), bytes(20_000_000)))
        zf.writestr("y.npy", y)
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(DatasetError, match=r"declares 20,000,\d{3} bytes uncompressed"):
        parse_npz(bomb.getvalue())
    # a header that claims a huge array: refused on the header, nothing else read
    huge = io.BytesIO()
    with zipfile.ZipFile(huge, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", _member_with_header((4, 10**9), b""))
        zf.writestr("y.npy", y)
    with pytest.raises(DatasetError, match="4,000,000,000 values"):
        parse_npz(huge.getvalue())
    # consistent header, truncated data: corrupt, not a crash
    short = io.BytesIO()
    with zipfile.ZipFile(short, "w") as zf:
        zf.writestr("x.npy", _member_with_header((4, 2), bytes(8)))
        zf.writestr("y.npy", y)
    with pytest.raises(DatasetError, match="corrupt"):
        parse_npz(short.getvalue())


def test_sniff_format() -> None:
    assert sniff_format(npz(x=np.zeros((2, 1)), y=np.arange(2))) == "npz"
    assert sniff_format(b"whatever", "data.NPZ") == "npz"
    assert sniff_format(b"a,b\n1,2\n", "t.csv") == "csv"
    assert sniff_format(idx(images(2))) == "idx"
    assert sniff_format(gzip.compress(idx(images(2)))) == "idx"
    assert sniff_format(gzip.compress(b"a,b\n1,2\n"), "t.csv") == "csv"  # refused as not text
    with pytest.raises(DatasetError, match=r"single .npy array has no labels"):
        sniff_format(b"\x93NUMPY\x01\x00")


# ---------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [(False, False), (True, False), (True, True)],
                         ids=["plain", "gz-images", "gz-both"])
def test_idx_pair(gz: tuple[bool, bool]) -> None:
    x, y = images(6), np.array([7, 2, 7, 2, 0, 7], dtype=np.uint8)
    xi, yi = idx(x), idx(y)
    assert xi[:4] == b"\x00\x00\x08\x03"
    assert yi[:4] == b"\x00\x00\x08\x01"
    xi = gzip.compress(xi) if gz[0] else xi
    yi = gzip.compress(yi) if gz[1] else yi
    t = parse_idx(xi, yi, **SMALL)
    assert t.X.shape == (6, 1, 4, 3)
    assert np.array_equal(t.X[:, 0], x.astype(np.float32))
    assert t.classes == ["0", "2", "7"]
    assert t.y.tolist() == [2, 1, 2, 1, 0, 2]
    assert t.label_column == "y"


def test_idx_other_types_and_dimensions() -> None:
    y = np.array([0, 1, 1], dtype=np.int32)
    f = np.array([[[0.5, -1.0]], [[2.0, 3.0]], [[4.0, 5.0]]], dtype=np.float32)
    t = parse_idx(idx(f, 0x0D), idx(y, 0x0C), **SMALL)
    assert t.X.shape == (3, 1, 1, 2)
    assert t.X[0, 0, 0].tolist() == [0.5, -1.0]
    shorts = np.array([[-300, 2], [5, 40_000 - 65_536], [1, 1]], dtype=np.int16)
    t = parse_idx(idx(shorts, 0x0B), idx(y.astype(np.int8), 0x09), **SMALL)
    assert t.X.shape == (3, 2)
    assert t.X[:, 0].tolist() == [-300.0, 5.0, 1.0]
    colour = np.arange(3 * 2 * 2 * 2).reshape(3, 2, 2, 2)
    assert parse_idx(idx(colour), idx(y, 0x08), **SMALL).X.shape == (3, 2, 2, 2)


def test_idx_refusals() -> None:
    x, y = images(4), np.array([0, 1, 0, 1], dtype=np.uint8)
    with pytest.raises(DatasetError, match=r"the images file is not an IDX images file: its "
                                           r"magic number is 0x00000801, expected 0x00000803"):
        parse_idx(idx(y), idx(y), **SMALL)
    with pytest.raises(DatasetError, match="the labels file is not an IDX labels file: its "
                                           "magic number is 0x582c592c"):
        parse_idx(idx(x), b"X,Y,class\n", **SMALL)
    with pytest.raises(DatasetError, match=r"the labels file .* it is empty"):
        parse_idx(idx(x), b"", **SMALL)
    with pytest.raises(DatasetError, match=r"the images file is truncated: its header declares "
                                           r"4 x 4 x 3 values, which need 48 data bytes, but "
                                           r"only 40 follow"):
        parse_idx(idx(x)[:-8], idx(y), **SMALL)
    with pytest.raises(DatasetError, match="truncated"):
        parse_idx(gzip.compress(idx(x)[:-1]), idx(y), **SMALL)
    with pytest.raises(DatasetError, match="holds more than the 4 data bytes"):
        parse_idx(idx(x), idx(y) + b"\x00", **SMALL)
    with pytest.raises(DatasetError, match="the images file has 4 images but the labels file "
                                           "has 3 labels"):
        parse_idx(idx(x), idx(y[:3]), **SMALL)
    with pytest.raises(DatasetError, match="holds float32 values: labels must be an integer"):
        parse_idx(idx(x), idx(y, 0x0D), **SMALL)
    bad_crc = bytearray(gzip.compress(idx(x)))
    bad_crc[-8] ^= 0xFF
    with pytest.raises(DatasetError, match="the images file: corrupt gzip data"):
        parse_idx(bytes(bad_crc), idx(y), **SMALL)
    with pytest.raises(DatasetError, match="the images file: corrupt gzip data"):
        parse_idx(b"\x1f\x8b" + bytes(30), idx(y), **SMALL)
    with pytest.raises(DatasetError, match="max_rows"):
        parse_idx(idx(images(1001, 1, 1)), idx(np.arange(1001) % 2), **SMALL)
    with pytest.raises(DatasetError, match="max_values"):
        parse_idx(idx(images(10, 100, 101)), idx(np.arange(10) % 2), **SMALL)
    with pytest.raises(DatasetError, match="single class"):
        parse_idx(idx(x), idx(np.zeros(4)), **SMALL)


def test_idx_gzip_bomb_is_read_only_as_far_as_the_header_says() -> None:
    # A header for 2 images of 2x2, then 50 MB of zeros: refused without inflating it all.
    bomb = gzip.compress(idx(images(2, 2, 2)) + bytes(50_000_000), compresslevel=1)
    with pytest.raises(DatasetError, match="holds more than the 8 data bytes"):
        parse_idx(bomb, idx(np.array([0, 1])), **SMALL)


def test_idx_pair_canonicalised_as_npz() -> None:
    x, y = images(5), np.array([1, 0, 1, 0, 1], dtype=np.uint8)
    stored, table = idx_to_npz(gzip.compress(idx(x)), idx(y), **SMALL)
    assert stored[:4] == b"PK\x03\x04"
    assert sniff_format(stored) == "npz"
    with np.load(io.BytesIO(stored), allow_pickle=False) as arrays:
        assert arrays["x"].dtype == np.uint8
        assert arrays["x"].shape == (5, 1, 4, 3)
        assert arrays["y"].tolist() == y.tolist()
    again = parse_upload(stored, fmt="npz", **SMALL)
    assert again.X.tobytes() == table.X.tobytes()
    assert again.y.tolist() == table.y.tolist()
    assert (again.classes, again.feature_names, again.label_column) == (
        table.classes, table.feature_names, table.label_column)
    same = load_table(UploadedDataset(id="up"), content=stored, fmt="npz")
    assert same.X.tobytes() == table.X.tobytes()


# ---------------------------------------------------------------------------- data directory


def _write_mnist(folder: Path, n: int, split: str = "train", gz: bool = True, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    x = images(n, 28, 28, seed)
    y = (np.arange(n) % 10).astype(np.uint8)
    for name, data in ((f"{prefix}-images-idx3-ubyte", idx(x)),
                       (f"{prefix}-labels-idx1-ubyte", idx(y))):
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return x, y


def test_mnist_from_gz_idx_files(tmp_path: Path) -> None:
    x, y = _write_mnist(tmp_path / "mnist", 25)
    ds = DataDirDataset(name="mnist")
    assert data_dir_shape(ds, tmp_path) == ((1, 28, 28), 10, 25)
    t = load_table(ds, content=None, data_dir=tmp_path)
    assert t.X.shape == (25, 1, 28, 28)
    assert t.X.dtype == np.float32
    assert np.array_equal(t.X[:, 0], x.astype(np.float32))
    assert t.y.tolist() == y.tolist()
    assert t.classes == CLASS_NAMES["mnist"]
    assert len(t.feature_names) == 784
    limited = DataDirDataset(name="mnist", limit=7)
    assert builtin_shape(limited, tmp_path) == ((1, 28, 28), 10, 7)
    t7 = load_data_dir(limited, tmp_path)
    assert t7.X.tobytes() == t.X[:7].tobytes()
    assert t7.y.tolist() == y[:7].tolist()
    labels, classes = builtin_labels(limited, tmp_path)
    assert labels.tolist() == y[:7].tolist()
    assert classes == CLASS_NAMES["mnist"]
    with pytest.raises(DatasetError, match=r"'mnist' \(split 'test'\) needs "
                                           r"t10k-images-idx3-ubyte\[.gz\]"):
        load_data_dir(DataDirDataset(name="mnist", split="test"), tmp_path)


def test_fashion_mnist_in_torchvisions_layout_with_its_class_names(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "FashionMNIST" / "raw", 12, split="test", gz=False)
    ds = DataDirDataset(name="fashion_mnist", split="test")
    t = load_data_dir(ds, tmp_path)
    assert t.n_rows == 12
    assert t.classes[0] == "T-shirt/top"
    assert t.classes[9] == "Ankle boot"
    assert builtin_classes(ds, tmp_path) == t.classes
    assert len(t.classes) == 10
    assert [t.classes[i] for i in t.y[:3]] == ["T-shirt/top", "Trouser", "Pullover"]


def test_data_dir_refusals(tmp_path: Path) -> None:
    ds = DataDirDataset(name="mnist")
    with pytest.raises(DatasetError, match=r"not configured: set BNLAB_DATA_DIR .* "
                                           r"\$BNLAB_DATA_DIR/mnist/train-images-idx3-ubyte"):
        load_data_dir(ds, None)
    with pytest.raises(DatasetError, match="does not exist"):
        data_dir_shape(ds, tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"needs train-images-idx3-ubyte\[.gz\], "
                                           r"train-labels-idx1-ubyte\[.gz\] in "
                                           r"\$BNLAB_DATA_DIR/mnist/ or "
                                           r"\$BNLAB_DATA_DIR/MNIST/raw/"):
        data_dir_shape(ds, tmp_path)
    folder = tmp_path / "mnist"
    _write_mnist(folder, 10, gz=False)
    (folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"needs train-labels-idx1-ubyte\[.gz\] in"):
        load_data_dir(ds, tmp_path)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx(np.arange(9) % 10))
    with pytest.raises(DatasetError, match="has 10 images but train-labels-idx1-ubyte has 9"):
        data_dir_shape(ds, tmp_path)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx(np.array([0] * 9 + [12])))
    with pytest.raises(DatasetError, match="label 12 at index 9 is not one of the 10 classes"):
        load_data_dir(ds, tmp_path)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx(np.arange(10) % 10))
    whole = (folder / "train-images-idx3-ubyte").read_bytes()
    (folder / "train-images-idx3-ubyte").write_bytes(whole[:-100])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte is truncated: .* need "
                                           r"7,840 data bytes, but only 7,740 follow"):
        load_data_dir(ds, tmp_path)
    with pytest.raises(DatasetError, match="read from the data directory"):
        generate(ds)


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    per_batch, xs, ys = 3, [], []
    for i in range(1, 6):
        px = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        lab = rng.integers(0, 10, per_batch)
        (folder / f"data_batch_{i}.bin").write_bytes(cifar_batch(lab, px))
        xs.append(px)
        ys.append(lab)
    ds = DataDirDataset(name="cifar10")
    assert data_dir_shape(ds, tmp_path) == ((3, 32, 32), 10, 15)
    t = load_data_dir(ds, tmp_path)
    assert t.X.shape == (15, 3, 32, 32)
    assert t.classes == CLASS_NAMES["cifar10"]
    assert np.array_equal(t.X, np.concatenate(xs).astype(np.float32))  # channel-major
    assert t.y.tolist() == np.concatenate(ys).tolist()
    assert t.feature_names[1024] == "c1_y0_x0"
    # red channel first in the record: byte 1 is pixel (c0, y0, x0), byte 1025 is (c1, y0, x0)
    record = (folder / "data_batch_1.bin").read_bytes()[:3073]
    assert (record[1], record[1025]) == (int(xs[0][0, 0, 0, 0]), int(xs[0][0, 1, 0, 0]))
    limited = load_data_dir(DataDirDataset(name="cifar10", limit=5), tmp_path)  # two batches
    assert limited.X.tobytes() == t.X[:5].tobytes()
    assert builtin_labels(DataDirDataset(name="cifar10", limit=5), tmp_path)[0].tolist() == \
        t.y[:5].tolist()
    # the test split directly under cifar10/, class names from batches.meta.txt
    (tmp_path / "cifar10" / "test_batch.bin").write_bytes(
        cifar_batch(np.array([0, 1, 1, 0]), np.zeros((4, 3, 32, 32))))
    (tmp_path / "cifar10" / "batches.meta.txt").write_text("cat\ndog\n\n")
    test = DataDirDataset(name="cifar10", split="test")
    assert data_dir_shape(test, tmp_path) == ((3, 32, 32), 2, 4)
    assert load_data_dir(test, tmp_path).classes == ["cat", "dog"]


def test_cifar10_refusals(tmp_path: Path) -> None:
    ds = DataDirDataset(name="cifar10", split="test")
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DatasetError, match=r"Python version .* pickled and never loaded"):
        data_dir_shape(ds, tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(bytes(3073 * 2 - 1))
    with pytest.raises(DatasetError, match="6,145 bytes, not a whole number of 3,073-byte"):
        data_dir_shape(ds, tmp_path)
    (folder / "test_batch.bin").write_bytes(cifar_batch(np.array([3, 11]),
                                                        np.zeros((2, 3, 32, 32))))
    with pytest.raises(DatasetError, match="label 11 at index 1 is not one of the 10"):
        load_data_dir(ds, tmp_path)
    (folder / "data_batch_1.bin").write_bytes(bytes(3073))
    with pytest.raises(DatasetError, match=r"needs data_batch_2.bin, data_batch_3.bin, "
                                           r"data_batch_4.bin, data_batch_5.bin"):
        load_data_dir(DataDirDataset(name="cifar10"), tmp_path)


def test_builtin_shapes_of_the_generators() -> None:
    blobs = BlobsDataset(name="blobs", n_features=5, n_classes=4, n_samples=40)
    assert builtin_shape(blobs) == ((5,), 4, 40)
    assert builtin_shape(NotebookDataset(name="concertriccir2")) == ((2,), 2, 499)
    assert builtin_classes(blobs) == ["0", "1", "2", "3"]
    y, classes = builtin_labels(blobs)
    assert len(y) == 40
    assert classes == ["0", "1", "2", "3"]
