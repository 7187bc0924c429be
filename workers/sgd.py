"""Plain SGD with optional heavy-ball momentum, in a few foreach kernels per step.

Same update as ``torch.optim.SGD`` (dampening 0, no Nesterov, no weight decay):
``buf = g`` on the first step, then ``buf = momentum * buf + g``; ``p -= lr * buf``.
Written out because it is all the paper needs, it issues fewer kernels per step, and
constructing ``torch.optim.SGD`` imports ``torch._dynamo`` (2-3 s in every fresh process,
which every Ray trial is).
"""

from __future__ import annotations

from typing import Any

import torch


class PlainSGD:
    def __init__(self, params: list[torch.nn.Parameter], lr: float, momentum: float = 0.0):
        self.params = list(params)
        self.lr = lr
        self.momentum = momentum
        self.buffers: list[torch.Tensor] | None = None  # momentum buffers, created on the first step

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        # A block, not a decorator: mutmut (tests/mutation) skips decorated functions.
        with torch.no_grad():
            grads = [p.grad for p in self.params]
            if self.momentum == 0.0:
                torch._foreach_add_(self.params, grads, alpha=-self.lr)
                return
            if self.buffers is None:
                self.buffers = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads)
            torch._foreach_add_(self.params, self.buffers, alpha=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum,
                "buffers": None if self.buffers is None else [b.detach().cpu() for b in self.buffers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.momentum = state["lr"], state["momentum"]
        buffers = state["buffers"]
        self.buffers = None if buffers is None else [
            b.to(p.device, p.dtype) for b, p in zip(buffers, self.params)]
