"""Real datasets beyond CSV, as numpy tables (no torch): the tables that ship inside
scikit-learn, `.npz` uploads, MNIST-style IDX files and CIFAR-10's binary batches.

Nothing here unpickles. An `.npz` is read with `allow_pickle=False`, and only after each array's
npy header (dtype, shape) and zip entry (declared uncompressed size) have been checked, so an
object array or a decompression bomb is refused before its data is read. gzip-compressed IDX
files are decompressed only as far as their header says the data goes.

Data-directory datasets (MNIST, Fashion-MNIST, CIFAR-10) are read from fixed file names under
fixed folders of the directory the operator configures (BNLAB_DATA_DIR): a job spec only names
the dataset and split, never a path. Pixels keep their stored values (0-255; no scaling).
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zipfile
import zlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from models.datasets import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_COLUMNS,
    DEFAULT_MAX_ROWS,
    DatasetError,
    Table,
    _encode_labels,
    generate,
    parse_csv,
)
from models.spec import (
    SKLEARN_SHAPES,
    BuiltinDataset,
    DataDirDataset,
    DigitsDataset,
    TabularSklearnDataset,
    generated_shape,
)

# Feature values an upload may hold (rows x values per row); the API passes its own setting.
DEFAULT_MAX_VALUES = 2**28
FORMATS = ("csv", "npz")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip
GZIP_MAGIC = b"\x1f\x8b"
NPY_MAGIC = b"\x93NUMPY"
# The server setting behind each limit, named in refusals so the message says what to raise.
SETTING = {"max_rows": "BNLAB_MAX_CSV_ROWS", "max_bytes": "BNLAB_MAX_UPLOAD_BYTES",
           "max_values": "BNLAB_MAX_UPLOAD_VALUES", "max_columns": "BNLAB_MAX_CSV_COLUMNS"}
LABEL_ARRAYS = ("y", "label", "labels", "target", "class")
FEATURE_ARRAYS = ("x", "X")
MAX_LABEL_CHARS = 64
_MAX_MEMBERS = 64
_NPY_HEADER_SLACK = 1 << 16  # the npy magic and header dict, at most (numpy caps it lower)


def _limit(name: str, value: int) -> str:
    return f"the limit ({name}, the server's {SETTING[name]}) is {value:,}"


def feature_names(input_shape: Sequence[int]) -> list[str]:
    """One name per value of a row: "x0".."x{F-1}" for a table, "c{c}_y{i}_x{j}" for images."""
    if len(input_shape) == 1:
        return [f"x{i}" for i in range(input_shape[0])]
    c, h, w = input_shape
    return [f"c{k}_y{i}_x{j}" for k in range(c) for i in range(h) for j in range(w)]


# ---------------------------------------------------------------------------- scikit-learn

SKLEARN_DESCRIPTIONS = {
    "digits": "scikit-learn's handwritten digits (UCI): 1,797 images of 8x8 pixels valued "
              "0-16, ten classes; layout 'image' gives (1, 8, 8), 'flat' 64 features",
    "iris": "Fisher's iris (scikit-learn): 150 flowers, 4 measurements in cm, 3 species",
    "wine": "UCI wine recognition (scikit-learn): 178 wines, 13 chemical measurements, "
            "3 cultivars; raw features from about 0.1 to 1,700",
    "breast_cancer": "Wisconsin diagnostic breast cancer (scikit-learn): 569 tumours, 30 "
                     "features, malignant/benign; raw features from about 0.001 to 4,000",
}


@cache
def _sklearn_arrays(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    from sklearn import datasets as skd  # lazy: scikit-learn (and scipy) load in a second

    loaders = {"digits": skd.load_digits, "iris": skd.load_iris, "wine": skd.load_wine,
               "breast_cancer": skd.load_breast_cancer}
    bunch = loaders[name]()
    X = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return (X, y, tuple(str(n) for n in bunch.feature_names),
            tuple(str(c) for c in bunch.target_names))


def sklearn_table(ds: DigitsDataset | TabularSklearnDataset) -> Table:
    """A dataset that ships inside scikit-learn (nothing is downloaded), rows in the file's
    order, with its real feature names and class names (class id = index in target_names)."""
    X, y, names, classes = _sklearn_arrays(ds.name)
    X = X.copy()
    feature_list = list(names)
    if isinstance(ds, DigitsDataset) and ds.layout == "image":
        X = X.reshape(len(X), 1, 8, 8)
        feature_list = feature_names((1, 8, 8))
    return Table(X=np.ascontiguousarray(X), y=y.copy(), feature_names=feature_list,
                 classes=list(classes), label_column="target")


# ---------------------------------------------------------------------------- arrays -> Table


def _image_shape(row_shape: tuple[int, ...]) -> tuple[int, ...]:
    """A row's shape as served: (F,) stays, (H, W) gets one channel, (C, H, W) stays."""
    return (1, *row_shape) if len(row_shape) == 2 else row_shape


