"""The trial config: one frozen dataclass, every field documented, validated in one pass.

The same keys appear in ``xmem trial`` config files, in ``--set KEY=VALUE`` and in a sweep
spec's ``defaults`` / ``grid`` / ``include``. ``TrialConfig.from_mapping`` reports every
problem at once (unknown keys with the valid ones, wrong types, out-of-range values).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from workers.datasets import DATASETS, FACTS
from workers.errors import ConfigError

MODELS = ("mlp", "convnet")
ACTIVATIONS = ("sin", "relu", "sigmoid", "linear")
LOSSES = ("cross_entropy", "hinge", "squared")
DEVICES = ("auto", "cpu", "cuda")
# Keys that say where or how often things happen but never change a trial's numbers.
NON_RESULT_KEYS = ("data_dir", "download", "checkpoint_every")
# Keys that say where the data is read from. A trial's id holds data_file as written in the
# spec (another file is other data); a checkpoint holds it resolved on the driver that sent the
# trial, so a checkpoint resumed by a driver in another working directory (or another mount)
# differs there in nothing that changes results: ``check_state_fits`` does not compare them.
DATA_LOCATION_KEYS = ("data_dir", "data_file")
# The keys trials trained together in one pack (workers.pack) may differ in; they must agree
# on every other key.
PACK_FREE_KEYS = ("sigma", "seed", "lr", "momentum", "temperature")
# Largest `seed` / `data_seed`: torch.Generator.manual_seed overflows past 64 bits, and seeds
# are also used with an offset added (the shuffle stream: seed + 1_000_003).
MAX_SEED = 2**31 - 1
# The smallest image side the ConvNet takes (workers.models: 15 pixels reach the dense layer
# as 1 x 1, 14 as nothing).
CONVNET_MIN_SIDE = 15


def convnet_feature_side(side: int) -> int:
    """The side (pixels) of the ConvNet's last feature map for an input side of ``side``:
    conv1 keeps the size, pool 3/2, conv2 5x5 'valid', pool 3/2; 0 when nothing is left."""
    pooled = (side - 3) // 2 + 1
    after_conv2 = pooled - 4
    return (after_conv2 - 3) // 2 + 1 if after_conv2 >= 3 else 0


def convnet_size_problem(height: int, width: int, *, images: str, remedy: str) -> str | None:
    """The user's message when the ConvNet cannot take images of ``height`` x ``width``
    pixels; None when it can. ``images`` names them with its verb ("dataset digits has"),
    ``remedy`` is the other way out besides the MLP."""
    if min(height, width) >= CONVNET_MIN_SIDE:
        return None
    return (f"'model' convnet needs images of at least {CONVNET_MIN_SIDE}x{CONVNET_MIN_SIDE} "
            f"pixels and {images} {height}x{width}: use model mlp, or {remedy}")


def _doc(text: str, *, choices: tuple | None = None, minimum: float | None = None,
         exclusive: bool = False, maximum: float | None = None) -> dict:
    """Field metadata: help text, and the valid choices or range checked by validation
    (``minimum``, exclusive when ``exclusive``; ``maximum``, inclusive)."""
    return {"doc": text, "choices": choices, "minimum": minimum, "exclusive": exclusive,
            "maximum": maximum}


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines one trial. Defaults follow the paper's setup (NOTES.md)."""

    # --- data -------------------------------------------------------------------------
    dataset: str = field(default="digits", metadata=_doc(
        "Dataset name. cifar10/cifar100/svhn read torchvision's on-disk files under data_dir "
        "(or the Parquet table data_file); digits is scikit-learn's bundled 8x8 digits "
        "(offline).", choices=DATASETS))
    data_dir: str = field(default="~/.cache/xmem/data", metadata=_doc(
        "Folder holding torchvision's dataset files; decoded arrays are cached under "
        "<data_dir>/xmem-cache."))
    data_file: str | None = field(default=None, metadata=_doc(
        "Parquet image table (columns split, label, image as PNG/JPEG bytes) supplying the "
        "dataset's images instead of torchvision's files."))
    download: bool = field(default=False, metadata=_doc(
        "Download torchvision's files into data_dir when missing (needs internet)."))
    train_size: int | None = field(default=None, metadata=_doc(
        "Stratified subset of the training split (examples in total); null = all.",
        minimum=1))
    test_size: int | None = field(default=None, metadata=_doc(
        "Stratified subset of the test split (examples in total); null = all.", minimum=1))
    data_seed: int = field(default=0, metadata=_doc(
        "Seed of the subsets, the label shuffle and the alignment probes; fixed across "
        "trials so that trials differing in `seed` see the same data.", minimum=0,
        maximum=MAX_SEED))
    shuffle_labels: bool = field(default=False, metadata=_doc(
        "Train on a fixed random permutation of the training labels (the paper's "
        "random-label runs)."))

    # --- model ------------------------------------------------------------------------
    model: str = field(default="mlp", metadata=_doc(
        "mlp: x -> hidden -> activation -> top, no biases. convnet: the paper's ConvNet "
        "(conv1, conv2, hidden, top; with biases).", choices=MODELS))
    hidden: int = field(default=1024, metadata=_doc(
        "Width of the hidden dense layer (units).", minimum=1))
    activation: str = field(default="sin", metadata=_doc(
        "Nonlinearity after every hidden layer.", choices=ACTIVATIONS))
    sigma: float | None = field(default=None, metadata=_doc(
        "Std of the first layer's initial weights, W ~ Normal(0, sigma^2); null = "
        "glorot-uniform like the other layers.", minimum=0.0, exclusive=True))

    # --- loss and optimizer -----------------------------------------------------------
    loss: str = field(default="cross_entropy", metadata=_doc(
        "cross_entropy (softmax), hinge (multi-class, margin 1) or squared (mean over "
        "classes of (z - onehot)^2); averaged over the batch.", choices=LOSSES))
    temperature: float = field(default=1.0, metadata=_doc(
        "The logits are divided by this before the loss (the paper's Section 4 remedy).",
        minimum=0.0, exclusive=True))
    lr: float = field(default=0.01, metadata=_doc(
        "SGD learning rate.", minimum=0.0, exclusive=True))
    momentum: float = field(default=0.0, metadata=_doc(
        "SGD momentum (the paper uses none).", minimum=0.0))
    batch_size: int = field(default=256, metadata=_doc(
        "Examples per SGD step.", minimum=1))
    epochs: int = field(default=100, metadata=_doc(
        "Passes over the training set (the authors' code defaults to 2000).", minimum=0))
    seed: int = field(default=0, metadata=_doc(
        "Seed of initialization and of the per-epoch shuffles.", minimum=0, maximum=MAX_SEED))
    device: str = field(default="auto", metadata=_doc(
        "auto = cuda when available, else cpu.", choices=DEVICES))

    # --- measurement ------------------------------------------------------------------
    eval_every: int = field(default=1, metadata=_doc(
        "Evaluate losses and accuracies every this many epochs (and at epoch 0).",
        minimum=1))
    align_every: int = field(default=10, metadata=_doc(
        "Measure alignment every this many epochs (and at epoch 0); rounded to evaluated "
        "epochs.", minimum=1))
    probe_per_class: int = field(default=100, metadata=_doc(
        "Examples per class in the fixed alignment probes (train and test).", minimum=2))
    checkpoint_every: int | None = field(default=None, metadata=_doc(
        "Save a resumable checkpoint every this many epochs when run in a sweep (at evaluated "
        "epochs); null = as often as keeps checkpointing near 5% of a trial's time.", minimum=1))

    # ----------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        return {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "trial config") -> "TrialConfig":
        """Build a config from ``values`` over the defaults; every problem raised at once.

        Raises:
            ConfigError: listing each unknown key (with close matches and the valid keys),
                wrong type, and out-of-range value.
        """
        problems = config_problems(values)
        if problems:
            raise ConfigError(problems, source=source,
                              hint="Valid keys and their meaning: xmem trial --help-keys")
        types = _field_types()
        coerced = {k: _coerce(types[k], v) for k, v in values.items()}
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        # Every field is a scalar: no deep copy needed (dataclasses.asdict would make one).
        return {name: getattr(self, name) for name in _fields()}

    def identity(self) -> dict[str, Any]:
        """The keys that can change a trial's results (what a trial id is a hash of)."""
        return {k: v for k, v in self.to_dict().items() if k not in NON_RESULT_KEYS}

    def replace(self, **changes: Any) -> "TrialConfig":
        return TrialConfig.from_mapping({**self.to_dict(), **changes})


