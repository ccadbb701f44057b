"""Network building, parameter counts, BatchNorm train vs eval, and the stacked equivalent."""

from __future__ import annotations

from typing import Any, TypeVar

import pytest
import torch

from models.devices import DeviceError, select_device
from models.network import build_network, fold_batchnorm
from models.resolution import ResolvedNetwork, resolve_job, resolve_network
from models.spec import (
    NOTEBOOK_BN_LAYERS,
    NOTEBOOK_PLAIN_LAYERS,
    BatchNormPlacement,
    JobSpec,
    NetworkSpec,
)
from models.stacked import _BatchNorm, stacked_network

M = TypeVar("M", bound=torch.nn.Module)


def _net(layers: list[dict[str, Any]], n_features: int = 2, n_classes: int = 2
         ) -> ResolvedNetwork:
    return resolve_network(NetworkSpec.model_validate({"layers": layers}), n_features, n_classes)


def _at(modules: torch.nn.Sequential | torch.nn.ModuleList, i: int, kind: type[M]) -> M:
    """`modules[i]`, narrowed to the module class the test relies on."""
    module = modules[i]
    assert isinstance(module, kind)
    return module


def _counts(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for name, b in model.named_buffers()
                  if not name.endswith("num_batches_tracked"))
    return trainable, buffers


def test_notebook_plain_model_has_15_parameters() -> None:
    net = _net(NOTEBOOK_PLAIN_LAYERS)
    rows = net.summary()
    assert sum(r.params for r in rows) == 15
    assert sum(r.non_trainable for r in rows) == 0
    assert _counts(build_network(net)) == (15, 0)


def test_notebook_bn_model_has_40_parameters_30_trainable() -> None:
    net = _net(NOTEBOOK_BN_LAYERS)
    rows = net.summary()
    assert (sum(r.trainable for r in rows), sum(r.non_trainable for r in rows)) == (30, 10)
    assert _counts(build_network(net)) == (30, 10)


def test_module_layout_and_head_left_out() -> None:
    model = build_network(_net(NOTEBOOK_BN_LAYERS))
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "ReLU", "BatchNorm1d", "Linear", "ReLU", "BatchNorm1d", "Linear"]
    assert "2.running_var" in model.state_dict()
    assert model(torch.randn(4, 2)).shape == (4, 1)  # logits: no sigmoid inside


