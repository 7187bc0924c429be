"""Per-class alignment (the paper's Omega) of gradients and representations, from Gram matrices.

For vectors v_1..v_n of one class, with mu = mean_i ||v_i|| and u_i = v_i / mu,

    Omega = (||sum_i u_i||^2 - sum_i ||u_i||^2) / (n (n - 1))
          = (sum_ij G_ij - trace G) / (mu^2 n (n - 1)),   G_ij = <v_i, v_j>,

the mean pairwise inner product after scaling by the mean norm: 1 when all vectors are
equal, about 0 when they are mutually orthogonal. Only the Gram matrix G is needed.

For a dense layer with input x_i and output gradient delta_i the per-example weight gradient
is delta_i x_i^T, so <g_i, g_j> = (x_i . x_j)(delta_i . delta_j) (+ delta_i . delta_j for a
bias): G is the elementwise product of two n x n Gram matrices and no per-example gradient is
ever formed. Convolutions materialize their per-example gradients (one class at a time).
The Grams of all layers add up to the Gram of the whole parameter vector (``align/grad``).

``workers.alignment_reference`` computes the same values with a per-example autograd loop;
the tests hold the two together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from workers import contract
from workers.losses import per_example_loss
from workers.models import weight_layers

# Grams are accumulated in float64: sums of n^2 products, then a difference of two such sums.
GRAM_DTYPE = torch.float64


def omega_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """Omega of the vectors whose Gram matrix is ``gram``.

    Args:
        gram: ``(..., n, n)`` symmetric Gram matrices.

    Returns:
        ``(...)`` float64; NaN where Omega is undefined (n < 2, or every vector is zero).
    """
    gram = gram.to(GRAM_DTYPE)
    n = gram.shape[-1]
    squared_norms = gram.diagonal(dim1=-2, dim2=-1).clamp(min=0.0)  # (..., n)
    mean_norm = squared_norms.sqrt().mean(dim=-1)                   # mu, (...)
    off_diagonal_sum = gram.sum(dim=(-2, -1)) - squared_norms.sum(dim=-1)
    if n < 2:
        return torch.full_like(mean_norm, float("nan"))
    omega = off_diagonal_sum / (mean_norm.square() * (n * (n - 1)))
    return torch.where(mean_norm > 0, omega, torch.full_like(omega, float("nan")))


def mean_over_classes(per_class: torch.Tensor) -> float | None:
    """Mean of the defined (non-NaN) per-class values; None when none is defined."""
    defined = per_class[~torch.isnan(per_class)]
    return float(defined.mean()) if defined.numel() else None


@dataclass
class ProbePass:
    """What one forward/backward pass over a probe batch captures (all detached).

    ``inputs[name]`` / ``output_grads[name]`` are the input and the gradient of the summed
    per-example loss w.r.t. the output of each weight-bearing layer; a row belongs to one
    example (no layer mixes examples), so row i is example i's own gradient.
    """

    inputs: dict[str, torch.Tensor]        # (n, in) dense, (n, C, H, W) conv
    output_grads: dict[str, torch.Tensor]  # (n, out) dense, (n, C', H', W') conv
    layers: dict[str, nn.Module]
    logits_grad: torch.Tensor              # (n, K)
    representation: torch.Tensor           # (n, hidden): the input of ``top``


def probe_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str,
               temperature: float) -> ProbePass:
    """Forward ``x`` (n examples), backward the *sum* of per-example losses, capture per layer."""
    layers = dict(weight_layers(model))
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(module, args, output):
            inputs[name] = args[0].detach()
            outputs[name] = output
        return hook

    handles = [layer.register_forward_hook(capture(name)) for name, layer in layers.items()]
    try:
        with torch.enable_grad():
            logits = model(x)
            total = per_example_loss(logits, y, loss, temperature).sum()
            names = list(layers)
            grads = torch.autograd.grad(total, [outputs[n] for n in names] + [logits])
    finally:
        for handle in handles:
            handle.remove()
    return ProbePass(
        inputs=inputs,
        output_grads={n: g.detach() for n, g in zip(names, grads[:-1])},
        layers=layers,
        logits_grad=grads[-1].detach(),
        representation=inputs["top"],
    )


def layer_gradient_gram(layer: nn.Module, inputs: torch.Tensor, output_grads: torch.Tensor) -> torch.Tensor:
    """Gram matrix ``(n, n)`` of the per-example gradients of one layer's parameters."""
    if isinstance(layer, nn.Linear):
        x = inputs.to(GRAM_DTYPE).flatten(1)
        delta = output_grads.to(GRAM_DTYPE)
        input_gram = x @ x.T
        if layer.bias is not None:
            input_gram = input_gram + 1.0  # the bias sees a constant input of 1
        return input_gram * (delta @ delta.T)
    if isinstance(layer, nn.Conv2d):
        per_example = per_example_conv_gradients(layer, inputs, output_grads).to(GRAM_DTYPE)
        return per_example @ per_example.T
    raise TypeError(f"no per-example gradient rule for {type(layer).__name__}")


