"""One trial: train a model with plain SGD and measure it, epoch by epoch.

The data lives on the training device as whole tensors; each epoch shuffles with
``torch.randperm`` on the device and slices batches by index (no DataLoader).

``Trial.run()`` yields an ``EpochRecord`` for epoch 0 (before any update) and for every
evaluated epoch after it. Between two records the full training state can be saved with
``state_dict()`` and restored into a fresh ``Trial`` with ``load_state_dict()``; the restored
trial yields exactly the records the uninterrupted one would have.

A non-finite loss or weight stops the trial with status ``diverged`` (a result, not an error);
every record yielded before stays valid.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from workers import contract
from workers.alignment import measure_alignment
from workers.checkpoint import STATE_FORMAT, check_state_fits
from workers.config import TrialConfig
from workers.contract import STATUS_DIVERGED as DIVERGED
from workers.contract import STATUS_FINISHED as FINISHED
from workers.contract import STATUS_RUNNING as RUNNING
from workers.data import DeviceDataset, load_dataset
from workers.errors import XmemError
from workers.footprint import EVAL_CHUNK  # examples per evaluation pass (bounds activation memory)
from workers.losses import per_example_loss
from workers.models import build_model
from workers.sgd import PlainSGD



@dataclass
class EpochRecord:
    """What one evaluated epoch measured.

    ``metrics`` maps metric names (``workers.contract``) to floats; alignment names appear only
    on alignment epochs, and an alignment whose every class is undefined is absent.
    ``per_class`` maps alignment names to K per-class values (None = undefined).
    """

    epoch: int
    metrics: dict[str, float]
    per_class: dict[str, list[float | None]] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """``{"epoch": e, **metrics}``: one line of ``xmem trial --out``."""
        return {contract.EPOCH: self.epoch, **self.metrics}


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. Asking for cuda without one is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise XmemError("device: 'cuda' was requested but torch sees no CUDA GPU here; "
                        "use --set device=auto (or cpu)")
    return torch.device(requested)


def keep_float32_exact() -> None:
    """Turn TF32 off: with sin at sigma=10 pre-activations are ~500 and TF32 rounding
    (~1 part in 2000) would move them by a sizeable fraction of a radian."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def is_eval_epoch(epoch: int, config: TrialConfig) -> bool:
    """Epoch 0, every ``eval_every``-th epoch, and the last epoch are evaluated."""
    return epoch == 0 or epoch == config.epochs or epoch % config.eval_every == 0


def is_align_epoch(epoch: int, config: TrialConfig) -> bool:
    """Alignment is measured at epoch 0, the last epoch, and the first evaluated epoch at or
    after each multiple of ``align_every``."""
    if not is_eval_epoch(epoch, config):
        return False
    if epoch == 0 or epoch == config.epochs:
        return True
    previous_eval = max(0, epoch - config.eval_every)
    return epoch // config.align_every > previous_eval // config.align_every


