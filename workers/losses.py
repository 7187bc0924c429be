"""The paper's three losses, per example, with an optional temperature on the logits.

Every function maps logits ``(..., B, K)`` and integer labels ``(B,)`` to per-example losses
``(..., B)``; callers average over the batch (training) or sum (per-example gradients).
Leading dimensions are kept so that several models can share one call later.
"""

from __future__ import annotations

import torch

from workers.config import LOSSES


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy ``logsumexp(z) - z_y`` (PyTorch's fused kernel; stable for huge logits)."""
    classes = logits.shape[-1]
    flat_labels = labels.expand(*logits.shape[:-1]).reshape(-1)
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, classes), flat_labels, reduction="none")
    return losses.reshape(logits.shape[:-1])


def hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-class hinge ``sum_j max(0, z_j - z_y + 1) - 1``.

    The ``j = y`` term is always ``max(0, 1) = 1``; subtracting 1 removes it, so the loss
    is 0 exactly when every other logit is at least 1 below the true one.
    """
    true_logit = logits.gather(-1, labels.expand(*logits.shape[:-1]).unsqueeze(-1))
    return torch.clamp(logits - true_logit + 1.0, min=0.0).sum(dim=-1) - 1.0


def squared(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Squared loss against one-hot targets, averaged over the K classes."""
    onehot = torch.nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return (logits - onehot).pow(2).mean(dim=-1)


_LOSS_FUNCTIONS = {"cross_entropy": cross_entropy, "hinge": hinge, "squared": squared}
assert set(_LOSS_FUNCTIONS) == set(LOSSES)


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str,
                     temperature: float = 1.0) -> torch.Tensor:
    """Per-example loss of ``logits / temperature``.

    Args:
        logits: ``(..., B, K)`` float.
        labels: ``(B,)`` int64 class ids.
        loss: one of ``cross_entropy``, ``hinge``, ``squared``.
        temperature: divides the logits first (the paper's Section 4 remedy); 1 = none.

    Returns:
        ``(..., B)`` losses.
    """
    if temperature != 1.0:
        logits = logits / temperature
    return _LOSS_FUNCTIONS[loss](logits, labels)
