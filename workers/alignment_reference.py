"""Slow, obviously-correct alignment: a per-example autograd loop, as in the authors' code.

Used by the tests (to check ``workers.alignment``) and by the benchmark (as the baseline).
Never used in training.
"""

from __future__ import annotations

import torch
from torch import nn

from workers import contract
from workers.losses import per_example_loss
from workers.models import weight_layers


def omega_of_vectors(vectors: list[torch.Tensor]) -> float:
    """Omega straight from the definition; NaN when undefined (n < 2 or mean norm 0)."""
    v = torch.stack([t.detach().flatten().double() for t in vectors])  # (n, P)
    n = v.shape[0]
    mu = v.norm(dim=1).mean()
    if n < 2 or mu == 0:
        return float("nan")
    u = v / mu
    return float((u.sum(dim=0).square().sum() - u.square().sum()) / (n * (n - 1)))


def per_example_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                          loss: str, temperature: float) -> dict[str, list[float]]:
    """Per-class Omega of every quantity ``gradient_alignment`` reports, one example at a time.

    Returns:
        metric name -> list of K per-class values (NaN = undefined).
    """
    layers = weight_layers(model)
    vectors: dict[str, list[list[torch.Tensor]]] = {}
    for i in range(x.shape[0]):
        representation: list[torch.Tensor] = []
        handle = model.top.register_forward_hook(lambda m, a, o: representation.append(a[0]))
        logits = model(x[i:i + 1])
        handle.remove()
        example_loss = per_example_loss(logits, y[i:i + 1], loss, temperature).sum()
        params = [p for _, layer in layers for p in layer.parameters()]
        grads = torch.autograd.grad(example_loss, params + [logits])
        example: dict[str, torch.Tensor] = {}
        offset = 0
        for name, layer in layers:
            count = len(list(layer.parameters()))
            example[contract.align_grad_layer(name)] = torch.cat([g.flatten() for g in grads[offset:offset + count]])
            offset += count
        example[contract.ALIGN_GRAD] = torch.cat([g.flatten() for g in grads[:-1]])
        example[contract.ALIGN_GRAD_LOGITS] = grads[-1]
        example[contract.ALIGN_REP] = representation[0].detach()
        for name, vector in example.items():
            vectors.setdefault(name, [[] for _ in range(num_classes)])[int(y[i])].append(vector.detach())
    return {name: [omega_of_vectors(v) if v else float("nan") for v in per_class]
            for name, per_class in vectors.items()}
