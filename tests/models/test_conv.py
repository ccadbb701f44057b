"""Convolutional networks end to end below the service: shapes and parameter counts, the 422
messages, stacked training against lone runs for every norm, checkpoints that load into plain
torch modules, bitwise resume, input standardisation, image prediction and ONNX exports."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.checkpoint import decode
from models.datasets import Table
from models.export import to_onnx
from models.inference import InferenceInputError, load_predictor, serving_network
from models.network import build_network, fold_batchnorm
from models.resolution import resolve_job, train_rows
from models.spec import GroupNormLayer, JobSpec, Limits, SpecError
from models.stacked import stacked_network
from models.trainer import TrainingDiverged, train_job, train_many
from tests.support.conv import NORMS, images, job

CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def resolve(layers: list[dict[str, Any]], shape: tuple[int, ...], n_classes: int = 10) -> Any:
    spec = JobSpec.model_validate({"dataset": {"id": "x"}, "network": {"layers": layers}})
    return resolve_job(spec, input_shape=shape, n_classes=n_classes, n_rows=100).network


# ----------------------------------------------------------------- summary, shapes, limits


def test_summary_matches_hand_counts_and_torch() -> None:
    net = resolve([
        {"type": "conv2d", "filters": 8, "kernel_size": 3},                        # 3*8*9+8
        {"type": "batchnorm"},                                                       # 16 + 16
        {"type": "activation", "activation": "relu"},
        {"type": "maxpool2d"},
        {"type": "conv2d", "filters": 16, "kernel_size": 5, "stride": 2, "padding": 1,
         "use_bias": False},                                                         # 8*16*25
        {"type": "groupnorm", "groups": 4},                                          # 32
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": "same",
         "activation": "relu"},                                                      # 16*16*9+16
        {"type": "instancenorm", "affine": True, "track_running_stats": True},     # 32 + 32
        {"type": "layernorm"},                                                       # 32
        {"type": "avgpool2d", "pool_size": 3, "stride": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"},                    # 144*10+10
    ], (3, 32, 32))
    rows = [(r.name, r.output_shape, r.trainable, r.non_trainable) for r in net.summary()]
    assert rows == [
        ("conv2d", (None, 8, 30, 30), 224, 0),
        ("batchnorm", (None, 8, 30, 30), 16, 16),
        ("activation", (None, 8, 30, 30), 0, 0),
        ("maxpool2d", (None, 8, 15, 15), 0, 0),
        ("conv2d_1", (None, 16, 7, 7), 3200, 0),
        ("groupnorm", (None, 16, 7, 7), 32, 0),
        ("conv2d_2", (None, 16, 7, 7), 2320, 0),
        ("instancenorm", (None, 16, 7, 7), 32, 32),
        ("layernorm", (None, 16, 7, 7), 32, 0),
        ("avgpool2d", (None, 16, 3, 3), 0, 0),
        ("flatten", (None, 144), 0, 0),
        ("dense", (None, 10), 1450, 0),
    ]
    model = build_network(net, seed=0)
    trainable = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for name, b in model.named_buffers() if "running" in name)
    assert trainable == sum(r.trainable for r in net.summary()) == 7306
    assert stats == sum(r.non_trainable for r in net.summary()) == 48
    out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_shorthand_builds_conv_blocks_with_the_chosen_norm() -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "digits"}, "network": {
        "conv": [16, 32], "pool": "max", "hidden": [64], "batchnorm": "before_activation",
        "norm": "groupnorm"}})
    net = resolve_job(spec, input_shape=(1, 8, 8), n_classes=10, n_rows=1797).network
    assert [layer.type for layer in net.layers] == [
        "conv2d", "groupnorm", "activation", "maxpool2d",
        "conv2d", "groupnorm", "activation", "maxpool2d", "global_avg_pool",
        "dense", "groupnorm", "activation", "dense"]
    assert [r.output_shape for r in net.summary()][:5] == [
        (None, 16, 8, 8), (None, 16, 8, 8), (None, 16, 8, 8), (None, 16, 4, 4), (None, 32, 4, 4)]
    norm = net.layers[1]
    assert isinstance(norm, GroupNormLayer)
    assert norm.groups == 8
    none = JobSpec.model_validate({"dataset": {"name": "digits"}, "network": {
        "conv": [4], "norm": "none", "batchnorm": "before_activation", "reduce": "flatten"}})
    layers = resolve_job(none, input_shape=(1, 8, 8), n_classes=10, n_rows=1797).network.layers
    assert [layer.type for layer in layers] == ["conv2d", "flatten", "dense"]


OUT = {"type": "dense", "units": 10, "activation": "softmax"}
FLAT = {"type": "flatten"}


@pytest.mark.parametrize(("layers", "shape", "needle"), [
    ([{"type": "conv2d", "filters": 4}, {"type": "maxpool2d"}, {"type": "conv2d", "filters": 4},
      {"type": "maxpool2d"}, {"type": "conv2d", "filters": 4, "kernel_size": 5}, FLAT, OUT],
     (1, 16, 16), "conv2d layer 4: kernel 5 larger than its 2×2 input"),  # noqa: RUF001
    ([{"type": "conv2d", "filters": 4}, OUT],
     (1, 8, 8), "dense layer 1 follows a (4, 6, 6) feature map: add a 'flatten' or "
                "'global_avg_pool'"),
    ([{"type": "conv2d", "filters": 6}, {"type": "groupnorm", "groups": 4}, FLAT, OUT],
     (1, 8, 8), "groupnorm layer 1: 4 groups do not divide its 6 channels"),
    ([{"type": "instancenorm"}, OUT], (64,), "instancenorm layer 0 needs an image input"),
    ([{"type": "conv2d", "filters": 4, "stride": 2, "padding": "same"}, FLAT, OUT],
     (1, 8, 8), "padding 'same' needs stride 1"),
    ([{"type": "maxpool2d", "pool_size": 9}, FLAT, OUT], (1, 8, 8),
     "pool 9 larger than its 8×8 input"),  # noqa: RUF001
    ([{"type": "conv2d", "filters": 4}, {"type": "activation", "activation": "softmax"}, FLAT,
      OUT], (1, 8, 8), "softmax over a (4, 6, 6) feature map is not supported"),
    ([{"type": "conv2d", "filters": 4}, FLAT, OUT, {"type": "batchnorm"}],
     (1, 8, 8), "the last layer (batchnorm) must be the output dense"),
])
def test_shape_problems_name_the_layer_and_the_shapes(layers: list[dict[str, Any]],
                                                      shape: tuple[int, ...], needle: str) -> None:
    with pytest.raises(SpecError) as exc:
        resolve(layers, shape)
    assert any(needle in e for e in exc.value.errors), exc.value.errors


def test_conv_shorthand_on_a_table_says_so() -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "iris"}, "network": {"conv": [8]}})
    with pytest.raises(SpecError, match=r"network.conv needs an image dataset"):
        resolve_job(spec, input_shape=(4,), n_classes=3, n_rows=150)


def test_limits_are_arithmetic_before_allocation() -> None:
    big = JobSpec.model_validate({"dataset": {"id": "x"}, "network": {"conv": [4096, 4096]},
                                  "training": {"batch_size": 4096}})
    with pytest.raises(SpecError) as exc:
        resolve_job(big, input_shape=(3, 64, 64), n_classes=10, n_rows=1000,
                    limits=Limits(max_params=10**12))
    assert any("MiB of layer outputs" in e and "lower training.batch_size" in e
               for e in exc.value.errors)
    with pytest.raises(SpecError, match=r"one input is \(3, 512, 512\) = 786,432 values"):
        resolve_job(JobSpec.model_validate({"dataset": {"id": "x"}, "network": {"conv": [4]}}),
                    input_shape=(3, 512, 512), n_classes=10, n_rows=10)
    with pytest.raises(SpecError, match=r"parameters; the limit is 1,000"):
        resolve_job(JobSpec.model_validate({"dataset": {"id": "x"},
                                            "network": {"conv": [64, 64]}}),
                    input_shape=(1, 8, 8), n_classes=10, n_rows=10, limits=Limits(max_params=1000))


# ---------------------------------------------------------------- stacked training


@pytest.mark.parametrize("name", list(NORMS))
def test_stacked_models_equal_their_lone_runs(name: str) -> None:
    table = images()
    resolved = job(NORMS[name], table)
    seeds = [3, 4, 5, 6]
    together = train_many(resolved, table, seeds=seeds, device=CPU)
    n_train = train_rows(resolved.n_rows, resolved.spec.training.validation_split)
    for seed, stacked in zip(seeds, together, strict=True):
        alone = train_many(resolved, table, seeds=[seed], device=CPU)[0]
        # Losses agree to float noise that training amplifies; how much depends on the
        # summation order, which changes with torch's thread count (one thread: up to ~2.5e-3).
        for key in ("loss", "val_loss"):
            np.testing.assert_allclose(stacked.history[key], alone.history[key], rtol=0,
                                       atol=5e-3, err_msg=f"{name} seed {seed} {key}")
        # Grouped and lone convolutions sum in different orders, so a prediction sitting on
        # a near-tie may flip: an accuracy may move by one row of its split, never more.
        for key, rows in (("accuracy", n_train), ("val_accuracy", resolved.n_rows - n_train)):
            np.testing.assert_allclose(stacked.history[key], alone.history[key], rtol=0,
                                       atol=1 / rows + 1e-9, err_msg=f"{name} seed {seed} {key}")
    # the models differ from each other: the stack did not train one model four times
    assert len({round(r.history["val_loss"][-1], 6) for r in together}) == len(seeds)


@pytest.mark.parametrize("name", list(NORMS))
def test_checkpoints_load_into_plain_torch_and_match_the_stack(name: str) -> None:
    table = images()
    resolved = job(NORMS[name], table)
    results = train_many(resolved, table, seeds=[1, 2, 3], device=CPU)
    model = stacked_network(resolved.network, seeds=[1, 2, 3], init="pytorch", device=CPU)
    model.load_model_states([decode(r.checkpoints["last"]).model for r in results])
    model.eval()
    x = torch.from_numpy(table.X[:20].reshape(20, -1))
    stacked = model(x.unsqueeze(0).expand(3, -1, -1).contiguous(), "eval")
    for k, r in enumerate(results):
        cp = decode(r.checkpoints["last"])
        plain = build_network(cp.network, seed=0)
        plain.load_state_dict(cp.model, strict=True)  # no stacked code involved
        plain.eval()
        with torch.no_grad():
            torch.testing.assert_close(plain(torch.from_numpy(table.X[:20])), stacked[k],
                                       rtol=1e-4, atol=1e-4)


def test_stacked_conv_init_equals_build_network() -> None:
    table = images()
    resolved = job(NORMS["batchnorm"], table)
    model = stacked_network(resolved.network, seeds=[7, 8], init="keras", device=CPU)
    for k, seed in enumerate([7, 8]):
        plain = build_network(resolved.network, init="keras", seed=seed)
        for key, t in plain.state_dict().items():
            torch.testing.assert_close(model.model_state(k)[key], t, rtol=0, atol=0)


def test_conv_resume_is_bitwise() -> None:
    table = images()
    full = train_job(job(NORMS["batchnorm"], table, epochs=4), table, device=CPU)
    first = train_job(job(NORMS["batchnorm"], table, epochs=2), table, device=CPU)
    rest = train_job(job(NORMS["batchnorm"], table, epochs=4), table, device=CPU,
                     resume_from=first.checkpoints["last"])
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        assert first.history[key] + rest.history[key] == full.history[key]
    assert decode(rest.checkpoints["last"]).model.keys() == \
        decode(full.checkpoints["last"]).model.keys()
    for key, t in decode(full.checkpoints["last"]).model.items():
        assert torch.equal(t, decode(rest.checkpoints["last"]).model[key]), key


def test_a_one_row_last_batch_is_dropped_for_batchnorm2d() -> None:
    table = images(n=85)  # 68 training rows: batch 67 leaves a last batch of 1
    result = train_job(job(NORMS["batchnorm"], table, batch_size=67, validation_split=0.2),
                       table, device=CPU)
    assert any("would hold 1 row" in note for note in result.notes)
    assert all(math.isfinite(v) for v in result.history["loss"])


def test_divergence_is_reported() -> None:
    t = images()
    huge = Table(t.X * np.float32(1e30), t.y, t.feature_names, t.classes, t.label_column)
    resolved = job(NORMS["none"], huge, epochs=3,
                   optimizer={"name": "sgd", "lr": 10.0, "momentum": 0.9})
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch [12]\b"):
        train_job(resolved, huge, device=CPU)


# ---------------------------------------------------------------- standardisation


def test_standardize_fits_on_training_rows_only_and_travels_with_the_checkpoint() -> None:
    table = images()
    resolved = job(NORMS["batchnorm"], table, standardize=True, split="tail")
    result = train_job(resolved, table, device=CPU)
    cp = decode(result.checkpoints["last"])
    n_train = int(table.n_rows * 0.8)
    train = table.X[:n_train].astype(np.float64)
    assert cp.input["mean"].shape == (2, 1, 1)
    np.testing.assert_allclose(cp.input["mean"].numpy().ravel(), train.mean(axis=(0, 2, 3)),
                               rtol=1e-6)
    np.testing.assert_allclose(cp.input["std"].numpy().ravel(), train.std(axis=(0, 2, 3)),
                               rtol=1e-6)
    assert not np.allclose(cp.input["mean"].numpy().ravel(),
                           table.X.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-6)
    # predict takes raw inputs and applies the stored statistics
    net = build_network(cp.network, seed=0)
    net.load_state_dict(cp.model)
    net.eval()
    raw = table.X[:5]
    manual = torch.softmax(net((torch.from_numpy(raw) - cp.input["mean"]) / cp.input["std"]), 1)
    got = load_predictor(result.checkpoints["last"]).predict(raw.tolist())
    np.testing.assert_allclose(got.probabilities, manual.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_standardize_per_model_statistics_in_a_stack() -> None:
    table = images()
    resolved = job({"conv": [4], "hidden": [6]}, table, standardize=True, split="random")
    together = train_many(resolved, table, seeds=[1, 2], device=CPU)
    means = [decode(r.checkpoints["last"]).input["mean"] for r in together]
    assert not torch.equal(means[0], means[1])  # each model fitted on its own training rows
    for seed, stacked in zip([1, 2], together, strict=True):
        alone = train_many(resolved, table, seeds=[seed], device=CPU)[0]
        np.testing.assert_allclose(stacked.history["val_loss"], alone.history["val_loss"],
                                   atol=1e-4)


def test_standardize_on_a_table_is_per_feature() -> None:
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(80, 3)) * [1e-3, 1.0, 4e3] + [0.0, 5.0, 1e3]).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    table = Table(X, y, ["a", "b", "c"], ["0", "1"], "y")
    spec = JobSpec.model_validate({"dataset": {"id": "t"}, "network": {"hidden": [4]},
                                   "training": {"epochs": 2, "standardize": True}})
    result = train_job(resolve_job(spec, n_features=3, n_classes=2, n_rows=80), table,
                       device=CPU)
    cp = decode(result.checkpoints["last"])
    np.testing.assert_allclose(cp.input["std"].numpy(), X[:64].astype(np.float64).std(0),
                               rtol=1e-5)


# ---------------------------------------------------------------- serving


@pytest.fixture(scope="module")
def trained() -> dict[str, bytes]:
    table = images()
    out = {}
    for name, network in NORMS.items():
        resolved = job(network, table, epochs=3, standardize=name == "batchnorm")
        out[name] = train_job(resolved, table, device=CPU).checkpoints["last"]
    return out


def test_predict_images_in_eval_mode_row_by_row(trained: dict[str, bytes]) -> None:
    table = images()
    predictor = load_predictor(trained["batchnorm"])
    assert predictor.input_shape == (2, 6, 6)
    batch = predictor.predict(table.X[:9].tolist())
    for i in range(9):
        alone = predictor.predict(table.X[i:i + 1].tolist())
        np.testing.assert_allclose(alone.probabilities[0], batch.probabilities[i], rtol=1e-5,
                                   atol=1e-6)
    with pytest.raises(InferenceInputError, match=r"each input must have shape \[2, 6, 6\]"):
        predictor.predict(table.X[:2, 0].tolist())
    bad = table.X[:1].copy()
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(InferenceInputError, match=r"input 0, value \[1, 2, 3\]"):
        predictor.predict(bad.tolist())


def test_one_channel_images_may_omit_the_channel_axis() -> None:
    table = images(shape=(1, 5, 5))
    blob = train_job(job({"conv": [3]}, table), table, device=CPU).checkpoints["last"]
    predictor = load_predictor(blob)
    with_axis = predictor.predict(table.X[:4].tolist())
    without = predictor.predict(table.X[:4, 0].tolist())
    assert with_axis.probabilities == without.probabilities


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NORMS))
@pytest.mark.parametrize("fold", [False, True])
def test_onnx_matches_predict_for_every_norm(trained: dict[str, bytes], name: str,
                                             fold: bool) -> None:
    blob = trained[name]
    session = ort.InferenceSession(to_onnx(blob, fold_bn=fold),
                                   providers=["CPUExecutionProvider"])
    predictor = load_predictor(blob)
    x = images(n=33, seed=5).X
    for n in (1, 33):
        (probs,) = session.run(["probabilities"], {"input": x[:n]})
        np.testing.assert_allclose(probs, predictor.predict(x[:n].tolist()).probabilities,
                                   rtol=1e-4, atol=1e-5)


def test_batchnorm_folds_into_the_conv_before_and_after_it(trained: dict[str, bytes]) -> None:
    cp = decode(trained["batchnorm"])
    unfolded = serving_network(cp, fold_bn=False)
    folded = serving_network(cp, fold_bn=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in unfolded) == 2
    assert not any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in folded)
    x = torch.from_numpy(images(n=17, seed=9).X)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), unfolded(x), rtol=1e-4, atol=1e-4)


def test_bn_before_a_padded_conv_is_not_folded() -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.BatchNorm2d(3),
                        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3))
    for m in net:
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None
            assert m.running_var is not None
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    net.eval()
    folded = fold_batchnorm(net)
    kinds = [type(m).__name__ for m in folded]
    # BN -> padded conv stays; conv -> BN folds; BN -> unpadded conv folds
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "ReLU", "Conv2d"]
    x = torch.randn(5, 2, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