def _first_bad(a: np.ndarray) -> tuple[int, ...] | None:
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), a.shape))


def _features(x: np.ndarray, what: str) -> np.ndarray:
    """Numeric values as float32, as given (no scaling); NaN, inf and float32 overflow refused."""
    if x.dtype.kind == "f":
        where = _first_bad(x)
        if where is not None:
            at = ", ".join(map(str, where))
            raise DatasetError(f"{what}[{at}] is {float(x[where])}: NaN and inf are refused; "
                               "replace or drop those rows")
    with np.errstate(over="ignore"):  # overflow is reported below, with its index
        X = np.ascontiguousarray(x.reshape(len(x), *_image_shape(x.shape[1:])),
                                 dtype=np.float32)
    if x.dtype.kind == "f" and (where := _first_bad(X)) is not None:
        raise DatasetError(f"{what}[{', '.join(map(str, where))}] is too large for float32 "
                           f"(|value| above {np.finfo(np.float32).max:.3g}); rescale the data")
    return X


def _labels(y: np.ndarray, what: str) -> tuple[np.ndarray, list[str]]:
    """Class ids and names as the CSV reader gives them: integers sort numerically, strings as
    the CSV reader sorts its text labels."""
    if y.dtype.kind in "iu":
        values, inverse = np.unique(y, return_inverse=True)
        classes = [str(int(v)) for v in values]
        ids = inverse.astype(np.int64).reshape(-1)
    else:
        raw = [str(v) for v in y.tolist()]
        if "" in raw:
            raise DatasetError(f"{what}[{raw.index('')}] is an empty string: every row needs a "
                               "label")
        ids, classes = _encode_labels(raw)
    if len(classes) < 2:
        raise DatasetError(f"the labels ({what}) hold a single class ({classes[0]!r}); a "
                           "classifier needs at least two")
    return ids, classes


def _table(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> Table:
    X = _features(x, x_name)
    ids, classes = _labels(y, y_name)
    return Table(X=X, y=ids, feature_names=feature_names(X.shape[1:]), classes=classes,
                 label_column=y_name)


# ---------------------------------------------------------------------------- checks on shapes


def _check_x(shape: tuple[int, ...], dtype: np.dtype[Any], what: str, *, max_rows: int,
             max_values: int) -> None:
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise DatasetError(f"{what} has dtype {dtype}: features must be numbers (bool, int, "
                           "uint or float); convert it, e.g. x.astype(np.float32)")
    if len(shape) not in (2, 3, 4):
        raise DatasetError(f"{what} has shape {shape}: give (N, F) for a table, (N, H, W) or "
                           "(N, C, H, W) for images (channels first)")
    if 0 in shape:
        raise DatasetError(f"{what} has shape {shape}: it holds no values")
    if shape[0] > max_rows:
        raise DatasetError(f"{what} has {shape[0]:,} rows; {_limit('max_rows', max_rows)}")
    values = math.prod(shape)
    if values > max_values:
        raise DatasetError(f"{what} has {values:,} values ({' x '.join(map(str, shape))}); "
                           f"{_limit('max_values', max_values)}: upload fewer rows")


def _check_y(shape: tuple[int, ...], dtype: np.dtype[Any], what: str, n_rows: int,
             x_what: str) -> None:
    if dtype.kind not in "iuU" or dtype.fields is not None:
        hint = {"f": "cast them to integers, e.g. y.astype(np.int64)",
                "b": "cast them to integers, e.g. y.astype(np.int64)",
                "S": "use unicode strings, e.g. y.astype(str)"}.get(
                    dtype.kind, "use integers or unicode strings")
        raise DatasetError(f"{what} has dtype {dtype}: labels must be integers or unicode "
                           f"strings; {hint}")
    if dtype.kind == "U" and dtype.itemsize // 4 > MAX_LABEL_CHARS:
        raise DatasetError(f"{what} holds strings of up to {dtype.itemsize // 4} characters; "
                           f"labels may have at most {MAX_LABEL_CHARS}")
    if len(shape) != 1:
        raise DatasetError(f"{what} has shape {shape}: labels must be one value per row, shape "
                           "(N,); flatten it, e.g. y.ravel()")
    if shape[0] != n_rows:
        raise DatasetError(f"{x_what} has {n_rows:,} rows but {what} has {shape[0]:,} labels: "
                           "give one label per row")


# ---------------------------------------------------------------------------- .npz


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo
                ) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """(shape, dtype, header bytes) from a member's npy header; its data is not read."""
    fmt = np.lib.format
    try:
        with zf.open(info) as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy format version {version} is not supported")
            return tuple(int(d) for d in shape), dtype, f.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
            NotImplementedError) as e:
        raise DatasetError(f"array '{info.filename}' in the .npz is not a readable .npy ({e}): "
                           "save it with np.savez or np.savez_compressed") from None


