"""CSV upload, listing, scatter plot and the built-in generators."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings


def test_upload_get_list_scatter(client: TestClient, notebook_csv: bytes) -> None:
    r = client.post("/v1/datasets", files={"file": ("concertriccir2.csv", notebook_csv)},
                    data={"name": "notebook"})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert r.headers["location"] == f"/v1/datasets/{ds['id']}"
    assert ds["name"] == "notebook"
    assert (ds["n_rows"], ds["n_features"]) == (499, 2)
    assert ds["columns"] == ["X", "Y", "class"]
    assert ds["label_column"] == "class"
    assert sum(ds["class_counts"].values()) == 499
    assert set(ds["class_counts"]) == {"0", "1"}
    assert client.get(f"/v1/datasets/{ds['id']}").json() == ds
    assert [d["id"] for d in client.get("/v1/datasets").json()["items"]] == [ds["id"]]
    png = client.get(f"/v1/datasets/{ds['id']}/scatter.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_csv_with_text_names_line_and_column(client: TestClient) -> None:
    bad = b"X,Y,class\n1.0,2.0,0\n3.0,oops,1\n"
    r = client.post("/v1/datasets", files={"file": ("bad.csv", bad)})
    assert r.status_code == 422
    assert r.json()["error"] == "DatasetError"
    assert "line 3" in r.json()["detail"]
    assert "'Y'" in r.json()["detail"]


def test_label_column_and_size_cap(settings: ApiSettings) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 64})
    with TestClient(create_app(small)) as client:
        content = b"a,b,target,extra\n" + b"1,2,7,x\n4,5,8,y\n"
        r = client.post("/v1/datasets", files={"file": ("t.csv", content)},
                        data={"label_column": "extra"})
        assert r.status_code == 201, r.text
        assert r.json()["label_column"] == "extra"
        assert r.json()["classes"] == ["x", "y"]
        assert r.json()["n_features"] == 3
        r = client.post("/v1/datasets", files={"file": ("big.csv", content * 10)})
        assert r.status_code == 413
        assert "max_upload_bytes" in r.json()["detail"]


def test_builtin_generators(client: TestClient) -> None:
    gens = {g["name"]: g for g in client.get("/v1/datasets/builtin").json()}
    assert set(gens) == {"concentric_circles", "moons", "xor", "spirals", "blobs",
                         "concertriccir2", "digits", "iris", "wine", "breast_cancer", "mnist",
                         "fashion_mnist", "cifar10"}
    notebook = gens["concertriccir2"]
    assert (notebook["n_rows"], notebook["n_features"], notebook["n_classes"]) == (499, 2, 2)
    assert notebook["parameters"] == []
    assert notebook["example"] == {"name": "concertriccir2"}
    assert "notebook" in notebook["description"]
    assert gens["moons"]["n_rows"] == "n_samples"
    circles = {p["name"]: p for p in gens["concentric_circles"]["parameters"]}
    assert circles["n_samples"]["default"] == 500
    assert circles["factor"]["exclusive_maximum"] == 1
    assert gens["blobs"]["n_features"] == "n_features"
    assert gens["moons"]["n_classes"] == 2
    # the example is a dataset a job accepts as written
    body = {"dataset": gens["spirals"]["example"], "network": {"hidden": [4]},
            "training": {"epochs": 1}}
    assert client.post("/v1/jobs", json=body).status_code == 202