def per_example_conv_gradients(layer: nn.Conv2d, inputs: torch.Tensor,
                               output_grads: torch.Tensor) -> torch.Tensor:
    """Per-example gradients ``(n, P)`` of a Conv2d's weight (and bias), flattened.

    Args:
        inputs: ``(n, C_in, H, W)`` the layer's input.
        output_grads: ``(n, C_out, H', W')`` gradient of each example's loss w.r.t. the output.
    """
    patches = F.unfold(inputs, layer.kernel_size, dilation=layer.dilation,
                       padding=layer.padding, stride=layer.stride)  # (n, C_in*kh*kw, L)
    delta = output_grads.flatten(2)                                  # (n, C_out, L)
    weight_grads = torch.einsum("nol,nkl->nok", delta, patches).flatten(1)  # (n, C_out*C_in*kh*kw)
    if layer.bias is None:
        return weight_grads
    return torch.cat([weight_grads, delta.sum(dim=2)], dim=1)


def _class_rows(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    return [torch.nonzero(labels == c).flatten() for c in range(num_classes)]


def gradient_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                       loss: str, temperature: float) -> dict[str, torch.Tensor]:
    """Per-class Omega of gradients and of the hidden representation on a training probe.

    Args:
        x: ``(n, ...)`` probe inputs; y: ``(n,)`` their (training) labels.

    Returns:
        metric name -> ``(K,)`` float64 per-class Omega (NaN = undefined): ``align/rep``,
        ``align/grad_logits``, ``align/grad_<layer>`` per weight-bearing layer, ``align/grad``.
    """
    captured = probe_pass(model, x, y, loss, temperature)
    per_class: dict[str, list[torch.Tensor]] = {}

    def add(name: str, gram: torch.Tensor) -> None:
        per_class.setdefault(name, []).append(omega_from_gram(gram))

    for rows in _class_rows(y, num_classes):
        total = None
        for name, layer in captured.layers.items():
            gram = layer_gradient_gram(layer, captured.inputs[name][rows], captured.output_grads[name][rows])
            add(contract.align_grad_layer(name), gram)
            total = gram if total is None else total + gram
        add(contract.ALIGN_GRAD, total)
        logits_grad = captured.logits_grad[rows].to(GRAM_DTYPE)
        add(contract.ALIGN_GRAD_LOGITS, logits_grad @ logits_grad.T)
        representation = captured.representation[rows].to(GRAM_DTYPE)
        add(contract.ALIGN_REP, representation @ representation.T)
    return {name: torch.stack(values) for name, values in per_class.items()}


def representation_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                             num_classes: int) -> torch.Tensor:
    """Per-class Omega ``(K,)`` of the hidden representation (input of ``top``) of ``x``."""
    captured: list[torch.Tensor] = []
    handle = model.top.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    try:
        # A block, not a decorator: mutmut (tests/mutation) skips decorated functions.
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    representation = captured[0].to(GRAM_DTYPE)
    return torch.stack([
        omega_from_gram(representation[rows] @ representation[rows].T)
        for rows in _class_rows(y, num_classes)
    ])


def measure_alignment(model: nn.Module, data, loss: str, temperature: float
                      ) -> tuple[dict[str, float], dict[str, list[float | None]]]:
    """Every alignment metric of ``model`` on ``data``'s probes (a ``DeviceDataset``): gradient
    and representation alignment on the training probe, representation alignment on the test
    probe. Returns (metric -> mean over the defined classes, metric -> K per-class values with
    None where undefined); a metric undefined for every class has no mean."""
    per_class = gradient_alignment(
        model, data.x_train[data.probe_train], data.y_train[data.probe_train],
        data.num_classes, loss, temperature)
    per_class[contract.ALIGN_REP_TEST] = representation_alignment(
        model, data.x_test[data.probe_test], data.y_test[data.probe_test], data.num_classes)
    means: dict[str, float] = {}
    listed: dict[str, list[float | None]] = {}
    for name, values in per_class.items():
        mean = mean_over_classes(values)
        if mean is not None:
            means[name] = mean
        listed[name] = [None if math.isnan(v) else float(v) for v in values.tolist()]
    return means, listed