def _member(infos: dict[str, zipfile.ZipInfo], name: str | None, candidates: Sequence[str],
            role: str, example: str) -> str:
    present = sorted(infos)
    if name is not None:
        if name in infos:
            return name
        raise DatasetError(f"the .npz has no array '{name}' for the {role}; its arrays are "
                           f"{present}")
    for candidate in candidates:
        if candidate in infos:
            return candidate
    raise DatasetError(f"the .npz has no {role} array '{candidates[0]}'; its arrays are "
                       f"{present}: save it as e.g. {example}")


def parse_npz(content: bytes, *, label_column: str | None = None,
              max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES,
              max_values: int = DEFAULT_MAX_VALUES) -> Table:
    """An `.npz` (np.savez / np.savez_compressed) with features `x` (or `X`) of shape (N, F),
    (N, H, W) -> (N, 1, H, W) or (N, C, H, W), and labels `y` (or label/labels/target/class,
    or the array `label_column` names) of shape (N,), integers or unicode strings.

    Numeric features become float32 as given; labels are encoded as the CSV reader's are.
    Anything else raises DatasetError saying what to change.
    """
    if len(content) > max_bytes:
        raise DatasetError(f"the file is {len(content):,} bytes; {_limit('max_bytes', max_bytes)}")
    if content[:4] not in ZIP_MAGIC:
        what = "a single .npy array" if content.startswith(NPY_MAGIC) else "not a zip archive"
        raise DatasetError(f"the file is {what}, not an .npz: save features and labels "
                           "together with np.savez(path, x=features, y=labels)")
    try:
        zf = zipfile.ZipFile(io.BytesIO(content))
        members = zf.infolist()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
        raise DatasetError(f"the .npz is corrupt or not a zip archive ({e}): save it again "
                           "with np.savez or np.savez_compressed") from None
    if len(members) > _MAX_MEMBERS:
        raise DatasetError(f"the .npz holds {len(members)} entries; at most {_MAX_MEMBERS} are "
                           "accepted: save only x and y")
    infos = {i.filename[:-4]: i for i in members if i.filename.endswith(".npy")}
    if not infos:
        names = sorted(i.filename for i in members)
        raise DatasetError(f"the zip holds no .npy arrays (its entries: {names}): an .npz is "
                           "what np.savez(path, x=features, y=labels) writes")
    x_name = _member(infos, None, FEATURE_ARRAYS, "features", "np.savez(path, x=features, y=...)")
    y_name = _member(infos, label_column, LABEL_ARRAYS, "labels",
                     "np.savez(path, x=..., y=labels)")
    headers = {}
    for name in (x_name, y_name):
        info = infos[name]
        if info.flag_bits & 0x1:
            raise DatasetError(f"array '{name}' in the .npz is encrypted: save it without a "
                               "password")
        shape, dtype, header_bytes = _npy_header(zf, info)
        if dtype.hasobject:
            raise DatasetError(f"array '{name}' holds Python objects (dtype {dtype}), which "
                               "would need unpickling and are never loaded: save numbers "
                               "(features) and integers or unicode strings (labels)")
        headers[name] = shape, dtype
        # The zip entry's declared size bounds what reading it decompresses (zipfile stops
        # there): it may not exceed what the npy header says the array needs.
        needed = header_bytes + math.prod(shape) * dtype.itemsize
        if info.file_size > needed + _NPY_HEADER_SLACK:
            raise DatasetError(f"array '{name}' in the .npz declares {info.file_size:,} bytes "
                               f"uncompressed but its header needs {needed:,}: the file is "
                               "corrupt or crafted; save it again with np.savez")
    x_shape, x_dtype = headers[x_name]
    _check_x(x_shape, x_dtype, x_name, max_rows=max_rows, max_values=max_values)
    y_shape, y_dtype = headers[y_name]
    _check_y(y_shape, y_dtype, y_name, x_shape[0], x_name)
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as npz:
            x, y = npz[x_name], npz[y_name]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
            NotImplementedError) as e:
        raise DatasetError(f"the .npz is corrupt ({e}): save it again with np.savez") from None
    return _table(x, y, x_name, y_name)