def test_layer_options_reach_the_modules() -> None:
    layers: list[dict[str, Any]] = [
        {"type": "dense", "units": 4, "use_bias": False},
        {"type": "batchnorm", "momentum": 0.01, "eps": 1e-3, "affine": False},
        {"type": "activation", "activation": "leaky_relu", "negative_slope": 0.2},
        {"type": "dropout", "rate": 0.25},
        {"type": "dense", "units": 4, "activation": "gelu"},
        {"type": "layernorm"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
    model = build_network(_net(layers, n_features=5, n_classes=3))
    assert model[0].bias is None
    bn = model[1]
    assert (bn.momentum, bn.eps, bn.affine) == (0.01, 1e-3, False)
    assert model[2].negative_slope == 0.2
    assert model[3].p == 0.25
    assert isinstance(model[5], torch.nn.GELU)
    assert isinstance(model[6], torch.nn.LayerNorm)
    assert isinstance(model[-1], torch.nn.Linear)


def test_keras_init_is_glorot_with_zero_bias_and_seeded() -> None:
    net = _net(NOTEBOOK_BN_LAYERS)
    a = build_network(net, init="keras", seed=7)
    b = build_network(net, init="keras", seed=7)
    c = build_network(net, init="pytorch", seed=7)
    a0 = _at(a, 0, torch.nn.Linear)
    assert torch.equal(a0.weight, _at(b, 0, torch.nn.Linear).weight)
    assert not torch.equal(a0.weight, _at(c, 0, torch.nn.Linear).weight)
    assert torch.count_nonzero(a0.bias) == 0
    limit = (6 / (2 + 3)) ** 0.5
    assert a0.weight.abs().max() <= limit


@pytest.mark.parametrize("init", ["pytorch", "keras"])
def test_variants_sharing_dense_layers_start_from_the_same_weights(init: str) -> None:
    nets = {bn: resolve_network(NetworkSpec(hidden=[3, 2], batchnorm=BatchNormPlacement(bn)),
                                 2, 2)
            for bn in ("none", "before_activation", "after_activation")}
    no_bias = _net([{"type": "dense", "units": 3, "activation": "relu", "use_bias": False},
                    {"type": "dropout", "rate": 0.5}, {"type": "batchnorm"},
                    {"type": "dense", "units": 2, "activation": "relu"},
                    {"type": "dense", "units": 1, "activation": "sigmoid"}])
    for seed in (0, 7):
        models = [build_network(n, init=init, seed=seed) for n in [*nets.values(), no_bias]]
        dense = [[m for m in model if isinstance(m, torch.nn.Linear)] for model in models]
        for layers in dense[1:]:
            for a, b in zip(dense[0], layers, strict=True):
                assert torch.equal(a.weight, b.weight)  # bias on/off does not shift it
                if a.bias is not None and b.bias is not None:
                    assert torch.equal(a.bias, b.bias)
        assert dense[3][0].bias is None
    seed0 = build_network(nets["none"], init=init, seed=0)
    seed1 = build_network(nets["none"], init=init, seed=1)
    first = _at(seed0, 0, torch.nn.Linear).weight
    assert not torch.equal(first, _at(seed1, 0, torch.nn.Linear).weight)  # seeds differ
    assert not torch.equal(first.flatten()[:4],
                           _at(seed0, 2, torch.nn.Linear).weight.flatten()[:4])  # layers differ


def test_default_init_keeps_nn_linear_distribution_and_the_global_rng() -> None:
    net = _net([{"type": "dense", "units": 200, "activation": "relu"},
                {"type": "dense", "units": 1, "activation": "sigmoid"}], n_features=50)
    state = torch.get_rng_state()
    model = build_network(net, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # seeded: the global RNG is untouched
    w, b = _at(model, 0, torch.nn.Linear).weight, _at(model, 0, torch.nn.Linear).bias
    bound = 1 / 50 ** 0.5  # kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)), bias too
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.95 * bound
    assert b.abs().max() <= bound
    assert b.abs().max() > 0.9 * bound
    assert abs(w.mean().item()) < 0.01
    assert w.std().item() == pytest.approx(bound / 3 ** 0.5,
                                                                            rel=0.05)
    keras = _at(build_network(net, init="keras", seed=3), 0, torch.nn.Linear).weight
    limit = (6 / (50 + 200)) ** 0.5
    assert keras.abs().max() <= limit
    assert keras.abs().max() > 0.95 * limit
    assert torch.count_nonzero(
        _at(build_network(net, init="keras", seed=3), 0, torch.nn.Linear).bias) == 0
    with pytest.raises(ValueError, match="unknown init"):
        build_network(net, init="lecun")


def test_batchnorm_running_stats_follow_the_momentum_formula() -> None:
    net = _net([{"type": "dense", "units": 3}, {"type": "batchnorm", "momentum": 0.3},
                {"type": "dense", "units": 1, "activation": "sigmoid"}])
    model = build_network(net, seed=0).train()
    stacked = stacked_network(net, seeds=[0], init="pytorch", device=torch.device("cpu"))
    x = torch.randn(16, 2)
    h = model[0](x).detach()
    model(x)
    stacked(x.unsqueeze(0), "train")
    mean, var = h.mean(0), h.var(0, unbiased=True)
    expect_mean = 0.7 * torch.zeros(3) + 0.3 * mean
    expect_var = 0.7 * torch.ones(3) + 0.3 * var
    bn = _at(model, 1, torch.nn.BatchNorm1d)
    stacked_bn = _at(stacked.layers, 1, _BatchNorm).buffers_state()
    for rm, rv in ((bn.running_mean, bn.running_var),
                   (stacked_bn["running_mean"][0], stacked_bn["running_var"][0])):
        torch.testing.assert_close(rm, expect_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rv, expect_var, rtol=1e-5, atol=1e-6)
    assert int(stacked_bn["num_batches_tracked"][0]) == 1


def test_eval_output_does_not_depend_on_batch_composition() -> None:
    net = _net(NOTEBOOK_BN_LAYERS)
    model = build_network(net, seed=1).train()
    for _ in range(3):
        model(torch.randn(32, 2) * 3 + 1)  # move the running stats away from (0, 1)
    model.eval()
    x = torch.randn(10, 2)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(10)])
        other = model(torch.cat([x[:3], torch.randn(50, 2) * 100]))[:3]
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(together[:3], other)
    model.train()
    with torch.no_grad():  # training mode: batch statistics, so the batch matters
        assert not torch.allclose(model(x)[:3], model(x[:3]))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_stacked_network_matches_the_plain_modules(mode: str) -> None:
    net = _net(NOTEBOOK_BN_LAYERS)
    seeds = [3, 4, 5]
    stacked = stacked_network(net, seeds=seeds, init="keras", device=torch.device("cpu"))
    x = torch.randn(3, 20, 2)
    out = stacked(x, mode)
    for k, seed in enumerate(seeds):
        ref = build_network(net, init="keras", seed=seed)
        ref.train(mode == "train")
        torch.testing.assert_close(out[k], ref(x[k]), rtol=1e-5, atol=1e-6)
        state = stacked.model_state(k)
        ref_state = ref.state_dict()
        assert state.keys() == ref_state.keys()
        torch.testing.assert_close(state["2.running_var"], ref_state["2.running_var"])
        build_network(net).load_state_dict(state)  # an ordinary state dict


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            select_device("cuda:0")


def _trained_like(net_layers: list[dict[str, Any]], seed: int) -> torch.nn.Sequential:
    """A network whose BN layers hold non-trivial running stats and affine parameters."""
    spec = JobSpec.model_validate({"dataset": {"name": "blobs", "n_features": 3,
                                               "n_classes": 3},
                                   "network": {"layers": net_layers}})
    job = resolve_job(spec, n_features=3, n_classes=3, n_rows=100)
    model = build_network(job.network, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.BatchNorm1d):
                if m.running_mean is not None and m.running_var is not None:
                    m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                    m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 3 + 0.05)
                if m.weight is not None and m.bias is not None:
                    m.weight.copy_(torch.randn(m.num_features, generator=gen))
                    m.bias.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


