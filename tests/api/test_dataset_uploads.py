"""Uploads beyond CSV over HTTP: .npz and IDX pairs stored with their format and shape,
the parser's refusals as 422, the byte limit as 413, and the real built-in datasets."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from models.db import repository as repo


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def idx(arr: np.ndarray) -> bytes:
    a = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def images(n: int, h: int = 28, w: int = 28) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w), dtype=np.uint8)


def upload(client: TestClient, content: bytes, filename: str = "data.npz",
           labels: bytes | None = None, **data: str) -> Any:
    files: dict[str, Any] = {"file": (filename, content)}
    if labels is not None:
        files["labels"] = ("labels.idx", labels)
    return client.post("/v1/datasets", files=files, data=data)


def test_npz_images_upload_get_list(client: TestClient) -> None:
    x = np.random.default_rng(1).random((20, 3, 4, 4)).astype(np.float32)
    y = np.array(["cat", "dog"] * 10)
    r = upload(client, npz(x=x, y=y), "pets.npz", name="pets")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["format"], ds["input_shape"], ds["n_features"], ds["n_rows"]) == (
        "npz", [3, 4, 4], 48, 20)
    assert ds["classes"] == ["cat", "dog"]
    assert ds["class_counts"] == {"cat": 10, "dog": 10}
    assert ds["label_column"] == "y"
    assert ds["columns"][0] == "c0_y0_x0"
    assert ds["name"] == "pets"
    assert client.get(f"/v1/datasets/{ds['id']}").json() == ds
    assert [d["id"] for d in client.get("/v1/datasets").json()["items"]] == [ds["id"]]
    scatter = client.get(f"/v1/datasets/{ds['id']}/scatter.png")
    assert scatter.status_code == 422
    assert "holds images (3 x 4 x 4)" in scatter.json()["detail"]
    body = {"dataset": {"id": ds["id"]}, "network": {"conv": [2], "hidden": [4]},
            "training": {"epochs": 1}}
    job = client.post("/v1/jobs", json=body)
    assert job.status_code == 202, job.text
    model = client.get(f"/v1/jobs/{job.json()['id']}/model").json()
    assert model["classes"] == ["cat", "dog"]
    assert model["layers"][0]["output_shape"][1] == 2


def test_npz_table_by_content_trains_and_plots(client: TestClient) -> None:
    rng = np.random.default_rng(2)
    content = npz(x=rng.normal(size=(40, 3)), y=np.arange(40) % 2)
    r = upload(client, content, "no-suffix.bin")  # detected by its zip magic
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["format"], ds["input_shape"], ds["columns"]) == ("npz", [3], ["x0", "x1", "x2",
                                                                            "y"])
    png = client.get(f"/v1/datasets/{ds['id']}/scatter.png")
    assert png.status_code == 200
    assert png.content.startswith(b"\x89PNG")
    body = {"dataset": {"id": ds["id"]}, "network": {"hidden": [4]}, "training": {"epochs": 1}}
    job = client.post("/v1/jobs", json=body)
    assert job.status_code == 202, job.text


def test_idx_pair_is_stored_as_npz(client: TestClient) -> None:
    x, y = images(30), (np.arange(30) % 3).astype(np.uint8)
    r = upload(client, gzip.compress(idx(x)), "train-images-idx3-ubyte.gz", labels=idx(y))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["format"], ds["input_shape"], ds["n_rows"], ds["classes"]) == (
        "npz", [1, 28, 28], 30, ["0", "1", "2"])
    assert ds["filename"] == "train-images-idx3-ubyte.gz"
    assert ds["label_column"] == "y"
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        stored = repo.get_dataset_content(session, dataset_id=ds["id"])
    assert stored is not None
    assert stored[:4] == b"PK\x03\x04"
    assert ds["size"] == len(stored)
    with np.load(io.BytesIO(stored), allow_pickle=False) as arrays:
        assert np.array_equal(arrays["x"][:, 0], x)
        assert arrays["y"].tolist() == y.tolist()


def test_refusals_are_422_with_the_parsers_message(client: TestClient) -> None:
    x = np.zeros((4, 2))
    cases = [
        (upload(client, npz(x=x, y=np.array([0, 1, 0]))), "x has 4 rows but y has 3 labels"),
        (upload(client, npz(x=np.array([None] * 4), y=np.arange(4))), "holds Python objects"),
        (upload(client, npz(features=x, y=np.arange(4))), "its arrays are ['features', 'y']"),
        (upload(client, idx(images(4)), "imgs.idx"), "send the images file as `file` and the "
                                                     "labels file as `labels`"),
        (upload(client, idx(images(4)), labels=idx(np.arange(3))), "has 4 images but the "
                                                                    "labels file has 3"),
        (upload(client, idx(np.arange(4)), labels=idx(np.arange(4))), "magic number is "
                                                                       "0x00000801"),
        (upload(client, idx(images(4)), labels=idx(np.arange(4) % 2), label_column="kind"),
         "leave label_column out"),
        (upload(client, b"X,Y,class\n1,2,0\n", "t.npz"), "not a zip archive"),
        (upload(client, b"\x93NUMPY\x01\x00", "x.npy"), "single .npy array has no labels"),
    ]
    for r, message in cases:
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "DatasetError", r.text
        assert message in r.json()["detail"], r.text
    assert client.get("/v1/datasets").json()["items"] == []


def test_size_and_value_limits(settings: ApiSettings) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 4_000, "max_upload_values": 1_000})
    with TestClient(create_app(small)) as client:
        over = upload(client, bytes(4_001), "big.npz")
        assert over.status_code == 413
        assert "max_upload_bytes" in over.json()["detail"]
        one, other = idx(images(110, 6, 6)), idx(np.arange(110) % 2)
        assert len(one) < 4_000 < len(one) + len(other)
        pair = upload(client, one, labels=other)
        assert pair.status_code == 413  # the two files share the limit
        values = upload(client, npz(x=np.zeros((2, 1001), np.uint8), y=np.arange(2)))
        assert values.status_code == 422
        assert "BNLAB_MAX_UPLOAD_VALUES" in values.json()["detail"]
        ok = upload(client, idx(images(3, 10, 10)), labels=idx(np.arange(3) % 2))
        assert ok.status_code == 201, ok.text


def _write_mnist(root: Path, n: int) -> None:
    folder = root / "mnist"
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(images(n))))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx(np.arange(n) % 10))


def test_builtin_lists_the_real_datasets(client: TestClient) -> None:
    listed = {g["name"]: g for g in client.get("/v1/datasets/builtin").json()}
    digits = listed["digits"]
    assert (digits["input_shape"], digits["n_features"], digits["n_classes"],
            digits["n_rows"]) == ([1, 8, 8], 64, 10, 1797)
    layout = {p["name"]: p for p in digits["parameters"]}["layout"]
    assert layout["choices"] == ["image", "flat"]
    assert layout["default"] == "image"
    assert (listed["iris"]["input_shape"], listed["iris"]["n_rows"]) == ([4], 150)
    cancer = listed["breast_cancer"]
    assert cancer["n_classes"] == 2
    assert "4,000" in cancer["description"]
    assert listed["moons"]["input_shape"] == [2]
    assert listed["blobs"]["input_shape"] is None
    mnist = listed["mnist"]
    assert mnist["available"] is False
    assert mnist["n_rows"] is None
    assert mnist["input_shape"] == [1, 28, 28]
    assert "BNLAB_DATA_DIR" in mnist["note"]
    assert listed["cifar10"]["input_shape"] == [3, 32, 32]
    body = {"dataset": {"name": "mnist"}, "network": {"hidden": [4]}, "training": {"epochs": 1}}
    refused = client.post("/v1/jobs", json=body)
    assert refused.status_code == 422
    assert "BNLAB_DATA_DIR" in refused.json()["detail"]
    flat = {"dataset": {"name": "digits", "layout": "flat"}, "network": {"hidden": [8]},
            "training": {"epochs": 1}}
    assert client.post("/v1/jobs", json=flat).status_code == 202
    image = {"dataset": digits["example"], "network": {"conv": [2], "hidden": [8]},
             "training": {"epochs": 1}}
    job = client.post("/v1/jobs", json=image)
    assert job.status_code == 202, job.text
    model = client.get(f"/v1/jobs/{job.json()['id']}/model").json()
    assert model["classes"] == [str(d) for d in range(10)]
    for name in ("iris", "wine", "breast_cancer"):
        example = {"dataset": listed[name]["example"], "network": {"hidden": [4]},
                   "training": {"epochs": 1}}
        job = client.post("/v1/jobs", json=example)
        assert job.status_code == 202, name
        classes = client.get(f"/v1/jobs/{job.json()['id']}/model").json()["classes"]
        assert classes[0] == {"iris": "setosa", "wine": "class_0",
                              "breast_cancer": "malignant"}[name]


def test_builtin_with_a_data_dir(settings: ApiSettings, tmp_path: Path) -> None:
    _write_mnist(tmp_path / "data", 12)
    with TestClient(create_app(settings.model_copy(
            update={"data_dir": tmp_path / "data"}))) as client:
        listed = {g["name"]: g for g in client.get("/v1/datasets/builtin").json()}
        assert (listed["mnist"]["available"], listed["mnist"]["n_rows"]) == (True, 12)
        assert listed["fashion_mnist"]["available"] is False
        assert "fashion_mnist/train-images-idx3-ubyte" in listed["fashion_mnist"]["note"]
        assert str(tmp_path) not in listed["fashion_mnist"]["note"]  # no server paths
        missing = {"dataset": {"name": "cifar10"}, "network": {"hidden": [4]},
                   "training": {"epochs": 1}}
        r = client.post("/v1/jobs", json=missing)
        assert r.status_code == 422
        assert "data_batch_1.bin" in r.json()["detail"]