# ---------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


def _open_bytes(data: bytes) -> io.BufferedIOBase:
    raw = io.BytesIO(data)
    return gzip.GzipFile(fileobj=raw, mode="rb") if data[:2] == GZIP_MAGIC else raw


def _open_path(path: Path) -> io.BufferedIOBase:
    with path.open("rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else path.open("rb")


def _read(f: io.BufferedIOBase, n: int, what: str) -> bytes:
    try:
        return f.read(n)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{what}: corrupt gzip data ({e}); decompress it or fetch it "
                           "again") from None


def _idx_header(f: io.BufferedIOBase, what: str, ndims: tuple[int, ...]
                ) -> tuple[np.dtype[Any], tuple[int, ...]]:
    head = _read(f, 4, what)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES or head[3] not in ndims:
        expected = " or ".join(f"0x{0x0800 + n:08x}" for n in ndims)
        found = f"its magic number is 0x{head.hex()}" if head else "it is empty"
        raise DatasetError(f"{what} is not an IDX {'labels' if ndims == (1,) else 'images'} "
                           f"file: {found}, expected {expected} (ubyte; the IDX type codes "
                           "0x08-0x0E work too)")
    raw = _read(f, 4 * head[3], what)
    if len(raw) < 4 * head[3]:
        raise DatasetError(f"{what} is truncated inside its header ({4 + len(raw)} bytes)")
    return np.dtype(_IDX_DTYPES[head[2]]), struct.unpack(f">{head[3]}I", raw)


def _idx_data(f: io.BufferedIOBase, dtype: np.dtype[Any], dims: tuple[int, ...], what: str,
              take: int | None = None) -> np.ndarray:
    """The first `take` items (all: None) after the header; a short file, or (reading all)
    a longer one, is refused. Reads no more than the header says the data needs."""
    n = dims[0] if take is None else min(take, dims[0])
    item = math.prod(dims[1:]) * dtype.itemsize
    need = n * item
    data = _read(f, need, what)
    if len(data) < need:
        of = f"the first {n:,} items" if n < dims[0] else f"{' x '.join(map(str, dims))} values"
        raise DatasetError(f"{what} is truncated: its header declares {of}, which need "
                           f"{need:,} data bytes, but only {len(data):,} follow")
    if take is None and _read(f, 1, what):
        raise DatasetError(f"{what} holds more than the {need:,} data bytes its header "
                           f"declares ({' x '.join(map(str, dims))}): it does not match its "
                           "header")
    arr = np.frombuffer(data, dtype=dtype).reshape(n, *dims[1:])
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _check_idx_images(dims: tuple[int, ...], what: str, *, rows: int,
                      max_rows: int, max_values: int) -> None:
    if rows > max_rows:
        raise DatasetError(f"{what} has {rows:,} images; {_limit('max_rows', max_rows)}")
    values = rows * math.prod(dims[1:])
    if values > max_values:
        raise DatasetError(f"{what} has {values:,} values ({rows:,} x "
                           f"{' x '.join(map(str, dims[1:]))}); "
                           f"{_limit('max_values', max_values)}: upload fewer images")
    if 0 in dims:
        raise DatasetError(f"{what} has dimensions {dims}: it holds no values")


