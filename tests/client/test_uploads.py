"""The client and CLI upload .npz files and IDX pairs (bytes only: no numpy in the client)."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import cli.client_commands as commands
from bnlab import AsyncClient, Client, ValidationError
from cli.main import app as cli_app


def _idx(a: np.ndarray) -> bytes:
    a = np.asarray(a, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def _npz(n: int = 10) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((n, 2, 3, 3), np.uint8), y=np.arange(n) % 2)
    return buf.getvalue()


def test_sync_and_async_clients_upload_npz_and_idx(app_client: TestClient, tmp_path: Path
                                                   ) -> None:
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(_idx(np.zeros((6, 5, 5)))))
    labels = _idx(np.array([0, 1, 2, 0, 1, 2]))
    with Client(http_client=app_client) as bn:
        ds = bn.datasets.upload(_npz())
        assert (ds.format, ds.input_shape, ds.is_image, ds.filename) == (
            "npz", [2, 3, 3], True, "data.npz")
        pair = bn.datasets.upload(images, labels=labels, name="digits")
        assert (pair.format, pair.input_shape, pair.n_rows, pair.classes) == (
            "npz", [1, 5, 5], 6, ["0", "1", "2"])
        assert pair.filename == images.name
        assert pair.name == "digits"
        with pytest.raises(ValidationError) as info:
            bn.datasets.upload(images)  # no labels
        assert any("`labels`" in m for m in info.value.messages)

    async def via_async() -> list[int] | None:
        transport = httpx.ASGITransport(app=app_client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http, \
                AsyncClient(http_client=http) as bn:
            return (await bn.datasets.upload(images, labels=io.BytesIO(labels))).input_shape
    assert asyncio.run(via_async()) == [1, 5, 5]


def test_cli_uploads_npz_and_idx_pair(app_client: TestClient, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "Client", lambda *_, **__: Client(http_client=app_client))
    (tmp_path / "x.npz").write_bytes(_npz(8))
    (tmp_path / "images.idx").write_bytes(_idx(np.zeros((4, 3, 3))))
    (tmp_path / "labels.idx").write_bytes(_idx(np.array([1, 0, 1, 0])))
    result = CliRunner().invoke(cli_app, ["datasets", "upload", str(tmp_path / "x.npz")])
    assert result.exit_code == 0, result.output
    assert "(npz): 8 rows, images 2x3x3" in result.output
    result = CliRunner().invoke(cli_app, ["datasets", "upload", str(tmp_path / "images.idx"),
                                          "--labels", str(tmp_path / "labels.idx"), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert (body["format"], body["input_shape"], body["classes"]) == ("npz", [1, 3, 3],
                                                                      ["0", "1"])
    listing = CliRunner().invoke(cli_app, ["datasets", "ls"])
    assert listing.exit_code == 0
    assert "1x3x3" in listing.output
    assert "2x3x3" in listing.output
