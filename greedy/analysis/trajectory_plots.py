"""PNG figures of the probes recorded during training (records of kind "probe" in metrics.jsonl): each probe's
values against the epoch, one curve per (run, block)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from greedy.analysis.plots import figure, number, save_png

# probe -> (file, figure title, panels: (record key, y label, panel title, key of its standard error or None))
TRAJECTORIES: dict[str, tuple[str, str, list[tuple[str, str, str, str | None]]]] = {
    "linear": ("during_linear.png", "Linear probe during training (test subset; dotted: train subset)",
               [("linear_test_acc", "accuracy", "logistic regression on the block output", None)]),
    "knn": ("during_knn.png", "k-NN probe during training (test subset)",
            [("knn_test_acc", "accuracy", "k-NN (cosine) on the block output", None)]),
    "clustering": ("during_clustering.png", "Class clustering during training (test subset)",
                   [("nc1", "NC1", "neural collapse NC1 (lower: more collapsed)", None),
                    ("scatter_ratio", "Tr(S_W) / Tr(S_B)", "within / between scatter (lower: tighter)", None),
                    ("silhouette", "silhouette", "silhouette (higher: better separated)", None)]),
    "binned_entropy": ("during_binned_entropy.png", "H(Bin(T)) during training (deterministic net)",
                       [("h_bin", "nats", "H(Bin(T_l)) of the PCA readout", None)]),
    "information": ("during_information.png", "I(X;T_l) in the noisy network during training (SP estimate)",
                    [("mi_xt", "nats", "I(X;T_l) (band: Monte-Carlo standard error)", "mi_xt_stderr")]),
}
EPOCH_LABEL = "epoch of the stage training the block (greedy: stage j trains block j; e2e, decoupled: all blocks)"


def plot_trajectories(runs: list[tuple[str, list[dict[str, Any]]]], out_dir: Path) -> list[Path]:
    """One PNG per probe recorded during training: its values against the epoch, one curve per (run, block).

    `runs`: (label, probe records) per run; colours are blocks, line styles runs (solid: the first, dashed: the
    second), so a greedy run and its e2e twin share every figure. x is the epoch within the stage the block was
    trained in (greedy stage j trains block j; e2e and decoupled train every block in every epoch). Returns the
    paths written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [r for _, rs in runs for r in rs]
    written = []
    for name, title, panels in TRAJECTORIES.values():
        panels = [p for p in panels if any(p[0] in r for r in records)]
        if not panels:
            continue
        fig, axes = figure(len(panels), title, width=4.6 if len(panels) > 1 else 6.4, height=4.0)
        fig.supxlabel(EPOCH_LABEL, fontsize=8)
        for ax, (key, ylabel, panel_title, err_key) in zip(axes, panels, strict=True):
            for style, (label, rs) in zip(("-", "--", ":", "-."), runs, strict=False):
                _trajectory(ax, label, rs, key, err_key, style)
                if key == "linear_test_acc":
                    _trajectory(ax, label, rs, "linear_train_acc", None, ":", legend=False)
            if key == "mi_xt":
                top = max((math.log(r["mi_xt_n"]) for r in records if r.get("mi_xt_n")), default=None)
                if top is not None:
                    ax.axhline(top, color="gray", linestyle="--", linewidth=1, label="ln n (max)")
                beta = next((r["beta"] for r in records if "beta" in r), None)
                panel_title += f", beta={beta}" if beta is not None else ""
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.set_title(panel_title, fontsize=10)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax is axes[0]:  # the same curves in every panel: one legend
                ax.legend(fontsize=7)
        save_png(fig, out_dir / name)
        written.append(out_dir / name)
    return written


def _trajectory(ax: Axes, label: str, records: list[dict[str, Any]], key: str, err_key: str | None, style: str,
                legend: bool = True) -> None:
    """One curve per (stage, layer) of one run: `key` against the epoch; a band of +-`err_key` if given."""
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if key in r:
            curves.setdefault((r["stage_name"], r["layer"]), []).append(r)
    for (stage, layer), rs in curves.items():
        color = f"C{(int(layer.removeprefix('block')) - 1) % 10}" if layer.startswith("block") else "k"
        xs = np.array([r["epoch"] for r in rs], dtype=float)
        ys = np.array([number(r[key]) for r in rs])
        where = layer if stage in (layer, f"stage{layer.removeprefix('block')}") else f"{layer}, {stage}"
        ax.plot(xs, ys, style, marker="o" if style != ":" else None, markersize=3, color=color,
                label=f"{label}: {where}" if legend else None)
        if err_key is not None:
            err = np.array([number(r.get(err_key)) for r in rs])
            ax.fill_between(xs, ys - err, ys + err, color=color, alpha=0.2, linewidth=0)
