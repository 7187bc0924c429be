"""A pack: M trials trained together as one batched computation on one device.

The paper's networks are tiny for a GPU: one trial keeps it busy only a tenth of the time,
bound by kernel launches rather than arithmetic. A pack stacks the parameters of M trials
along a leading *member* axis (``(M, hidden, d)`` for the MLP's first layer) so every SGD step
of all M trials is one set of kernels.

Members must agree on everything that shapes the computation (``pack_key``: dataset, subset,
model, hidden size, activation, loss, batch size, epochs, schedules) and may differ in
``PACK_FREE_KEYS``: sigma, seed, lr, momentum, temperature. Each member behaves exactly as if
it ran alone in ``workers.trial.Trial`` (the reference; the tests hold the two together):

- its initialization comes from ``build_model`` with its own seed, its shuffling from its own
  CPU generator (same stream as ``Trial``); batches are gathered with ``(M, B)`` indices
  into the one shared copy of the data;
- the loss is the sum over members of each member's batch mean, so member m's gradient is
  exactly its own (no parameter is shared); lr, momentum and temperature are per member;
- a member whose loss or weights go non-finite is dropped from the stacks (frozen) and ends
  ``diverged``; the others go on;
- evaluation, dynamics and alignment are per member, under the same metric names;
- ``member_state`` gives a member's state in ``Trial.state_dict()``'s format, so a member's
  checkpoint is an ordinary trial checkpoint: it resumes in any pack, or alone.

``PackedTrials.run()`` yields a ``PackEpoch`` at every evaluated epoch: the records of the
members measured then and the members that ended (finished or diverged) at that epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from workers import contract
from workers.alignment import measure_alignment
from workers.checkpoint import STATE_FORMAT, check_state_fits
from workers.config import TrialConfig, pack_key
from workers.contract import STATUS_DIVERGED as DIVERGED
from workers.contract import STATUS_FINISHED as FINISHED
from workers.contract import STATUS_RUNNING as RUNNING
from workers.data import DeviceDataset, load_dataset
from workers.errors import XmemError
from workers.losses import per_example_loss
from workers.models import build_model
from workers.trial import (EVAL_CHUNK, EpochRecord, is_align_epoch, is_eval_epoch,
                           keep_float32_exact, resolve_device)

SHUFFLE_SEED_OFFSET = 1_000_003  # as workers.trial.Trial: member m shuffles like it alone
_ACTIVATION_FUNCTIONS = {"sin": torch.sin, "relu": torch.relu, "sigmoid": torch.sigmoid,
                         "linear": lambda x: x}


@dataclass
class PackEpoch:
    """One evaluated epoch of a pack."""

    epoch: int
    records: dict[str, EpochRecord] = field(default_factory=dict)
    """member key -> its record at this epoch (members measured now)."""
    ended: dict[str, str] = field(default_factory=dict)
    """member key -> finished | diverged, for members that ended at this epoch."""
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """member key -> its final ``state_dict()`` (CPU), for members that ended at this epoch."""


class PackedTrials:
    """M trials of one ``pack_key`` on one device, trained in lockstep.

    Args:
        members: ``(key, config)`` pairs; keys (the trial ids) name the members everywhere.
        data: the shared data (default: loaded from the first config, on its device).
    """

    def __init__(self, members: Sequence[tuple[str, TrialConfig]], data: DeviceDataset | None = None):
        if not members:
            raise ValueError("a pack needs at least one member")
        keys = [key for key, _ in members]
        if len(set(keys)) != len(keys):
            raise ValueError(f"member keys must be distinct: {keys}")
        first = members[0][1]
        for key, config in members[1:]:
            if pack_key(config) != pack_key(first):
                differ = sorted(k for (k, v), (_, w) in zip(pack_key(config), pack_key(first)) if v != w)
                raise ValueError(f"member {key} cannot share a pack with {keys[0]}: "
                                 f"they differ in {', '.join(differ)}")
        self.config = first  # the shared settings (members differ only in PACK_FREE_KEYS)
        self.configs = {key: config for key, config in members}
        self.device = resolve_device(first.device)
        keep_float32_exact()
        self.data = data if data is not None else load_dataset(first, self.device)
        models = [build_model(config, self.data.image_shape, self.data.num_classes)
                  for _, config in members]
        # A real module for what needs one (alignment hooks, vmap over the ConvNet); the
        # members' values live in the stacks below.
        self.template = models[0].to(self.device)
        self.names = [name for name, _ in self.template.named_parameters()]
        # The MLP's weights are stored input-major, (M, in, out): forward is x @ W and the
        # backward pass then yields each weight's gradient contiguous. Stored as nn.Linear
        # lays them out, (M, out, in), the gradient comes back as a transposed view, and the
        # in-place SGD update over it ran ~1.6x slower than the whole step on a CPU.
        self.stored_transposed = {"hidden.weight", "top.weight"} if first.model == "mlp" else set()
        self.params = {name: self._stored(name, torch.stack([dict(m.named_parameters())[name].detach()
                                                              for m in models]))
                       .to(self.device).requires_grad_(True) for name in self.names}
        """parameter name -> ``(M, *shape)`` leaf tensor, member i at index i (the MLP's weights
        transposed: see ``stored_transposed``)."""
        self.buffers = {name: torch.zeros_like(p) for name, p in self.params.items()}
        """momentum buffers ``(M, *shape)`` (zeros before a member's first step: m*0 + g = g)."""
        self.initial_hidden = self.params["hidden.weight"].detach().clone()  # W1(0), stored layout
        self.keys = list(keys)
        self.generators = [torch.Generator().manual_seed(c.seed + SHUFFLE_SEED_OFFSET)
                           for _, c in members]
        self.stepped = [False] * len(keys)  # has the member taken an SGD step (buffers live)
        self.best_test_acc = [-math.inf] * len(keys)
        self._refresh_member_tensors()
        self.epoch = 0
        self.last_evaluated_epoch = -1
        self.status: dict[str, str] = {key: RUNNING for key in keys}
        self.train_seconds = 0.0
        self._restored_at: tuple[int, int] | None = None  # (epoch, last evaluated) of restored members

    # --- members ----------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.keys)

    def _refresh_member_tensors(self) -> None:
        """Per-member lr, momentum and temperature as ``(M,)`` tensors on the device."""
        def column(name: str) -> torch.Tensor:
            values = [float(getattr(self.configs[key], name)) for key in self.keys]
            return torch.tensor(values, dtype=torch.float32, device=self.device)
        self.lr, self.momentum, self.temperature = column("lr"), column("momentum"), column("temperature")
        self.any_momentum = any(self.configs[key].momentum != 0.0 for key in self.keys)

    def _stored(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A parameter-shaped tensor (``(..., out, in)`` as in the module) in the stacks' layout."""
        return tensor.transpose(-1, -2).contiguous() if name in self.stored_transposed else tensor

    def _exported(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor of the stacks' layout as the module lays it out: a contiguous CPU copy."""
        if name in self.stored_transposed:
            tensor = tensor.transpose(-1, -2)
        return tensor.detach().to("cpu", copy=True).contiguous()

    def _per_member(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``(M,)`` -> broadcastable against ``like`` ``(M, ...)``."""
        return values.view(-1, *([1] * (like.dim() - 1)))

    def _drop(self, keys: set[str]) -> None:
        """Remove members from the stacks (they ended: finished members need no state, and a
        diverged member's non-finite values must not cost compute or memory)."""
        keep = [i for i, key in enumerate(self.keys) if key not in keys]
        if len(keep) == len(self.keys):
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.params = {n: p.detach().index_select(0, index).requires_grad_(True) for n, p in self.params.items()}
        self.buffers = {n: b.index_select(0, index) for n, b in self.buffers.items()}
        self.initial_hidden = self.initial_hidden.index_select(0, index)
        for name in ("keys", "generators", "stepped", "best_test_acc"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in keep])
        self._refresh_member_tensors()

    # --- the batched forward ----------------------------------------------------------
    def forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
        """Logits ``(M, B, K)`` of every member.

        Args:
            params: the stacks (``self.params`` or a slice of them).
            x: ``(M, B, ...)`` one batch per member, or with ``shared`` ``(B, ...)`` one batch
               all members see (evaluation, probes).
        """
        if self.config.model == "mlp":
            act = _ACTIVATION_FUNCTIONS[self.config.activation]
            w1, w2 = params["hidden.weight"], params["top.weight"]  # stored (M, d, h), (M, h, K)
            hidden = act(torch.matmul(x, w1))                         # (M, B, h)
            return torch.matmul(hidden, w2)                           # (M, B, K)
        template = self.template

        def one(member_params: dict[str, torch.Tensor], member_x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(template, member_params, (member_x,))
        return torch.func.vmap(one, in_dims=(0, None if shared else 0))(params, x)

    def _losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example losses ``(M, B)`` of logits ``(M, B, K)``, each member at its temperature."""
        return per_example_loss(logits / self._per_member(self.temperature, logits), labels,
                                self.config.loss)

    # --- training ---------------------------------------------------------------------
    def train_epoch(self) -> list[str]:
        """One SGD pass of every member over its own permutation. Returns the members that
        went non-finite (their loss over the epoch, or a weight)."""
        started = time.perf_counter()
        n, batch = self.data.x_train.shape[0], self.config.batch_size
        order = torch.stack([torch.randperm(n, generator=g) for g in self.generators]).to(self.device)  # (M, N)
        loss_sum = torch.zeros(self.size, device=self.device)
        names = self.names
        for start in range(0, n, batch):
            rows = order[:, start:start + batch]                        # (M, B)
            logits = self.forward(self.params, self.data.x_train[rows], shared=False)
            losses = self._losses(logits, self.data.y_train[rows]).mean(dim=1)  # (M,)
            grads = torch.autograd.grad(losses.sum(), [self.params[n] for n in names])
            self._sgd_step(grads)
            loss_sum += losses.detach()  # checked once per epoch: one host sync, not one per step
        nonfinite = ~torch.isfinite(loss_sum)
        for p in self.params.values():
            nonfinite |= ~torch.isfinite(p.detach()).flatten(1).all(dim=1)
        self.stepped = [True] * self.size
        self.epoch += 1
        self.train_seconds += time.perf_counter() - started
        return [key for key, bad in zip(self.keys, nonfinite.tolist()) if bad]

    def _sgd_step(self, grads: Sequence[torch.Tensor]) -> None:
        """``buf = momentum * buf + g`` (``= g`` on the first step: buffers start at 0);
        ``p -= lr * buf``: ``workers.sgd.PlainSGD``'s update, per member. Without momentum in
        the pack, ``p -= lr * g`` directly (no buffer pass)."""
        with torch.no_grad():
            for name, grad in zip(self.names, grads):
                # Contiguous already (see ``stored_transposed``); a strided operand would make
                # the in-place updates below ~40x slower on a CPU.
                grad = grad.contiguous()
                param = self.params[name]
                step = grad
                if self.any_momentum:
                    step = self.buffers[name]
                    step.mul_(self._per_member(self.momentum, step)).add_(grad)
                param.addcmul_(self._per_member(self.lr, param), step, value=-1.0)

    # --- measurement ------------------------------------------------------------------
    def _loss_and_accuracy(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        """Mean loss and accuracy of every member on all of ``x`` (chunked: M x chunk logits)."""
        loss_sum = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        correct = torch.zeros(self.size, dtype=torch.int64, device=self.device)
        chunk = max(256, EVAL_CHUNK // self.size)
        with torch.no_grad():
            for start in range(0, x.shape[0], chunk):
                logits = self.forward(self.params, x[start:start + chunk], shared=True)  # (M, C, K)
                labels = y[start:start + chunk]
                loss_sum += self._losses(logits, labels).sum(dim=1, dtype=torch.float64)
                correct += (logits.argmax(dim=-1) == labels).sum(dim=1)
        count = x.shape[0]
        return (loss_sum / count).tolist(), (correct.double() / count).tolist()

    def _hidden_dynamics(self) -> tuple[list[float], list[float]]:
        """Per member: ||grad W1|| / ||W1|| (mean loss on the training probe) and
        ||W1 - W1(0)|| / ||W1(0)||."""
        probe = self.data.probe_train
        logits = self.forward(self.params, self.data.x_train[probe], shared=True)
        losses = self._losses(logits, self.data.y_train[probe]).mean(dim=1)
        weight = self.params["hidden.weight"]
        (grad,) = torch.autograd.grad(losses.sum(), [weight])
        weight = weight.detach()
        ratio = grad.flatten(1).norm(dim=1) / weight.flatten(1).norm(dim=1)
        change = ((weight - self.initial_hidden).flatten(1).norm(dim=1)
                  / self.initial_hidden.flatten(1).norm(dim=1))
        return ratio.tolist(), change.tolist()

    def _member_module(self, index: int) -> nn.Module:
        """The template module holding member ``index``'s current values."""
        with torch.no_grad():
            for name, parameter in self.template.named_parameters():
                value = self.params[name][index]
                parameter.copy_(value.transpose(-1, -2) if name in self.stored_transposed else value)
        return self.template

    def _alignment(self, index: int) -> tuple[dict[str, float], dict[str, list[float | None]]]:
        config = self.configs[self.keys[index]]
        return measure_alignment(self._member_module(index), self.data, config.loss, config.temperature)

    def evaluate(self) -> PackEpoch:
        """Measure every member at the current epoch; a member with a non-finite train or test
        loss ends diverged (and is dropped) instead of getting a record."""
        result = PackEpoch(self.epoch)
        train_loss, train_acc = self._loss_and_accuracy(self.data.x_train, self.data.y_train)
        test_loss, test_acc = self._loss_and_accuracy(self.data.x_test, self.data.y_test)
        grad_ratio, weight_change = self._hidden_dynamics()
        align = is_align_epoch(self.epoch, self.config)
        for i, key in enumerate(self.keys):
            if not (math.isfinite(train_loss[i]) and math.isfinite(test_loss[i])):
                result.ended[key] = DIVERGED  # ended (and its weights kept) by _end below
                continue
            self.best_test_acc[i] = max(self.best_test_acc[i], test_acc[i])
            values = {
                contract.TRAIN_LOSS: train_loss[i], contract.TRAIN_ACC: train_acc[i],
                contract.TEST_LOSS: test_loss[i], contract.TEST_ACC: test_acc[i],
                contract.TEST_BEST_ACC: self.best_test_acc[i],
                contract.DYN_GRAD_NORM_RATIO_HIDDEN: grad_ratio[i],
                contract.DYN_WEIGHT_CHANGE_HIDDEN: weight_change[i],
            }
            per_class: dict[str, list[float | None]] = {}
            if align:
                means, per_class = self._alignment(i)
                values.update(means)
            result.records[key] = EpochRecord(self.epoch, values, per_class)
        self.last_evaluated_epoch = self.epoch
        self._end(result)
        return result

    def _end(self, result: PackEpoch) -> None:
        """Members diverged now, or all of them when the last epoch is reached, end here."""
        if self.epoch >= self.config.epochs:
            result.ended.update({key: FINISHED for key in self.keys if key not in result.ended})
        self._end_members(result, result.ended)

    def _end_members(self, result: PackEpoch, ended: dict[str, str]) -> None:
        """Record how members ended and their final weights in ``result``; drop them."""
        for key, status in ended.items():
            if key not in self.keys:
                continue
            i = self.keys.index(key)
            self.status[key] = status
            result.ended[key] = status
            result.weights[key] = {n: self._exported(n, self.params[n][i]) for n in self.names}
        self._drop(set(ended))

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> Iterator[PackEpoch]:
        """Train every member to ``epochs``, yielding at every evaluated epoch (and at an
        epoch where members diverged in training). Resumable after ``load_member_state``."""
        if self.size and self.last_evaluated_epoch < self.epoch and is_eval_epoch(self.epoch, self.config):
            yield self.evaluate()
        while self.size and self.epoch < self.config.epochs:
            diverged = self.train_epoch()
            if diverged:
                blown = PackEpoch(self.epoch)
                self._end_members(blown, {key: DIVERGED for key in diverged})
                if not is_eval_epoch(self.epoch, self.config) or not self.size:
                    yield blown
                    continue
                measured = self.evaluate()
                measured.ended.update(blown.ended)
                measured.weights.update(blown.weights)
                yield measured
            elif is_eval_epoch(self.epoch, self.config):
                yield self.evaluate()

    # --- state (per member, in Trial.state_dict()'s format) -----------------------------
    def member_state(self, key: str) -> dict[str, Any]:
        """A running member's state, exactly as ``Trial.state_dict()`` lays it out (CPU tensors;
        W1(0) is left out: the member's seed rebuilds it)."""
        i = self.keys.index(key)
        config = self.configs[key]
        stepped = self.stepped[i] and config.momentum != 0.0
        return {
            "format": STATE_FORMAT,
            "config": config.to_dict(),
            "epoch": self.epoch,
            "last_evaluated_epoch": self.last_evaluated_epoch,
            "best_test_acc": self.best_test_acc[i],
            "status": self.status[key],
            "train_seconds": self.train_seconds,
            "model": {n: self._exported(n, self.params[n][i]) for n in self.names},
            "optimizer": {"lr": config.lr, "momentum": config.momentum,
                          "buffers": [self._exported(n, self.buffers[n][i]) for n in self.names] if stepped else None},
            "shuffle_generator": self.generators[i].get_state(),
        }

    def load_member_state(self, key: str, state: dict[str, Any]) -> None:
        """Restore one member from a ``Trial.state_dict()`` / ``member_state``. Every member of a
        pack must be restored to the same epoch (they train in lockstep).

        Raises:
            XmemError: the state does not fit the member's config (``check_state_fits``), or
                its epoch differs from the pack's other restored members.
        """
        config = self.configs[key]
        check_state_fits(state, config)
        i = self.keys.index(key)
        point = (state["epoch"], state["last_evaluated_epoch"])
        if self._restored_at is not None and point != self._restored_at:
            raise XmemError(f"member {key}'s checkpoint is at epoch {state['epoch']}, the pack's other "
                            f"members at {self._restored_at[0]}: members of one pack resume from "
                            "the same epoch")
        self._restored_at = point
        with torch.no_grad():
            for n in self.names:
                self.params[n][i] = self._stored(n, state["model"][n]).to(self.device)
            buffers = state["optimizer"]["buffers"]
            for n, j in zip(self.names, range(len(self.names))):
                self.buffers[n][i] = 0.0 if buffers is None else self._stored(n, buffers[j]).to(self.device)
            if "initial_hidden" in state:  # older states; newer ones leave W1(0) to the seed
                self.initial_hidden[i] = self._stored("hidden.weight", state["initial_hidden"]).to(self.device)
        self.generators[i].set_state(state["shuffle_generator"])
        self.stepped[i] = state["epoch"] > 0
        self.best_test_acc[i] = state["best_test_acc"]
        self.epoch = state["epoch"]
        self.last_evaluated_epoch = state["last_evaluated_epoch"]
        self.train_seconds = max(self.train_seconds, state["train_seconds"])
        self.status[key] = state["status"]
        if state["status"] != RUNNING:  # it had ended: nothing left to train
            self._drop({key})