def _check_idx_labels(dtype: np.dtype[Any], what: str) -> None:
    if dtype.kind not in "iu":
        raise DatasetError(f"{what} holds {dtype.name} values: labels must be an integer IDX "
                           "type (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int)")


def idx_arrays(images: bytes, labels: bytes, *, max_rows: int = DEFAULT_MAX_ROWS,
               max_bytes: int = DEFAULT_MAX_BYTES, max_values: int = DEFAULT_MAX_VALUES
               ) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, ...) and labels (N,) of an IDX pair, in their stored dtypes (native
    byte order); gzip-compressed files (1f 8b) are decompressed as far as the header says."""
    for what, data in (("the images file", images), ("the labels file", labels)):
        if len(data) > max_bytes:
            raise DatasetError(f"{what} is {len(data):,} bytes; {_limit('max_bytes', max_bytes)}")
    with _open_bytes(labels) as f:
        l_dtype, l_dims = _idx_header(f, "the labels file", (1,))
        _check_idx_labels(l_dtype, "the labels file")
        if l_dims[0] > max_rows:
            raise DatasetError(f"the labels file has {l_dims[0]:,} labels; "
                               f"{_limit('max_rows', max_rows)}")
        y = _idx_data(f, l_dtype, l_dims, "the labels file")
    with _open_bytes(images) as f:
        x_dtype, x_dims = _idx_header(f, "the images file", (3, 2, 4))
        _check_idx_images(x_dims, "the images file", rows=x_dims[0], max_rows=max_rows,
                          max_values=max_values)
        if x_dims[0] != l_dims[0]:
            raise DatasetError(f"the images file has {x_dims[0]:,} images but the labels file "
                               f"has {l_dims[0]:,} labels: upload the two files of one split")
        x = _idx_data(f, x_dtype, x_dims, "the images file")
    return x, y


def parse_idx(images: bytes, labels: bytes, *, max_rows: int = DEFAULT_MAX_ROWS,
              max_bytes: int = DEFAULT_MAX_BYTES, max_values: int = DEFAULT_MAX_VALUES) -> Table:
    """An IDX pair as MNIST ships it: images (magic 0x00000803: N x H x W ubyte, served as
    (N, 1, H, W); 2-D and 4-D IDX and the other IDX types work too) and labels (0x00000801),
    each optionally gzip-compressed. Labels are encoded as the CSV reader's; label column "y"."""
    x, y = idx_arrays(images, labels, max_rows=max_rows, max_bytes=max_bytes,
                      max_values=max_values)
    return _table(x, y, "images", "y")


def idx_to_npz(images: bytes, labels: bytes, *, max_rows: int = DEFAULT_MAX_ROWS,
               max_bytes: int = DEFAULT_MAX_BYTES, max_values: int = DEFAULT_MAX_VALUES
               ) -> tuple[bytes, Table]:
    """An IDX pair canonicalised as the .npz an upload of it is stored as (np.savez_compressed,
    no pickle: `x` as (N, 1, H, W) and `y`, both in the files' dtypes), and its table, which is
    what parse_npz gives for those bytes."""
    x, y = idx_arrays(images, labels, max_rows=max_rows, max_bytes=max_bytes,
                      max_values=max_values)
    x = x.reshape(len(x), *_image_shape(x.shape[1:]))
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y)
    return buf.getvalue(), _table(x, y, "x", "y")


# ---------------------------------------------------------------------------- uploads


def sniff_format(content: bytes, filename: str | None = None) -> str:
    """"npz" (a zip, or a .npz name), "idx" (an IDX file, or a gzip file not named .csv: it
    needs its labels) or "csv". A lone .npy is refused: it cannot hold the labels."""
    name = (filename or "").lower()
    if content[:4] in ZIP_MAGIC or name.endswith(".npz"):
        return "npz"
    if content.startswith(NPY_MAGIC) or name.endswith(".npy"):
        raise DatasetError("a single .npy array has no labels: save features and labels "
                           "together with np.savez(path, x=features, y=labels) and upload the "
                           ".npz")
    if content[:2] == b"\0\0" and content[2:3] and content[2] in _IDX_DTYPES:
        return "idx"
    if content[:2] == GZIP_MAGIC and not name.endswith(".csv"):  # a .csv is refused as text
        return "idx"
    return "csv"


