"""models.optim: fast_step and fast_backward are bitwise torch's own step and backward, for
every optimizer the spec allows, and fall back to the public calls without torch's private
APIs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models.optim import fast_backward, fast_step, make_optimizer
from models.resolution import resolve_job
from models.spec import JobSpec, OptimizerSpec
from models.stacked import StackedNetwork, dropout_keys, stacked_network

CPU = torch.device("cpu")

# Every optimizer name of OptimizerSpec, with and without the options it has
OPTIMIZERS: list[dict[str, Any]] = [
    {"name": "adam"},
    {"name": "adam", "weight_decay": 0.01, "betas": (0.8, 0.99), "eps": 1e-8},
    {"name": "adamw"},
    {"name": "adamw", "weight_decay": 0.05},
    {"name": "sgd", "lr": 0.05},
    {"name": "sgd", "lr": 0.05, "weight_decay": 0.01},
    {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"name": "rmsprop"},
    {"name": "rmsprop", "momentum": 0.5, "weight_decay": 0.01, "alpha": 0.8},
]
FAST = ("adam", "adamw")  # the optimizers fast_step replaces torch.optim's step for
LRS = (1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 1e-4)  # changed between steps, as the loop does per epoch


def test_the_cases_cover_every_optimizer_the_spec_allows() -> None:
    allowed = OptimizerSpec.model_fields["name"].annotation.__args__  # type: ignore[union-attr]
    assert {o["name"] for o in OPTIMIZERS} == set(allowed)


def _grad(p: torch.Tensor, i: int) -> torch.Tensor:
    """A gradient that depends on the parameters (as a real one does) and on the step."""
    g = torch.Generator().manual_seed(100 + i)
    return torch.sin(p.detach() * (i + 1)) + torch.randn(p.shape, generator=g)


def _train(o: OptimizerSpec, step_with: str) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    """len(LRS) steps from the same start, with torch.optim's step or fast_step."""
    p = torch.randn(3, 70, generator=torch.Generator().manual_seed(0)).requires_grad_()
    opt = make_optimizer([p], o)
    step = opt.step if step_with == "torch" else fast_step(opt)
    for i, lr in enumerate(LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = _grad(p, i)
        step()
    return p, opt


def _assert_same(a: tuple[torch.Tensor, torch.optim.Optimizer],
                 b: tuple[torch.Tensor, torch.optim.Optimizer]) -> None:
    (pa, oa), (pb, ob) = a, b
    assert torch.equal(pa, pb)
    sa, sb = oa.state[pa], ob.state[pb]
    assert sa.keys() == sb.keys()  # empty only for sgd without momentum
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert sa[key] == sb[key], key


@pytest.mark.parametrize("options", OPTIMIZERS, ids=lambda o: "-".join(map(str, o.values())))
def test_fast_step_is_bitwise_torchs_step(options: dict[str, Any]) -> None:
    o = OptimizerSpec.model_validate(options)
    _assert_same(_train(o, "fast_step"), _train(o, "torch"))


@pytest.mark.parametrize("name", FAST)
def test_fast_step_calls_torchs_step_only_for_the_first(name: str) -> None:
    """The fast path is what runs: torch.optim only creates the state."""
    p = torch.zeros(10, requires_grad=True)
    opt = make_optimizer([p], OptimizerSpec(name=name))  # type: ignore[arg-type]
    assert opt.param_groups[0]["fused"]
    calls = []
    torch_step = opt.step

    def counted_step(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return torch_step(*a, **kw)
    opt.step = counted_step  # type: ignore[method-assign]
    step = fast_step(opt)
    for i in range(4):
        p.grad = _grad(p, i)
        step()
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_other_optimizers_step_with_torchs_own(name: str) -> None:
    opt = make_optimizer([torch.zeros(3, requires_grad=True)], OptimizerSpec(name=name))  # type: ignore[arg-type]
    assert fast_step(opt) == opt.step


@pytest.mark.parametrize(("name", "kernel"), [("adam", "_fused_adam_"), ("adamw", "_fused_adamw_"),
                                          ("adam", "_foreach_add_")])
def test_fast_step_falls_back_without_the_private_kernel(
        monkeypatch: pytest.MonkeyPatch, name: str, kernel: str) -> None:
    """A torch without the kernel fast_step calls: fast_step is torch.optim's step. The kernel is
    hidden while fast_step decides (torch.optim's own fused step needs it to run)."""
    o = OptimizerSpec(name=name)  # type: ignore[arg-type]
    p = torch.randn(3, 70, generator=torch.Generator().manual_seed(0)).requires_grad_()
    opt = make_optimizer([p], o)
    with monkeypatch.context() as m:
        m.delattr(torch, kernel)
        step = fast_step(opt)
    assert step == opt.step
    for i, lr in enumerate(LRS):
        opt.param_groups[0]["lr"] = lr
        p.grad = _grad(p, i)
        step()
    _assert_same((p, opt), _train(o, "torch"))


# ---------------------------------------------------------------------------- backward


def _stacked() -> StackedNetwork:
    spec = JobSpec.model_validate({
        "dataset": {"id": "t"}, "training": {"epochs": 1},
        "network": {"layers": [{"type": "dense", "units": 16}, {"type": "batchnorm"},
                               {"type": "activation", "activation": "relu"},
                               {"type": "dropout", "rate": 0.3}, {"type": "dense", "units": 1}]}})
    net = resolve_job(spec, n_features=5, n_classes=2, n_rows=100).network
    return stacked_network(net, seeds=[1, 2, 3], init="pytorch", device=CPU)


def _losses(model: StackedNetwork, i: int) -> torch.Tensor:
    """(K,) per-model mean losses of one training step, as the loop computes them."""
    g = torch.Generator().manual_seed(i)
    x = torch.randn(3, 40, 5, generator=g)
    y = (torch.rand(3, 40, generator=g) > 0.5).float()
    z = model.forward(x, "train", dropout_keys([1, 2, 3], 1, 2)[i]).squeeze(-1)
    return F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(1)


def _grads(backward: Any) -> list[torch.Tensor]:
    """The flat gradient after one step's backward, and after a second one accumulating."""
    model = _stacked()
    ones = torch.ones(3)
    out = []
    for i in range(2):
        backward(_losses(model, i), ones)
        assert model.flat.grad is not None
        out.append(model.flat.grad.clone())
    return out


def _torch_backward(loss: torch.Tensor, grad: torch.Tensor) -> None:
    loss.backward(grad)


def test_fast_backward_is_bitwise_loss_backward() -> None:
    fast, ref = _grads(fast_backward()), _grads(_torch_backward)
    assert all(g.abs().sum() > 0 for g in ref)
    for a, b in zip(fast, ref, strict=True):
        assert torch.equal(a, b)


def _count_public_backward(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    public: Callable[..., None] = torch.Tensor.backward

    def counted(self: torch.Tensor, *a: Any, **kw: Any) -> None:
        calls.append(1)
        public(self, *a, **kw)
    monkeypatch.setattr(torch.Tensor, "backward", counted)
    return calls


def test_fast_backward_bypasses_the_public_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_public_backward(monkeypatch)
    _grads(fast_backward())
    assert calls == []


def test_fast_backward_falls_back_without_the_private_engine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch without Variable._execution_engine.run_backward: loss.backward(grad), the same
    gradients. The engine is hidden while fast_backward decides (the public call needs it)."""
    with monkeypatch.context() as m:
        m.delattr(torch.autograd.Variable, "_execution_engine")
        backward = fast_backward()
    calls = _count_public_backward(monkeypatch)
    fallback = _grads(backward)
    assert len(calls) == 2
    monkeypatch.undo()
    for a, b in zip(fallback, _grads(_torch_backward), strict=True):
        assert torch.equal(a, b)