class Trial:
    """A model, its optimizer and its data on one device, plus the measurement schedule."""

    def __init__(self, config: TrialConfig, data: DeviceDataset | None = None):
        self.config = config
        self.device = resolve_device(config.device)
        keep_float32_exact()
        self.data = data if data is not None else load_dataset(config, self.device)
        self.model = build_model(config, self.data.image_shape, self.data.num_classes).to(self.device)
        self.optimizer = PlainSGD(list(self.model.parameters()), lr=config.lr, momentum=config.momentum)
        self.initial_hidden = self.model.hidden.weight.detach().clone()  # W1(0)
        # The shuffle stream is separate from initialization so that both are reproducible; it
        # lives on the CPU so that a trial shuffles alike on every device and its checkpoint
        # resumes on another (the permutation is copied over once per epoch: N int64s).
        self.shuffle_generator = torch.Generator().manual_seed(config.seed + 1_000_003)
        self.epoch = 0
        self.last_evaluated_epoch = -1
        self.best_test_acc = -math.inf
        self.status = RUNNING
        self.train_seconds = 0.0  # time spent in SGD steps (not in measurement)

    # --- training -------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return per_example_loss(logits, labels, self.config.loss, self.config.temperature)

    def train_epoch(self) -> bool:
        """One pass of SGD over a fresh on-device permutation. Returns False on divergence."""
        started = time.perf_counter()
        order = torch.randperm(self.data.x_train.shape[0], generator=self.shuffle_generator).to(self.device)
        # One gather per epoch; the batches below are then views (no indexing per step).
        x, y = self.data.x_train[order], self.data.y_train[order]
        loss_sum = torch.zeros((), device=self.device)
        self.model.train()
        for start in range(0, x.shape[0], self.config.batch_size):
            end = start + self.config.batch_size
            loss = self._loss(self.model(x[start:end]), y[start:end]).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            # Summed on the device and checked once per epoch: one host sync, not one per step.
            loss_sum += loss.detach()
        nonfinite = ~torch.isfinite(loss_sum)
        for parameter in self.model.parameters():
            nonfinite |= ~torch.isfinite(parameter).all()
        self.epoch += 1
        healthy = not bool(nonfinite)
        self.train_seconds += time.perf_counter() - started
        return healthy

    # --- measurement ----------------------------------------------------------------
    @torch.no_grad()
    def _loss_and_accuracy(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for start in range(0, x.shape[0], EVAL_CHUNK):
            logits = self.model(x[start:start + EVAL_CHUNK])
            labels = y[start:start + EVAL_CHUNK]
            loss_sum += self._loss(logits, labels).sum(dtype=torch.float64)
            correct += (logits.argmax(dim=-1) == labels).sum()
        return float(loss_sum) / x.shape[0], float(correct) / x.shape[0]

    def _hidden_dynamics(self) -> dict[str, float]:
        """||grad W1|| / ||W1|| (mean loss over the training probe) and ||W1 - W1(0)|| / ||W1(0)||."""
        probe = self.data.probe_train
        weight = self.model.hidden.weight
        with torch.enable_grad():
            loss = self._loss(self.model(self.data.x_train[probe]), self.data.y_train[probe]).mean()
            (grad,) = torch.autograd.grad(loss, [weight])
        return {
            contract.DYN_GRAD_NORM_RATIO_HIDDEN: float(grad.norm() / weight.detach().norm()),
            contract.DYN_WEIGHT_CHANGE_HIDDEN: float((weight.detach() - self.initial_hidden).norm() / self.initial_hidden.norm()),
        }

    def _alignment(self) -> tuple[dict[str, float], dict[str, list[float | None]]]:
        return measure_alignment(self.model, self.data, self.config.loss, self.config.temperature)

    def evaluate(self) -> EpochRecord | None:
        """Measure the current epoch; None (and status diverged) if a loss is not finite."""
        train_loss, train_acc = self._loss_and_accuracy(self.data.x_train, self.data.y_train)
        test_loss, test_acc = self._loss_and_accuracy(self.data.x_test, self.data.y_test)
        if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
            self.status = DIVERGED
            return None
        self.best_test_acc = max(self.best_test_acc, test_acc)
        values = {
            contract.TRAIN_LOSS: train_loss, contract.TRAIN_ACC: train_acc,
            contract.TEST_LOSS: test_loss, contract.TEST_ACC: test_acc,
            contract.TEST_BEST_ACC: self.best_test_acc,
        }
        values.update(self._hidden_dynamics())
        per_class: dict[str, list[float | None]] = {}
        if is_align_epoch(self.epoch, self.config):
            means, per_class = self._alignment()
            values.update(means)
        self.last_evaluated_epoch = self.epoch
        return EpochRecord(self.epoch, values, per_class)

    # --- the loop -------------------------------------------------------------------
    def run(self) -> Iterator[EpochRecord]:
        """Train to ``config.epochs``, yielding a record at every evaluated epoch.

        Resumable: after ``load_state_dict`` it continues where the saved trial stopped.
        """
        if self.status != RUNNING:
            return
        if self.last_evaluated_epoch < self.epoch and is_eval_epoch(self.epoch, self.config):
            record = self.evaluate()
            if record is None:
                return
            yield record
        while self.epoch < self.config.epochs:
            if not self.train_epoch():
                self.status = DIVERGED
                return
            if is_eval_epoch(self.epoch, self.config):
                record = self.evaluate()
                if record is None:
                    return
                yield record
        self.status = FINISHED

    # --- state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (tensors on the CPU), except what the
        config rebuilds: W1(0) comes from the seed, so a state is about half the size."""
        def to_cpu(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.detach().cpu()
            if isinstance(value, dict):
                return {k: to_cpu(v) for k, v in value.items()}
            if isinstance(value, list):
                return [to_cpu(v) for v in value]
            return value

        return {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "last_evaluated_epoch": self.last_evaluated_epoch,
            "best_test_acc": self.best_test_acc,
            "status": self.status,
            "train_seconds": self.train_seconds,
            "model": to_cpu(self.model.state_dict()),
            "optimizer": to_cpu(self.optimizer.state_dict()),
            # No "initial_hidden": W1(0) is the seed's (``build_model`` draws it on the CPU,
            # alike on every device), and the config check on load guarantees the same seed.
            "shuffle_generator": self.shuffle_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; the saved config must match this trial's results-wise."""
        check_state_fits(state, self.config)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "initial_hidden" in state:  # states written before it was regenerated from the seed
            self.initial_hidden = state["initial_hidden"].to(self.device)
        self.shuffle_generator.set_state(state["shuffle_generator"])
        self.epoch = state["epoch"]
        self.last_evaluated_epoch = state["last_evaluated_epoch"]
        self.best_test_acc = state["best_test_acc"]
        self.status = state["status"]
        self.train_seconds = state["train_seconds"]
