"""Fast (Gram) alignment against the per-example autograd loop, for every model/activation/loss."""

from __future__ import annotations

import math

import pytest
import torch

from workers import contract
from workers.alignment import (gradient_alignment, mean_over_classes, omega_from_gram,
                               representation_alignment)
from workers.alignment_reference import omega_of_vectors, per_example_alignment
from workers.config import ACTIVATIONS, LOSSES, TrialConfig
from workers.models import build_model


def _assert_same(fast: torch.Tensor, slow: list[float]) -> None:
    for f, s in zip(fast.tolist(), slow):
        if math.isnan(s):
            assert math.isnan(f)
        else:
            assert f == pytest.approx(s, rel=1e-5, abs=1e-9)


def _problem(model: str, activation: str, loss: str, sigma: float | None, image_shape, classes=3, n=12):
    config = TrialConfig.from_mapping({
        "model": model, "activation": activation, "loss": loss, "sigma": sigma, "hidden": 16,
        "dataset": "cifar10", "temperature": 0.7 if loss == "cross_entropy" else 1.0, "seed": 3})
    net = build_model(config, image_shape, classes).double()
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(n, *image_shape, generator=generator, dtype=torch.float64)
    if model == "mlp":
        x = x.flatten(1)
    y = torch.arange(n) % classes
    return config, net, x, y


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_alignment_matches_per_example_loop(activation, loss):
    config, net, x, y = _problem("mlp", activation, loss, 0.5, (1, 3, 3))
    fast = gradient_alignment(net, x, y, 3, config.loss, config.temperature)
    slow = per_example_alignment(net, x, y, 3, config.loss, config.temperature)
    assert set(fast) == {contract.ALIGN_REP, contract.ALIGN_GRAD_LOGITS, contract.ALIGN_GRAD,
                         "align/grad_hidden", "align/grad_top"}
    assert set(fast) == set(slow)
    for name in fast:
        _assert_same(fast[name], slow[name])


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ["relu", "sin"])
def test_convnet_alignment_matches_per_example_loop(activation, loss):
    config, net, x, y = _problem("convnet", activation, loss, None, (2, 20, 20), n=9)
    fast = gradient_alignment(net, x, y, 3, config.loss, config.temperature)
    slow = per_example_alignment(net, x, y, 3, config.loss, config.temperature)
    assert {"align/grad_conv1", "align/grad_conv2", "align/grad_hidden", "align/grad_top"} <= set(fast)
    assert set(fast) == set(slow)
    for name in fast:
        _assert_same(fast[name], slow[name])


def test_representation_alignment_on_test_probe_matches_definition():
    config, net, x, y = _problem("mlp", "sin", "cross_entropy", 1.0, (1, 3, 3))
    fast = representation_alignment(net, x, y, 3)
    hidden = torch.sin(x @ net.hidden.weight.T)
    slow = [omega_of_vectors(list(hidden[y == c])) for c in range(3)]
    _assert_same(fast, slow)


def test_omega_is_one_for_identical_and_zero_for_orthogonal_vectors():
    same = torch.ones(4, 5)
    assert float(omega_from_gram(same @ same.T)) == pytest.approx(1.0)
    orthogonal = torch.eye(4) * 3.0
    assert float(omega_from_gram(orthogonal @ orthogonal.T)) == pytest.approx(0.0)


def test_undefined_omega_is_nan_and_left_out_of_the_class_mean():
    zeros = torch.zeros(3, 3)
    assert math.isnan(float(omega_from_gram(zeros)))
    assert math.isnan(float(omega_from_gram(torch.ones(1, 1))))  # a single vector
    assert mean_over_classes(torch.tensor([0.2, float("nan"), 0.4])) == pytest.approx(0.3)
    assert mean_over_classes(torch.tensor([float("nan"), float("nan")])) is None


def test_hinge_loss_fully_satisfied_gives_missing_gradient_alignment():
    """A satisfied hinge loss has zero gradients: alignment is undefined, not a crash or NaN mean."""
    config, net, x, y = _problem("mlp", "relu", "hinge", 0.5, (1, 3, 3))
    with torch.no_grad():
        net.top.weight.zero_()
        net.top.weight[:, 0] = 0.0
    # Make every example's true logit win by a margin > 1: logits = 100 * onehot(y).
    x = torch.zeros_like(x)
    x[:, :3] = torch.nn.functional.one_hot(y, 3).double()
    with torch.no_grad():
        net.hidden.weight.zero_()
        net.hidden.weight[:3, :3] = torch.eye(3, dtype=torch.float64)
        net.top.weight[:, :3] = 100 * torch.eye(3, dtype=torch.float64)
    fast = gradient_alignment(net, x, y, 3, "hinge", 1.0)
    assert torch.isnan(fast[contract.ALIGN_GRAD]).all()
    assert mean_over_classes(fast[contract.ALIGN_GRAD]) is None
    assert mean_over_classes(fast[contract.ALIGN_REP]) is not None


def test_omega_from_gram_works_on_a_batch_of_grams_and_returns_float64():
    """``(..., n, n)`` in, ``(...)`` float64 out: each Gram matrix of a batch gives what it
    gives alone; two vectors (n = 2) are the smallest set with a defined Omega."""
    torch.manual_seed(0)
    vectors = torch.randn(3, 4, 5)                       # 3 sets of 4 vectors in R^5
    grams = (vectors @ vectors.transpose(-1, -2)).float()
    batched = omega_from_gram(grams)
    assert batched.shape == (3,) and batched.dtype == torch.float64
    for index in range(3):
        alone = omega_from_gram(grams[index])
        assert alone.shape == () and float(alone) == pytest.approx(float(batched[index]))
        assert float(alone) == pytest.approx(omega_of_vectors(vectors[index].double()), rel=1e-6)
    pair = torch.tensor([[1.0, 0.5], [0.5, 1.0]])          # two unit vectors, cosine 0.5
    assert float(omega_from_gram(pair)) == pytest.approx(0.5)
    assert torch.isnan(omega_from_gram(torch.ones(1, 1)))  # one vector: undefined
