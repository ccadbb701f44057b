"""The stacked network: fused BatchNorm == nn.BatchNorm1d per model, per-model dropout streams."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models.network import build_network
from models.resolution import ResolvedNetwork, resolve_network
from models.spec import NetworkSpec
from models.stacked import Mode, StackedNetwork, _BatchNorm, dropout_keys, stacked_network

CPU = torch.device("cpu")


def _net(layers: list[dict[str, Any]], n_features: int = 2, n_classes: int = 2
         ) -> ResolvedNetwork:
    return resolve_network(NetworkSpec.model_validate({"layers": layers}), n_features, n_classes)


def _bn_net(**bn: Any) -> ResolvedNetwork:
    return _net([{"type": "dense", "units": 3}, {"type": "batchnorm", "momentum": 0.3, **bn},
                 {"type": "dense", "units": 1, "activation": "sigmoid"}])


def _reference(net: ResolvedNetwork, stacked: StackedNetwork, k: int) -> torch.nn.Sequential:
    ref = build_network(net)
    ref.load_state_dict(stacked.model_state(k))
    return ref


@pytest.mark.parametrize("bn", [{}, {"affine": False}, {"track_running_stats": False}])
def test_fused_batchnorm_is_nn_batchnorm1d_per_model(bn: dict[str, Any]) -> None:
    net = _bn_net(**bn)
    seeds = [3, 4, 5]
    stacked = stacked_network(net, seeds=seeds, init="pytorch", device=CPU)
    bn_layer = stacked.layers[1]
    assert isinstance(bn_layer, _BatchNorm)
    gamma, beta = bn_layer.p("weight"), bn_layer.p("bias")
    if gamma is not None and beta is not None:
        with torch.no_grad():  # each model its own gamma/beta, so a mix-up would show
            gamma.uniform_(0.5, 2.0)
            beta.uniform_(-1.0, 1.0)
    refs = [_reference(net, stacked, k) for k in range(3)]
    for step in range(3):
        x = torch.randn(3, 16, 2) * (step + 1)
        out = stacked(x, "train")
        for k, ref in enumerate(refs):
            ref.train()
            torch.testing.assert_close(out[k], ref(x[k]), rtol=1e-5, atol=1e-6)
    x = torch.randn(3, 7, 2)
    modes: list[tuple[Mode, bool]] = [("eval", False), ("batch_stats", True)]
    for mode, train in modes:
        before = {key: t.clone() for key, t in stacked.stacked_state().items()}
        out = stacked(x, mode)
        for key, t in stacked.stacked_state().items():  # neither mode moves running stats
            assert torch.equal(t, before[key]), (mode, key)
        for k, ref in enumerate(refs):
            ref.train(train)
            state = {key: t.clone() for key, t in ref.state_dict().items()}
            with torch.no_grad():
                expect = ref(x[k])
            ref.load_state_dict(state)  # undo the reference's running-stat update
            torch.testing.assert_close(out[k], expect, rtol=1e-5, atol=1e-6)
    for k, ref in enumerate(refs):
        for key, t in ref.state_dict().items():
            torch.testing.assert_close(stacked.model_state(k)[key], t, rtol=1e-5, atol=1e-6,
                                       msg=key)


def test_dropout_masks_are_per_model_and_independent_of_the_stack() -> None:
    net = _net([{"type": "dense", "units": 64}, {"type": "dropout", "rate": 0.25},
                {"type": "dense", "units": 64}, {"type": "dropout", "rate": 0.25},
                {"type": "dense", "units": 1}])
    x = torch.randn(1, 128, 2)

    def masks(seeds: list[int], epoch: int, step: int) -> list[torch.Tensor]:
        """Which first-dropout-layer units model k zeroes, as a bool tensor per model."""
        stacked = stacked_network(net, seeds=seeds, init="pytorch", device=CPU)
        noise = dropout_keys(seeds, epoch, step + 1)[step]
        h = stacked.layers[0](x.expand(len(seeds), -1, -1), "train", None)
        out = stacked.layers[1](h, "train", noise)
        return [(out[k] == 0) & (h[k] != 0) for k in range(len(seeds))]

    alone = masks([7], 1, 0)[0]
    stacked = masks([3, 7, 9], 1, 0)
    assert torch.equal(stacked[1], alone)  # model 7's mask ignores its neighbours
    assert not torch.equal(stacked[0], stacked[1])
    assert 0.2 < alone.float().mean().item() < 0.3  # rate 0.25
    assert not torch.equal(masks([7], 2, 0)[0], alone)  # a new epoch draws new masks
    assert not torch.equal(masks([7], 1, 1)[0], alone)  # and so does the next step
    keys = dropout_keys([7], 1, 3)
    assert torch.equal(keys, dropout_keys([7], 1, 3))
    assert keys.dtype == torch.int64
    assert int(keys.min()) >= 0
    assert int(keys.max()) < 2**32


def test_dropout_layers_draw_different_masks_and_none_outside_training() -> None:
    net = _net([{"type": "dense", "units": 64}, {"type": "dropout", "rate": 0.5},
                {"type": "dropout", "rate": 0.5}, {"type": "dense", "units": 1}])
    stacked = stacked_network(net, seeds=[1], init="pytorch", device=CPU)
    ones = torch.ones(1, 32, 64)
    noise = dropout_keys([1], 1, 1)[0]
    a = stacked.layers[1](ones, "train", noise)
    b = stacked.layers[2](ones, "train", noise)
    assert not torch.equal(a == 0, b == 0)
    assert set(a.unique().tolist()) == {0.0, 2.0}  # kept units scaled by 1 / (1 - rate)
    for mode in ("eval", "batch_stats"):
        assert torch.equal(stacked.layers[1](ones, mode, None), ones)


def test_state_round_trip_and_optimizer_slots() -> None:
    net = _bn_net()
    stacked = stacked_network(net, seeds=[1, 2], init="keras", device=CPU)
    states = [stacked.model_state(k) for k in range(2)]
    for k, seed in enumerate([1, 2]):
        ref = build_network(net, init="keras", seed=seed).state_dict()
        for key, t in ref.items():
            assert torch.equal(states[k][key], t), key  # initial weights exactly build_network's
    other = stacked_network(net, seeds=[5, 6], init="keras", device=CPU)
    other.load_model_states(states[::-1])
    assert torch.equal(other.model_state(0)["0.weight"], states[1]["0.weight"])
    flat = torch.arange(stacked.flat.numel(), dtype=torch.float32)
    w0, w1 = stacked.slot("0.weight", flat, 0), stacked.slot("0.weight", flat, 1)
    assert w0.shape == w1.shape == (3, 2)
    assert not torch.equal(w0, w1)
    with pytest.raises(ValueError, match="lacks"):
        other.load_model_states([{}, {}])
