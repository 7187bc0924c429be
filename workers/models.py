"""The paper's two architectures and their initialization.

Layer (module) names are part of the metric contract: gradient alignment is reported as
``align/grad_<name>`` for each weight-bearing layer, and ``hidden`` is always the first dense
layer (the one the ``dyn/*_hidden`` metrics watch).

- ``mlp``: x (flattened) -> ``hidden`` -> activation -> ``top`` -> logits; no biases.
- ``convnet``: ``conv1`` 5x5x32 'same' -> act -> max-pool 3x3/2 -> ``conv2`` 5x5x64 'valid'
  -> act -> max-pool 3x3/2 -> ``hidden`` dense -> act -> ``top`` dense; with biases (zero).

Every weight is glorot-uniform (limit sqrt(6 / (fan_in + fan_out))) except the first layer's
when ``sigma`` is given: Normal(0, sigma^2). Weights are drawn on the CPU from one seeded
generator, so a seed gives the same initial network on every device.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workers.config import CONVNET_MIN_SIDE, TrialConfig, convnet_size_problem
from workers.config import convnet_feature_side as _convnet_feature_side
from workers.errors import ConfigError


class Sin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


_ACTIVATIONS = {"sin": Sin, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "linear": nn.Identity}


class MLP(nn.Module):
    """Two dense layers without biases: ``top(act(hidden(x)))``.

    Input ``(B, d)`` flattened standardized images; output ``(B, K)`` logits.
    """

    def __init__(self, in_features: int, hidden: int, num_classes: int, activation: str):
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden, bias=False)  # W1: (hidden, d)
        self.act = _ACTIVATIONS[activation]()
        self.top = nn.Linear(hidden, num_classes, bias=False)     # W2: (K, hidden)

    def first_layer(self) -> nn.Module:
        return self.hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.act(self.hidden(x)))  # (B, K)


class ConvNet(nn.Module):
    """The paper's ConvNet. Input ``(B, C, H, W)``; output ``(B, K)`` logits.

    Pooling is 'valid' (no padding), so a 32x32 image reaches ``hidden`` as 64 x 5 x 5 and a
    15x15 one (the smallest, ``CONVNET_MIN_SIDE``) as 64 x 1 x 1.
    """

    def __init__(self, image_shape: tuple[int, int, int], hidden: int, num_classes: int,
                 activation: str):
        super().__init__()
        channels, height, width = image_shape
        self.conv1 = nn.Conv2d(channels, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5)
        self.act = _ACTIVATIONS[activation]()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)
        side_h, side_w = _convnet_feature_side(height), _convnet_feature_side(width)
        if side_h < 1 or side_w < 1:
            raise ValueError(f"convnet needs images of at least {CONVNET_MIN_SIDE}x{CONVNET_MIN_SIDE}, "
                             f"got {height}x{width}")
        self.hidden = nn.Linear(64 * side_h * side_w, hidden)
        self.top = nn.Linear(hidden, num_classes)

    def first_layer(self) -> nn.Module:
        return self.conv1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))   # (B, 32, H', W')
        x = self.pool(self.act(self.conv2(x)))   # (B, 64, h, w)
        x = self.act(self.hidden(x.flatten(1)))  # (B, hidden)
        return self.top(x)                       # (B, K)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The weight-bearing layers ``(name, module)`` in forward order (Linear and Conv2d)."""
    return [(name, m) for name, m in model.named_children() if isinstance(m, (nn.Linear, nn.Conv2d))]


def glorot_uniform_(weight: torch.Tensor, generator: torch.Generator) -> None:
    """Glorot/Xavier uniform in place, fans as in TF/Keras (receptive field included)."""
    fan_out, fan_in = weight.shape[0], weight.shape[1]
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    limit = math.sqrt(6.0 / ((fan_in + fan_out) * receptive))
    with torch.no_grad():
        weight.uniform_(-limit, limit, generator=generator)


def build_model(config: TrialConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The model of ``config``, initialized from ``config.seed`` on the CPU.

    Args:
        image_shape: ``(C, H, W)`` of the standardized images.
        num_classes: K, the width of the logits.

    Raises:
        ConfigError: a convnet over images smaller than ``CONVNET_MIN_SIDE`` (e.g. from a
            ``data_file`` table); the config alone cannot tell.
    """
    _, height, width = image_shape
    if config.model == "convnet":
        source = f"data_file {config.data_file}" if config.data_file else f"dataset {config.dataset}"
        problem = convnet_size_problem(height, width, images=f"the images of {source} are",
                                       remedy="larger images")
        if problem:
            raise ConfigError([problem])
    if config.model == "mlp":
        model: nn.Module = MLP(math.prod(image_shape), config.hidden, num_classes, config.activation)
    else:
        model = ConvNet(image_shape, config.hidden, num_classes, config.activation)
    generator = torch.Generator().manual_seed(config.seed)
    first = model.first_layer()
    for _, layer in weight_layers(model):
        if layer is first and config.sigma is not None:
            with torch.no_grad():
                layer.weight.normal_(0.0, config.sigma, generator=generator)
        else:
            glorot_uniform_(layer.weight, generator)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return model
