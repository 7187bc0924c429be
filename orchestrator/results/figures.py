"""The report's figures, drawn with matplotlib (Agg) from the results tables of
``orchestrator.results.tables``: the same tables ``xmem export`` writes, nothing recomputed.

Panels are the groups of trials that differ only in sigma and seed (``grouping.panel_keys``:
one per dataset / activation / loss / ... combination); within a panel one curve or point per
sigma, the mean over seeds, with the seeds' range (curves) or standard deviation (points)
around it. Only finished and diverged trials are drawn, never runs of stale trial ids. Final
values are values at the trial's last epoch (``grouping.finals``): a metric whose value is
from an earlier epoch is left out of the figures of finals, and their captions say so.

    fig1_test_acc_over_epochs.png     test accuracy over epochs, one curve per sigma (Fig. 1a)
    fig2_accuracy_vs_sigma.png        final train and best test accuracy against sigma
    fig3_alignment_vs_sigma.png       final align/grad and align/rep against sigma
    fig3_alignment_over_epochs.png    align/grad and align/rep over epochs, per sigma
    fig4_test_acc_vs_alignment.png    best test accuracy against align/grad, every trial,
                                      coloured by dataset, Spearman's rho when the trials
                                      are one setup differing in sigma and dataset (Fig. 1b)
    fig5_conditions.png               only when the sweep varies model or shuffle_labels:
                                      best test accuracy and align/rep per condition (Fig. 5)

Importing this module imports matplotlib; import it only when drawing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import pyarrow as pa  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402

from orchestrator.results import grouping, tables  # noqa: E402
from orchestrator.results.claims.regime import like_groups  # noqa: E402
from orchestrator.results.grouping import (SIGMA, alignment_correlation, by_sigma, chance,  # noqa: E402
                                           condition_groups, group_rows, summarize)
from orchestrator.text import format_value  # noqa: E402
from workers import contract  # noqa: E402

PANEL_SIZE = (4.6, 3.4)  # inches
MAX_COLUMNS = 3
DPI = 110
CONDITION_KEYS = ("model", "shuffle_labels")
GLOROT = "glorot"  # label of sigma null (both layers glorot-uniform)
SIGMA_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


@dataclass(frozen=True)
class FigureFile:
    """One written figure."""

    path: Path
    title: str
    caption: str


def draw_figures(trials: pa.Table, history: pa.Table | None, out_dir: Path) -> list[FigureFile]:
    """Draw every figure the sweep's data allows into ``out_dir``; return what was written."""
    rows = grouping.finals(grouping.result_rows(trials))
    if not rows:
        return []
    ids = {row[tables.TRIAL_ID] for row in rows}
    history_rows = [] if history is None else [r for r in history.to_pylist()
                                                if r[tables.TRIAL_ID] in ids]
    sweep = _Sweep(rows, history_rows)
    drawn = []
    with plt.rc_context({"axes.titlesize": 10}):
        for draw in (_fig1, _fig2, _fig3_sigma, _fig3_epochs, _fig4, _fig5):
            made = draw(sweep, out_dir)
            if made is not None:
                drawn.append(made)
    return drawn


class _Sweep:
    """The result rows, the panels they fall into, and a colour per sigma."""

    def __init__(self, rows: list[dict[str, Any]], history_rows: list[dict[str, Any]]):
        self.rows = rows
        self.history_rows = history_rows
        self.panel_keys = grouping.panel_keys(rows)
        self.linked = grouping.sigma_linked_keys(rows)
        self.panels = group_rows(rows, self.panel_keys)
        sigmas = sorted({r[SIGMA] for r in rows if r.get(SIGMA) is not None})
        self.norm = mcolors.LogNorm(vmin=sigmas[0], vmax=sigmas[-1]) if len(sigmas) > 1 else None
        self.sigmas = sigmas

    def panel_title(self, values: tuple, members: Sequence[Mapping[str, Any]]) -> str:
        """The panel's setting: dataset, activation, loss (and model) even when constant,
        then the other keys that tell panels apart."""
        first = members[0]
        parts = [str(first.get("dataset")), str(first.get("activation")), str(first.get("loss"))]
        if first.get("model") != "mlp" or "model" in self.panel_keys:
            parts.append(str(first.get("model")))
        shown = {"dataset", "activation", "loss", "model"}
        extra = [f"{k}={format_value(v)}" for k, v in zip(self.panel_keys, values)
                 if k not in shown]
        return " · ".join(parts) + ("\n" + " · ".join(extra) if extra else "")

    def panels_with_history(self) -> list[tuple[tuple, list[dict[str, Any]]]]:
        """The panels whose trials have a metric history (epochs to draw)."""
        with_history = {row[tables.TRIAL_ID] for row in self.history_rows}
        return [(values, members) for values, members in self.panels.items()
                if any(m[tables.TRIAL_ID] in with_history for m in members)]

    def color(self, sigma: float | None):
        if sigma is None:
            return "black"
        if self.norm is None:
            return "tab:blue"
        return plt.get_cmap("viridis")(0.9 * self.norm(sigma))

    def sigma_label(self, member: Mapping[str, Any]) -> str:
        sigma = member.get(SIGMA)
        label = f"σ={GLOROT if sigma is None else f'{sigma:g}'}"
        if self.linked:
            label += " (" + ", ".join(f"{k}={format_value(member.get(k))}"
                                      for k in self.linked) + ")"
        return label

    def chance(self, members: Sequence[Mapping[str, Any]]) -> float | None:
        datasets = {m.get("dataset") for m in members}
        return chance(datasets.pop()) if len(datasets) == 1 else None


