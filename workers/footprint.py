"""How much device memory a pack needs, and how much a GPU has free. Torch-free.

The driver sizes packs (``packing: {max_size: auto}``) from these estimates before any worker
starts, so they use only the config and the dataset's facts. They are deliberately generous
(fp32 everywhere, every activation of a step kept for the backward pass, the evaluation chunk
at its largest): a pack that does not fit costs a crashed trial, a pack a little small costs
a few percent of speed.
"""

from __future__ import annotations

import math
import shutil
import subprocess

from workers.config import TrialConfig, convnet_feature_side
from workers.datasets import FACTS

FLOAT_BYTES = 4
EVAL_CHUNK = 8192  # examples per evaluation pass, all members of a pack together (the engine's)


def _image(config: TrialConfig) -> tuple[int, int, int, int]:
    """(C, H, W, K) of the config's dataset."""
    facts = FACTS[config.dataset]
    height, width, channels = facts.image_shape
    return channels, height, width, facts.num_classes


def parameter_count(config: TrialConfig) -> int:
    """Trainable values of one model."""
    c, h, w, k = _image(config)
    if config.model == "mlp":
        return c * h * w * config.hidden + config.hidden * k
    side_h, side_w = convnet_feature_side(h), convnet_feature_side(w)
    return ((c * 25 + 1) * 32 + (32 * 25 + 1) * 64
            + (64 * side_h * side_w + 1) * config.hidden + (config.hidden + 1) * k)


def example_activation_values(config: TrialConfig) -> int:
    """Activations one example produces in a forward pass (input included)."""
    c, h, w, k = _image(config)
    if config.model == "mlp":
        return c * h * w + 2 * config.hidden + k
    pooled = (h - 3) // 2 + 1
    return (c * h * w + 2 * 32 * h * w + 32 * pooled * pooled + 2 * 64 * (pooled - 4) ** 2
            + 2 * config.hidden + k)


def member_bytes(config: TrialConfig) -> int:
    """Device bytes each member adds to a pack: parameters, gradients, momentum buffers and
    the first layer's initial copy (4x the parameters), plus a training step's activations
    and their gradients (2x, batch examples)."""
    return FLOAT_BYTES * (4 * parameter_count(config)
                          + 2 * config.batch_size * example_activation_values(config))


def shared_bytes(config: TrialConfig) -> int:
    """Device bytes a pack needs once, whatever its size: the dataset (standardized fp32) and
    an evaluation pass's activations (``EVAL_CHUNK`` examples across all members)."""
    facts = FACTS[config.dataset]
    c, h, w, _ = _image(config)
    train = config.train_size or facts.train_size
    test = config.test_size or facts.test_size
    return FLOAT_BYTES * ((train + test) * c * h * w + EVAL_CHUNK * example_activation_values(config))


def members_that_fit(config: TrialConfig, device_bytes: float, headroom: float = 0.7) -> int:
    """How many members of ``config``'s pack fit in ``device_bytes`` of free device memory,
    keeping ``1 - headroom`` of it for the CUDA context and allocator slack (at least 1)."""
    room = device_bytes * headroom - shared_bytes(config)
    return max(1, math.floor(room / member_bytes(config)))


def free_gpu_bytes() -> int | None:
    """The least free memory of this machine's GPUs, in bytes, from ``nvidia-smi`` (no CUDA
    context, no GPU reserved); None when there is no GPU or no nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        free_mib = [int(line) for line in out.split() if line.strip().isdigit()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return min(free_mib) * 2**20 if free_mib else None