def key_types() -> dict[str, tuple[type, bool]]:
    """Each trial key's scalar type (str, int, float or bool) and whether it may be None."""
    return {key: _base_type(annotation) for key, annotation in _field_types().items()}


@functools.cache
def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrialConfig)}


@functools.cache  # typing.get_type_hints is slow: a 10,000-trial sweep validates 10,000 configs
def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrialConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrialConfig)}


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) for ``T`` or ``T | None``."""
    args = typing.get_args(annotation)
    if args:
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return annotation, False


def _type_ok(kind: type, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _coerce(annotation: Any, value: Any) -> Any:
    kind, _ = _base_type(annotation)
    if value is not None and kind is float:
        return float(value)
    return value


def key_problems(key: Any, value: Any) -> list[str]:
    """Problems with one trial key and its value alone (no cross-key rules)."""
    fields = _fields()
    if key not in fields:
        return [f"unknown key '{key}'{did_you_mean(key, fields)}; valid keys: {', '.join(fields)}"]
    kind, nullable = _base_type(_field_types()[key])
    meta = fields[key].metadata
    if value is None:
        return [] if nullable else [f"'{key}' must not be null; expected {kind.__name__}"]
    if not _type_ok(kind, value):
        expected = kind.__name__ + (" or null" if nullable else "")
        return [f"'{key}' must be {expected}, got {type(value).__name__} {value!r}"]
    if kind is float and not _is_finite(value):
        return [f"'{key}' must be a finite number, got {value!r}"]
    problems = []
    if meta["choices"] and value not in meta["choices"]:
        problems.append(f"'{key}' is {value!r}; valid choices: {', '.join(meta['choices'])}")
    minimum = meta["minimum"]
    if minimum is not None:
        if meta["exclusive"] and not value > minimum:
            problems.append(f"'{key}' must be > {minimum:g}, got {value!r}")
        elif not meta["exclusive"] and not value >= minimum:
            problems.append(f"'{key}' must be >= {minimum:g}, got {value!r}")
    maximum = meta["maximum"]
    if maximum is not None and not value <= maximum:
        problems.append(f"'{key}' must be <= {maximum}, got {value!r}")
    return problems


def did_you_mean(key: Any, valid: Iterable[str]) -> str:
    """`` (did you mean 'sigma'?)`` for the closest of ``valid`` to a mistyped ``key``; ""
    when none is close."""
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_finite(number: int | float) -> bool:
    """False for inf, nan, and ints too large for a float (10**400)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def cross_key_problems(values: Mapping[str, Any]) -> list[str]:
    """Problems between keys of a config whose keys are each valid (missing keys = defaults)."""
    merged = {name: f.default for name, f in _fields().items()} | dict(values)
    problems = []
    if merged["model"] == "convnet":
        height, width, _ = FACTS[merged["dataset"]].image_shape
        large_enough = [name for name, facts in FACTS.items()
                        if min(facts.image_shape[:2]) >= CONVNET_MIN_SIDE]
        problem = convnet_size_problem(height, width, images=f"dataset {merged['dataset']} has",
                                       remedy="dataset " + "/".join(large_enough))
        if problem:
            problems.append(problem)
    return problems


def config_problems(values: Mapping[str, Any]) -> list[str]:
    """Every problem with ``values`` as trial config keys (empty list when valid).

    Cross-key rules run only when every key is valid on its own.
    """
    problems = [p for key, value in values.items() for p in key_problems(key, value)]
    return problems or cross_key_problems(values)



def pack_key(config: TrialConfig) -> tuple:
    """What the members of one pack share: every config value except ``PACK_FREE_KEYS``."""
    return tuple((k, v) for k, v in config.to_dict().items() if k not in PACK_FREE_KEYS)
