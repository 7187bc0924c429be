"""Initialization statistics and the losses (values and gradients) against hand formulas."""

from __future__ import annotations

import math

import pytest
import torch

from workers.config import CONVNET_MIN_SIDE, TrialConfig
from workers.errors import ConfigError
from workers.losses import per_example_loss
from workers.models import ConvNet, _convnet_feature_side, build_model, weight_layers


def _config(**values) -> TrialConfig:
    return TrialConfig.from_mapping({"dataset": "cifar10", **values})


@pytest.mark.parametrize("sigma", [0.001, 0.1, 10.0])
def test_first_layer_std_is_sigma_and_top_is_glorot(sigma):
    model = build_model(_config(sigma=sigma, hidden=512), (3, 8, 8), 10)
    w1 = model.hidden.weight.detach()
    assert w1.shape == (512, 192)
    assert float(w1.mean()) == pytest.approx(0.0, abs=4 * sigma / math.sqrt(w1.numel()))
    assert float(w1.std()) == pytest.approx(sigma, rel=0.02)
    limit = math.sqrt(6 / (512 + 10))
    w2 = model.top.weight.detach()
    assert float(w2.abs().max()) <= limit
    assert float(w2.abs().max()) > 0.95 * limit
    assert float(w2.std()) == pytest.approx(limit / math.sqrt(3), rel=0.05)  # uniform std
    assert model.hidden.bias is None and model.top.bias is None


def test_no_sigma_means_glorot_first_layer():
    model = build_model(_config(sigma=None, hidden=256), (1, 8, 8), 10)
    limit = math.sqrt(6 / (64 + 256))
    assert float(model.hidden.weight.detach().abs().max()) <= limit
    assert float(model.hidden.weight.detach().std()) == pytest.approx(limit / math.sqrt(3), rel=0.05)


def test_same_seed_same_weights_other_seed_differs():
    a = build_model(_config(sigma=1.0, seed=4), (1, 4, 4), 3)
    b = build_model(_config(sigma=1.0, seed=4), (1, 4, 4), 3)
    c = build_model(_config(sigma=1.0, seed=5), (1, 4, 4), 3)
    assert torch.equal(a.hidden.weight, b.hidden.weight)
    assert not torch.equal(a.hidden.weight, c.hidden.weight)


def test_convnet_layers_shapes_and_first_layer_sigma():
    model = build_model(_config(model="convnet", sigma=0.5, activation="relu", hidden=64), (3, 32, 32), 10)
    model.requires_grad_(False)  # statistics of the weights, no autograd
    assert [name for name, _ in weight_layers(model)] == ["conv1", "conv2", "hidden", "top"]
    assert model.hidden.weight.shape == (64, 64 * 5 * 5)
    assert float(model.conv1.weight.std()) == pytest.approx(0.5, rel=0.1)
    assert float(model.conv1.bias.abs().sum()) == 0.0
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    fan_in, fan_out = 32 * 25, 64 * 25
    assert float(model.conv2.weight.abs().max()) <= math.sqrt(6 / (fan_in + fan_out))


def test_convnet_minimum_image_side_is_the_same_everywhere():
    assert CONVNET_MIN_SIDE == 15
    assert _convnet_feature_side(CONVNET_MIN_SIDE) == 1 and _convnet_feature_side(CONVNET_MIN_SIDE - 1) == 0
    model = build_model(_config(model="convnet", hidden=8), (3, 15, 15), 10)
    assert model.hidden.weight.shape == (8, 64)
    assert model(torch.zeros(2, 3, 15, 15)).shape == (2, 10)
    with pytest.raises(ValueError, match="at least 15x15, got 15x14"):
        ConvNet((3, 15, 14), 8, 10, "relu")
    with pytest.raises(ConfigError, match="at least 15x15 pixels and dataset digits has 8x8"):
        TrialConfig.from_mapping({"model": "convnet", "dataset": "digits"})


def test_convnet_over_too_small_images_is_a_config_error_naming_the_table():
    config = _config(model="convnet", data_file="/data/small.parquet")
    with pytest.raises(ConfigError, match=r"at least 15x15 pixels and the images of data_file "
                                          r"/data/small\.parquet are 12x14: use model mlp"):
        build_model(config, (3, 12, 14), 10)
    with pytest.raises(ConfigError, match="images of dataset cifar10 are 14x20"):
        build_model(_config(model="convnet"), (3, 14, 20), 10)


LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], dtype=torch.float64, requires_grad=True)
LABELS = torch.tensor([0, 1])


def _hand_loss(name: str, z: torch.Tensor, labels: torch.Tensor) -> list[float]:
    out = []
    for row, y in zip(z.tolist(), labels.tolist()):
        if name == "cross_entropy":
            out.append(math.log(sum(math.exp(v) for v in row)) - row[y])
        elif name == "hinge":
            out.append(sum(max(0.0, v - row[y] + 1) for v in row) - 1)
        else:
            out.append(sum((v - (1.0 if j == y else 0.0)) ** 2 for j, v in enumerate(row)) / len(row))
    return out


@pytest.mark.parametrize("name", ["cross_entropy", "hinge", "squared"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_loss_values_match_hand_formulas(name, temperature):
    got = per_example_loss(LOGITS, LABELS, name, temperature)
    assert got.tolist() == pytest.approx(_hand_loss(name, LOGITS.detach() / temperature, LABELS))


def test_loss_gradients_match_hand_derivatives():
    z = LOGITS.detach().clone().requires_grad_(True)
    (g_ce,) = torch.autograd.grad(per_example_loss(z, LABELS, "cross_entropy").sum(), z)
    expected = torch.softmax(z.detach(), dim=1) - torch.nn.functional.one_hot(LABELS, 3)
    assert torch.allclose(g_ce, expected)
    (g_sq,) = torch.autograd.grad(per_example_loss(z, LABELS, "squared").sum(), z)
    assert torch.allclose(g_sq, 2 * (z.detach() - torch.nn.functional.one_hot(LABELS, 3)) / 3)
    (g_hinge,) = torch.autograd.grad(per_example_loss(z, LABELS, "hinge").sum(), z)
    # Row 0 (y=0, z=[2,-1,.5]): no violating class -> zero gradient.
    # Row 1 (y=1, z=[.1,.2,3]): classes 0 and 2 violate -> +1 each, the true class -2.
    assert g_hinge.tolist() == [[0.0, 0.0, 0.0], [1.0, -2.0, 1.0]]


def test_cross_entropy_is_stable_for_huge_logits():
    z = torch.tensor([[1e4, 0.0, -1e4]])
    assert torch.isfinite(per_example_loss(z, torch.tensor([1]), "cross_entropy")).all()
    assert float(per_example_loss(z, torch.tensor([1]), "cross_entropy")) == pytest.approx(1e4)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_plain_sgd_takes_the_steps_of_torch_optim_sgd(momentum):
    """PlainSGD against torch.optim.SGD (dampening 0, no Nesterov) over several steps: the
    momentum buffer must decay by ``momentum`` each step, not just accumulate."""
    from workers.sgd import PlainSGD

    torch.manual_seed(0)
    model = build_model(_config(sigma=0.1, hidden=16), (3, 8, 8), 10)
    reference = build_model(_config(sigma=0.1, hidden=16), (3, 8, 8), 10)
    mine = PlainSGD(list(model.parameters()), lr=0.05, momentum=momentum)
    theirs = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=momentum)
    for step in range(5):
        x = torch.randn(32, 192)
        y = torch.randint(0, 10, (32,))
        for net, optimizer in ((model, mine), (reference, theirs)):
            optimizer.zero_grad()
            per_example_loss(net(x), y, "cross_entropy", 1.0).mean().backward()
            optimizer.step()
        for ours, expected in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_convnet_first_convolution_keeps_the_image_size():
    """The paper's conv1 is a 5x5 'same' convolution: 32x32 in, 32x32 out (a padding that is
    off by one would still reach the dense layer as 64 x 5 x 5, so check conv1 itself)."""
    model = build_model(_config(model="convnet", hidden=8), (3, 32, 32), 10)
    assert model.conv1(torch.zeros(2, 3, 32, 32)).shape == (2, 32, 32, 32)
    assert model.hidden.weight.shape == (8, 64 * 5 * 5)