def parse_upload(content: bytes, *, fmt: str, label_column: str | None = None,
                 max_rows: int = DEFAULT_MAX_ROWS, max_columns: int = DEFAULT_MAX_COLUMNS,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_values: int = DEFAULT_MAX_VALUES
                 ) -> Table:
    """A stored upload's table by its format: "csv" (parse_csv) or "npz" (parse_npz)."""
    if fmt == "csv":
        return parse_csv(content, label_column=label_column, max_rows=max_rows,
                         max_columns=max_columns, max_bytes=max_bytes)
    if fmt == "npz":
        return parse_npz(content, label_column=label_column, max_rows=max_rows,
                         max_bytes=max_bytes, max_values=max_values)
    raise DatasetError(f"unknown dataset format {fmt!r}: expected one of {list(FORMATS)}")


# ---------------------------------------------------------------------------- data directory

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR_FILES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
               "test": ("test_batch.bin",)}
CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_META = "batches.meta.txt"
# Folders under the data directory, first match wins: ours, then torchvision's layout, and
# the folder CIFAR-10's binary tarball unpacks to.
DATA_DIR_FOLDERS = {
    "mnist": ("mnist", "MNIST/raw"),
    "fashion_mnist": ("fashion_mnist", "FashionMNIST/raw"),
    "cifar10": ("cifar10/cifar-10-batches-bin", "cifar10", "cifar-10-batches-bin"),
}
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}
# The standard shapes, for listings when the data directory is not configured.
STANDARD_SHAPES = {"mnist": ((1, 28, 28), 10, 60_000), "fashion_mnist": ((1, 28, 28), 10, 60_000),
                   "cifar10": ((3, 32, 32), 10, 50_000)}
DATA_DIR_DESCRIPTIONS = {
    "mnist": "MNIST handwritten digits (IDX files): 60,000 train / 10,000 test images of "
             "28x28 pixels valued 0-255, ten classes",
    "fashion_mnist": "Zalando's Fashion-MNIST (IDX files): 60,000 train / 10,000 test images "
                     "of 28x28 pixels valued 0-255, ten clothing classes",
    "cifar10": "CIFAR-10, binary version: 50,000 train / 10,000 test colour images, "
               "3x32x32 pixels valued 0-255, ten classes",
}


def expected_files(ds: DataDirDataset) -> list[str]:
    """Where the files of the dataset's split go, relative to the data directory."""
    folder = DATA_DIR_FOLDERS[ds.name][0]
    if ds.name == "cifar10":
        return [f"{folder}/{n}" for n in CIFAR_FILES[ds.split]]
    return [f"{folder}/{n}[.gz]" for n in MNIST_FILES[ds.split]]


def _root(ds: DataDirDataset, data_dir: Path | None) -> Path:
    where = ", ".join(f"$BNLAB_DATA_DIR/{p}" for p in expected_files(ds))
    if data_dir is None:
        raise DatasetError(f"dataset '{ds.name}' is read from the data directory, which is not "
                           f"configured: set BNLAB_DATA_DIR (for the API and the workers) to a "
                           f"directory holding {where}; nothing is downloaded")
    if not data_dir.is_dir():
        raise DatasetError(f"the data directory (BNLAB_DATA_DIR) does not exist or is not a "
                           f"directory: create it with {where}")
    return data_dir


def _missing(ds: DataDirDataset, missing: list[str]) -> DatasetError:
    folders = " or ".join(f"$BNLAB_DATA_DIR/{f}/" for f in DATA_DIR_FOLDERS[ds.name])
    return DatasetError(f"dataset '{ds.name}' (split '{ds.split}') needs {', '.join(missing)} "
                        f"in {folders} (BNLAB_DATA_DIR must point at the directory above "
                        f"them); expected: {', '.join(expected_files(ds))}")


def _idx_paths(ds: DataDirDataset, data_dir: Path | None) -> tuple[Path, Path]:
    root = _root(ds, data_dir)
    names = MNIST_FILES[ds.split]
    for folder in DATA_DIR_FOLDERS[ds.name]:
        found = [next((p for p in (root / folder / n, root / folder / f"{n}.gz") if p.is_file()),
                      None) for n in names]
        if found[0] is not None and found[1] is not None:
            return found[0], found[1]
        if found[0] is not None or found[1] is not None:
            raise _missing(ds, [f"{n}[.gz]" for n, p in zip(names, found, strict=True)
                                if p is None])
    raise _missing(ds, [f"{n}[.gz]" for n in names])