def _grid(count: int, rows_per_panel: int = 1):
    columns = min(MAX_COLUMNS, count)
    panel_rows = math.ceil(count / columns)
    figure, axes = plt.subplots(panel_rows * rows_per_panel, columns, squeeze=False,
                                figsize=(PANEL_SIZE[0] * columns,
                                         PANEL_SIZE[1] * panel_rows * rows_per_panel))
    return figure, axes


def _hide_unused(axes, used: int, rows_per_panel: int = 1) -> None:
    columns = axes.shape[1]
    for index in range(used, (axes.shape[0] // rows_per_panel) * columns):
        for sub in range(rows_per_panel):
            axes[(index // columns) * rows_per_panel + sub][index % columns].set_visible(False)


def _save(figure, out_dir: Path, name: str, title: str, caption: str) -> FigureFile:
    figure.tight_layout()
    path = out_dir / name
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return FigureFile(path, title, caption)


def _curves(sweep: _Sweep, members: Sequence[Mapping[str, Any]], metric: str
            ) -> list[tuple[Mapping[str, Any], list[int], list[float], list[float], list[float]]]:
    """Per sigma (and linked keys) in ``members``: (a member, epochs, mean, min, max) of
    ``metric`` over the replicate trials, at the epochs where it was logged."""
    keys = [SIGMA] + sweep.linked
    curves = []
    ordered = sorted(group_rows(members, keys).items(),
                     key=lambda item: (item[0][0] is None, item[0][0] or 0.0))
    for _, replicates in ordered:
        ids = {r[tables.TRIAL_ID] for r in replicates}
        by_epoch: dict[int, list[float]] = {}
        for row in sweep.history_rows:
            if row[tables.TRIAL_ID] in ids and row.get(metric) is not None:
                by_epoch.setdefault(row[contract.EPOCH], []).append(row[metric])
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        values = [by_epoch[e] for e in epochs]
        curves.append((replicates[0], epochs, [sum(v) / len(v) for v in values],
                       [min(v) for v in values], [max(v) for v in values]))
    return curves


def _plot_curves(sweep: _Sweep, axis, members, metric: str) -> bool:
    curves = _curves(sweep, members, metric)
    for member, epochs, mean, low, high in curves:
        color = sweep.color(member.get(SIGMA))
        axis.plot(epochs, mean, color=color, label=sweep.sigma_label(member), linewidth=1.4)
        if low != high:
            axis.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
    return bool(curves)


def _fig1(sweep: _Sweep, out_dir: Path) -> FigureFile | None:
    panels = sweep.panels_with_history()
    if not panels:
        return None
    figure, axes = _grid(len(panels))
    for index, (values, members) in enumerate(panels):
        axis = axes[index // axes.shape[1]][index % axes.shape[1]]
        drawn = _plot_curves(sweep, axis, members, contract.TEST_ACC)
        level = sweep.chance(members)
        if level is not None:
            axis.axhline(level, color="gray", linestyle=":", linewidth=1, label="chance")
        axis.set(title=sweep.panel_title(values, members), xlabel="epoch",
                 ylabel="test accuracy", ylim=(0, 1))
        if drawn:
            axis.legend(fontsize=7)
    _hide_unused(axes, len(panels))
    return _save(figure, out_dir, "fig1_test_acc_over_epochs.png", "Test accuracy over epochs",
                 "Test accuracy at every evaluated epoch, one curve per sigma (mean over seeds, "
                 "band: the seeds' range); the paper's Fig. 1a.")


def _finals_caption(caption: str, rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]
                    ) -> str:
    """``caption``, and the rule for final values with what it left out of ``metrics``, when
    it left anything out."""
    if not any(grouping.without_final(rows, metric) for metric in metrics):
        return caption
    note = grouping.finals_note(rows, metrics)
    return f"{caption} {note[0].upper()}{note[1:]}."


def _against_sigma(sweep: _Sweep, out_dir: Path, name: str, title: str, caption: str,
                   series: Sequence[tuple[str, str, str]], ylabel: str,
                   chance_line: bool) -> FigureFile | None:
    panels = [(values, members) for values, members in sweep.panels.items()
              if any(m.get(SIGMA) is not None for m in members)]
    if not panels or not sweep.sigmas:
        return None
    figure, axes = _grid(len(panels))
    for index, (values, members) in enumerate(panels):
        axis = axes[index // axes.shape[1]][index % axes.shape[1]]
        for metric, style, label in series:
            points = by_sigma(members, metric)
            if not points:
                continue
            axis.errorbar([s for s, _ in points], [p.mean for _, p in points],
                          yerr=[p.spread for _, p in points], fmt=style, capsize=3,
                          label=label, markersize=5)
        level = sweep.chance(members)
        if chance_line and level is not None:
            axis.axhline(level, color="gray", linestyle=":", linewidth=1, label="chance")
        axis.set_xscale("log")
        axis.set(title=sweep.panel_title(values, members), xlabel="σ (first-layer init std)",
                 ylabel=ylabel)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    _hide_unused(axes, len(panels))
    caption = _finals_caption(caption, sweep.rows, [metric for metric, _, _ in series])
    return _save(figure, out_dir, name, title, caption)


def _fig2(sweep: _Sweep, out_dir: Path) -> FigureFile | None:
    return _against_sigma(
        sweep, out_dir, "fig2_accuracy_vs_sigma.png", "Accuracy against sigma",
        "Final train accuracy and best test accuracy against sigma (log axis): mean over seeds, "
        "error bars one standard deviation; dotted: chance.",
        [(contract.TRAIN_ACC, "o-", "final train acc"),
         (contract.TEST_BEST_ACC, "s--", "best test acc")], "accuracy", chance_line=True)


def _fig3_sigma(sweep: _Sweep, out_dir: Path) -> FigureFile | None:
    return _against_sigma(
        sweep, out_dir, "fig3_alignment_vs_sigma.png", "Alignment against sigma",
        "Final gradient alignment (align/grad, all parameters) and representation alignment "
        "(align/rep, hidden layer, train probe) against sigma: mean over seeds, error bars one "
        "standard deviation.",
        [(contract.ALIGN_GRAD, "o-", contract.ALIGN_GRAD), (contract.ALIGN_REP, "s--", contract.ALIGN_REP)],
        "alignment Ω", chance_line=False)


def _fig3_epochs(sweep: _Sweep, out_dir: Path) -> FigureFile | None:
    panels = sweep.panels_with_history()
    if not panels:
        return None
    figure, axes = _grid(len(panels), rows_per_panel=2)
    columns = axes.shape[1]
    for index, (values, members) in enumerate(panels):
        for sub, metric in enumerate((contract.ALIGN_GRAD, contract.ALIGN_REP)):
            axis = axes[(index // columns) * 2 + sub][index % columns]
            drawn = _plot_curves(sweep, axis, members, metric)
            axis.set(title=sweep.panel_title(values, members), xlabel="epoch", ylabel=metric)
            if drawn:
                axis.legend(fontsize=7)
    _hide_unused(axes, len(panels), rows_per_panel=2)
    return _save(figure, out_dir, "fig3_alignment_over_epochs.png", "Alignment over epochs",
                 "align/grad (upper row) and align/rep (lower row) at every alignment epoch, one "
                 "curve per sigma (mean over seeds, band: the seeds' range).")


def _fig4(sweep: _Sweep, out_dir: Path) -> FigureFile | None:
    from matplotlib.lines import Line2D

    usable = [r for r in sweep.rows if r.get(contract.ALIGN_GRAD) is not None
              and r.get(contract.TEST_BEST_ACC) is not None]
    if not usable:
        return None
    # A rank correlation over trials of different setups measures the mix (claim 3 compares
    # like with like): with several setups no rho is drawn; the claims table has one per setup.
    setups = len(like_groups(usable, (SIGMA, "dataset")))
    overall, per_dataset = alignment_correlation(usable) if setups == 1 else (None, {})
    sigmas = sorted({r.get(SIGMA) for r in usable}, key=lambda s: (s is None, s or 0.0))
    marker = {sigma: SIGMA_MARKERS[i % len(SIGMA_MARKERS)] for i, sigma in enumerate(sigmas)}
    figure, axis = plt.subplots(figsize=(6.4, 4.6))
    handles = []
    for index, ((dataset,), members) in enumerate(group_rows(usable, ["dataset"]).items()):
        color = plt.get_cmap("tab10")(index % 10)
        for (sigma,), at_sigma in group_rows(members, [SIGMA]).items():
            axis.scatter([m[contract.ALIGN_GRAD] for m in at_sigma],
                         [m[contract.TEST_BEST_ACC] for m in at_sigma],
                         color=color, marker=marker[sigma], s=30, alpha=0.85)
        rho = per_dataset.get(dataset)
        label = (dataset if setups > 1 else f"{dataset} (ρ = {rho[0]:+.2f}, n = {rho[2]})" if rho
                 else f"{dataset} (ρ undefined)")
        handles.append(Line2D([], [], color=color, marker="o", linestyle="", label=label))
    handles += [Line2D([], [], color="gray", marker=marker[sigma], linestyle="",
                       label=f"σ={GLOROT if sigma is None else f'{sigma:g}'}") for sigma in sigmas]
    if setups > 1:
        title = f"{setups} setups: ρ per setup in the claims table (claim 3)"
    elif overall is None:
        title = "Spearman's ρ over all trials: undefined"
    else:
        title = (f"Spearman's ρ over all trials = {overall[0]:+.2f} (p = {overall[1]:.2g}, "
                 f"n = {overall[2]})")
    axis.set(title=title, xlabel=f"{contract.ALIGN_GRAD} (final)", ylabel="best test accuracy")
    axis.legend(handles=handles, fontsize=8)
    caption = ("Every trial's best test accuracy against its final gradient alignment, coloured "
               "by dataset (marker: sigma), with Spearman's ρ overall and per dataset when the "
               "trials differ only in sigma, dataset and seed; the paper's Fig. 1b.")
    if setups > 1:
        caption += f" These trials are {setups} setups: no ρ is drawn."
    caption = _finals_caption(caption, sweep.rows, (contract.ALIGN_GRAD,))
    return _save(figure, out_dir, "fig4_test_acc_vs_alignment.png",
                 "Best test accuracy against gradient alignment", caption)


def _fig5(sweep: _Sweep, out_dir: Path) -> FigureFile | None:
    # Compare conditions only at otherwise identical config (the seeds apart), as the paper.
    groups = [(title, members) for title, members in condition_groups(sweep.rows, CONDITION_KEYS)
              if len(group_rows(members, CONDITION_KEYS)) > 1]
    if not groups:
        return None
    figure, axes = plt.subplots(len(groups), 2, squeeze=False,
                                figsize=(2 * PANEL_SIZE[0], PANEL_SIZE[1] * len(groups)))
    for index, (title, members) in enumerate(groups):
        conditions = sorted(group_rows(members, CONDITION_KEYS).items(),
                            key=lambda item: (item[0][0] != "mlp", item[0][0], item[0][1]))
        labels = [f"{model}\n{'shuffled' if shuffled else 'true'} labels"
                  for (model, shuffled), _ in conditions]
        for column, metric in enumerate((contract.TEST_BEST_ACC, contract.ALIGN_REP)):
            axis = axes[index][column]
            summaries = [summarize(r.get(metric) for r in group) for _, group in conditions]
            axis.bar(range(len(conditions)), [s.mean if s else math.nan for s in summaries],
                     yerr=[s.spread if s else 0 for s in summaries], capsize=3,
                     color=[plt.get_cmap("tab10")(i % 10) for i in range(len(conditions))])
            axis.set_xticks(range(len(conditions)), labels, fontsize=8)
            axis.set(title=f"{title}\n{metric}", ylabel=metric)
            if metric == contract.TEST_BEST_ACC:
                axis.axhline(chance(members[0]["dataset"]), color="gray", linestyle=":",
                             linewidth=1)
    caption = _finals_caption(
        "Best test accuracy and final representation alignment per architecture and label "
        "condition, at otherwise identical config: mean over seeds, error bars one standard "
        "deviation; dotted: chance. The paper's Fig. 5.",
        [r for _, members in groups for r in members], (contract.ALIGN_REP,))
    return _save(figure, out_dir, "fig5_conditions.png", "Architectures and label conditions",
                 caption)