BN = {"type": "batchnorm"}
OUT = {"type": "dense", "units": 3, "activation": "softmax"}


@pytest.mark.parametrize(("layers", "bn_left"), [
    # Keras placement: Dense(relu) -> BN, folded into the next dense layer
    ([{"type": "dense", "units": 5, "activation": "relu"}, BN,
      {"type": "dense", "units": 4, "activation": "relu"}, BN, OUT], 0),
    # PyTorch placement: Linear -> BN -> ReLU, folded into the dense layer before it
    ([{"type": "dense", "units": 5, "use_bias": False}, BN, {"type": "activation",
                                                            "activation": "relu"}, OUT], 0),
    ([{"type": "dense", "units": 5}, {**BN, "affine": False},
      {"type": "activation", "activation": "tanh"}, OUT], 0),
    # batch statistics in eval: not an affine map, kept
    ([{"type": "dense", "units": 5}, {**BN, "track_running_stats": False},
      {"type": "activation", "activation": "relu"}, OUT], 1),
])
def test_folded_batchnorm_serves_the_same_function(layers: list[dict[str, Any]],
                                                    bn_left: int) -> None:
    model = _trained_like(layers, seed=3)
    folded = fold_batchnorm(model)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in folded) == bn_left
    x = torch.randn(256, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-6, rtol=0)
        # the fold is done in float64: no further from the exact function than float32 BN is
        exact = _trained_like(layers, seed=3).double()(x.double())
        assert (folded(x).double() - exact).abs().max() <= (
            model(x).double() - exact).abs().max() + 1e-7
    assert not folded.training