def _cifar_dir(ds: DataDirDataset, data_dir: Path | None) -> Path:
    root = _root(ds, data_dir)
    names = CIFAR_FILES[ds.split]
    for folder in DATA_DIR_FOLDERS["cifar10"]:
        present = [n for n in names if (root / folder / n).is_file()]
        if len(present) == len(names):
            return root / folder
        if present:
            raise _missing(ds, [n for n in names if n not in present])
    if any((root / f / "cifar-10-batches-py").is_dir() for f in ("cifar10", ".")):
        raise DatasetError("found CIFAR-10's Python version (cifar-10-batches-py), which is "
                           "pickled and never loaded: use the binary version "
                           "(cifar-10-binary.tar.gz, cifar-10-batches-bin/)")
    raise _missing(ds, list(names))


def _cifar_classes(folder: Path) -> list[str]:
    meta = folder / CIFAR_META
    if not meta.is_file():
        return list(CLASS_NAMES["cifar10"])
    names = [line.strip() for line in meta.read_text("utf-8", errors="replace").splitlines()]
    names = [n for n in names if n]
    if len(names) < 2:
        raise DatasetError(f"{CIFAR_META} lists {len(names)} class names; it needs one per line "
                           "(or remove it to use CIFAR-10's ten)")
    return names


def _cifar_counts(ds: DataDirDataset, folder: Path) -> list[int]:
    counts = []
    for name in CIFAR_FILES[ds.split]:
        size = (folder / name).stat().st_size
        if size % CIFAR_RECORD or size == 0:
            raise DatasetError(f"{name} is {size:,} bytes, not a whole number of {CIFAR_RECORD:,}"
                               "-byte records (1 label byte + 3x32x32 pixels): it is truncated "
                               "or not a CIFAR-10 binary batch")
        counts.append(size // CIFAR_RECORD)
    return counts


def _take(ds: DataDirDataset, total: int) -> int:
    return total if ds.limit is None else min(ds.limit, total)


def _idx_file_header(path: Path, what: str, ndims: tuple[int, ...]
                     ) -> tuple[np.dtype[Any], tuple[int, ...]]:
    with _open_path(path) as f:
        return _idx_header(f, what, ndims)


def _mnist_shape(ds: DataDirDataset, data_dir: Path | None
                 ) -> tuple[Path, Path, tuple[int, ...], int]:
    images, labels = _idx_paths(ds, data_dir)
    _, x_dims = _idx_file_header(images, images.name, (3, 2, 4))
    l_dtype, l_dims = _idx_file_header(labels, labels.name, (1,))
    _check_idx_labels(l_dtype, labels.name)
    if x_dims[0] != l_dims[0]:
        raise DatasetError(f"{images.name} has {x_dims[0]:,} images but {labels.name} has "
                           f"{l_dims[0]:,} labels: the two files must be of one split")
    return images, labels, x_dims, _take(ds, x_dims[0])


def _check_ids(y: np.ndarray, classes: list[str], what: str) -> np.ndarray:
    ids = y.astype(np.int64)
    bad = np.flatnonzero((ids < 0) | (ids >= len(classes)))
    if len(bad):
        raise DatasetError(f"{what}: label {int(ids[bad[0]])} at index {int(bad[0])} is not one "
                           f"of the {len(classes)} classes (0-{len(classes) - 1})")
    return ids


def data_dir_shape(ds: DataDirDataset, data_dir: Path | None
                   ) -> tuple[tuple[int, ...], int, int]:
    """(input_shape, n_classes, n_rows) from the files' headers and sizes alone."""
    if ds.name == "cifar10":
        folder = _cifar_dir(ds, data_dir)
        return (3, 32, 32), len(_cifar_classes(folder)), _take(ds, sum(_cifar_counts(ds, folder)))
    _, _, dims, n = _mnist_shape(ds, data_dir)
    return _image_shape(tuple(dims[1:])), len(CLASS_NAMES[ds.name]), n


def _mnist_labels(ds: DataDirDataset, labels: Path, n: int) -> np.ndarray:
    with _open_path(labels) as f:
        dtype, dims = _idx_header(f, labels.name, (1,))
        y = _idx_data(f, dtype, dims, labels.name, take=n)
    return _check_ids(y, CLASS_NAMES[ds.name], labels.name)


def _cifar_records(ds: DataDirDataset, folder: Path, labels_only: bool
                   ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    classes = _cifar_classes(folder)
    counts = _cifar_counts(ds, folder)
    left = _take(ds, sum(counts))
    ys, xs = [], []
    for name, count in zip(CIFAR_FILES[ds.split], counts, strict=True):
        if left <= 0:
            break
        n = min(count, left)
        records = np.memmap(folder / name, dtype=np.uint8, mode="r", shape=(count, CIFAR_RECORD))
        ys.append(_check_ids(np.array(records[:n, 0]), classes, name))
        if not labels_only:
            xs.append(np.array(records[:n, 1:]).reshape(n, 3, 32, 32))
        del records
        left -= n
    return np.concatenate(ys), (np.concatenate(xs) if xs else None), classes


def data_dir_labels(ds: DataDirDataset, data_dir: Path | None) -> tuple[np.ndarray, list[str]]:
    """Class ids and names without reading the pixels (for the split's warnings)."""
    if ds.name == "cifar10":
        y, _, classes = _cifar_records(ds, _cifar_dir(ds, data_dir), labels_only=True)
        return y, classes
    _, labels, _, n = _mnist_shape(ds, data_dir)
    return _mnist_labels(ds, labels, n), list(CLASS_NAMES[ds.name])


def load_data_dir(ds: DataDirDataset, data_dir: Path | None) -> Table:
    """MNIST / Fashion-MNIST (IDX, optionally .gz) or CIFAR-10 (binary batches) from the data
    directory: the split's first `limit` images (all: None), pixels 0-255 as float32."""
    if ds.name == "cifar10":
        y, x, classes = _cifar_records(ds, _cifar_dir(ds, data_dir), labels_only=False)
        assert x is not None
        X = x.astype(np.float32)
        label = "label"
    else:
        images, labels, _, n = _mnist_shape(ds, data_dir)
        y = _mnist_labels(ds, labels, n)
        with _open_path(images) as f:
            dtype, dims = _idx_header(f, images.name, (3, 2, 4))
            x = _idx_data(f, dtype, dims, images.name, take=n)
        X = _features(x, images.name)
        classes, label = list(CLASS_NAMES[ds.name]), "label"
    return Table(X=np.ascontiguousarray(X), y=y, feature_names=feature_names(X.shape[1:]),
                 classes=classes, label_column=label)


# ---------------------------------------------------------------------------- any built-in


def builtin_shape(ds: BuiltinDataset, data_dir: Path | None = None
                  ) -> tuple[tuple[int, ...], int, int]:
    """(input_shape, n_classes, n_rows) of a built-in dataset without generating or loading
    it (data-directory datasets: from their files' headers)."""
    if isinstance(ds, DataDirDataset):
        return data_dir_shape(ds, data_dir)
    if isinstance(ds, DigitsDataset):
        n_features, n_classes, n_rows = SKLEARN_SHAPES["digits"]
        return ((1, 8, 8) if ds.layout == "image" else (n_features,)), n_classes, n_rows
    if isinstance(ds, TabularSklearnDataset):
        n_features, n_classes, n_rows = SKLEARN_SHAPES[ds.name]
        return (n_features,), n_classes, n_rows
    n_features, n_classes = generated_shape(ds)
    return (n_features,), n_classes, ds.n_samples


def builtin_labels(ds: BuiltinDataset, data_dir: Path | None = None
                   ) -> tuple[np.ndarray, list[str]]:
    """A built-in dataset's class ids and names (data-directory ones: without the pixels)."""
    if isinstance(ds, DataDirDataset):
        return data_dir_labels(ds, data_dir)
    table = generate(ds)
    return table.y, table.classes


def builtin_classes(ds: BuiltinDataset, data_dir: Path | None = None) -> list[str]:
    """A built-in dataset's class names, index = class id, without its rows."""
    if isinstance(ds, DataDirDataset):
        if ds.name == "cifar10":
            return _cifar_classes(_cifar_dir(ds, data_dir))
        return list(CLASS_NAMES[ds.name])
    if isinstance(ds, DigitsDataset | TabularSklearnDataset):
        return list(_sklearn_arrays(ds.name)[3])
    _, n_classes, _ = builtin_shape(ds)
    return [str(c) for c in range(n_classes)]
