"""The optimizer of a stacked model's one flat parameter, its step and the loss's backward.

`fast_step` and `fast_backward` call what torch.optim and torch.autograd call underneath,
without their per-call Python overhead (together about a fifth of a small model's step), and
give bitwise the same result (tests/models/test_optim.py checks it). Both rest on private torch
APIs: where one is missing they fall back to the public call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from models.spec import CosineSchedule, OptimizerSpec, PlateauSchedule, StepSchedule, TrainingSpec


def make_optimizer(params: list[torch.Tensor], o: OptimizerSpec) -> torch.optim.Optimizer:
    """Elementwise optimizers only (stacked models stay independent); fused where torch has it."""
    def build(**speed: bool) -> torch.optim.Optimizer:
        if o.name in ("adam", "adamw"):
            cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
            return cls(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                       **speed)
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                   weight_decay=o.weight_decay, **speed)
        return torch.optim.RMSprop(params, lr=o.lr, alpha=o.alpha, eps=o.eps,
                                   weight_decay=o.weight_decay, momentum=o.momentum, foreach=True)
    if o.name == "rmsprop":
        return build()
    try:
        return build(fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device without fused kernels
        return build(foreach=True)


def fast_step(opt: torch.optim.Optimizer) -> Callable[[], Any]:
    """`opt.step`, for fused Adam/AdamW over one tensor without torch.optim's per-call Python
    overhead (a sixth of a small model's step): the same kernel with the same arguments as
    Adam's own fused path, so the result is bitwise the same. Any other optimizer, or a torch
    without the private kernels, gets `opt.step` itself."""
    group = opt.param_groups[0]
    if not isinstance(opt, torch.optim.Adam) or not group.get("fused") \
            or len(opt.param_groups) != 1 or len(group["params"]) != 1 or group["amsgrad"]:
        return opt.step
    name = "_fused_adamw_" if group.get("decoupled_weight_decay") else "_fused_adam_"
    kernel = getattr(torch, name, None)
    add_ = getattr(torch, "_foreach_add_", None)
    if kernel is None or add_ is None:
        return opt.step
    p = group["params"][0]

    def step() -> None:
        state = opt.state.get(p)
        if not state or p.grad is None:
            opt.step()  # first step: torch.optim creates the state
            return
        steps = [state["step"]]
        add_(steps, 1)
        kernel([p], [p.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], steps,
               amsgrad=False, lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
               weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
               grad_scale=None, found_inf=None)
    return step


def fast_backward() -> Callable[[torch.Tensor, torch.Tensor], None]:
    """`loss.backward(grad)` without torch.autograd.backward's Python argument checks (a
    twentieth of a small model's step): the same engine call with the arguments it passes.
    The caller passes a gradient of the loss's shape, dtype and device."""
    engine = getattr(torch.autograd.Variable, "_execution_engine", None)
    run = getattr(engine, "run_backward", None)
    if run is None:  # a torch without it: the public call
        return lambda loss, grad: loss.backward(grad)

    def backward(loss: torch.Tensor, grad: torch.Tensor) -> None:
        run((loss,), (grad,), False, False, (), allow_unreachable=True, accumulate_grad=True)
    return backward


def scheduled_lr(t: TrainingSpec, epoch: int, plateau_lr: float | None) -> float:
    """The lr used during `epoch` (1-based); step and cosine are closed forms of the epoch."""
    base, s = t.optimizer.lr, t.lr_schedule
    if isinstance(s, StepSchedule):
        return base * s.gamma ** ((epoch - 1) // s.step_size)
    if isinstance(s, CosineSchedule):
        t_max = s.t_max or t.epochs
        done = min(epoch - 1, t_max)  # stays at eta_min after t_max
        return s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * done / t_max)) / 2
    if isinstance(s, PlateauSchedule):
        return base if plateau_lr is None else plateau_lr
    return base
