"""The comparison's plots (scripts/compare.py): accuracy by depth, accuracy against time, activation memory, and
the local objectives' loss terms; each returns PNG bytes without metadata that would change between reruns."""

from __future__ import annotations

import io
import math
import statistics

from greedy.compare import Group, time_curve

LINESTYLES = {"greedy": "-", "decoupled": "--", "e2e": ":"}


def _figure(panels: int = 0):
    """(pyplot, figure, axes): one axes (panels 0), or a row of `panels` axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        return plt, *plt.subplots(figsize=(7, 4.5), dpi=100)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4), dpi=100, squeeze=False)
    return plt, fig, list(axes[0])


def _png(plt, fig) -> bytes:
    """The figure as PNG bytes, without metadata that would change between identical plots."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _style(g: Group, groups: list[Group]) -> dict:
    """Color, line style and legend label of a group: by k in a (mode, k) grid, by method in a methods table."""
    keys = list(dict.fromkeys(x.label if x.method else x.k for x in groups))
    key = g.label if g.method else g.k
    label = g.label if g.method else g.mode if g.k is None else f"{g.mode} k={g.k}"
    return {"color": f"C{keys.index(key) % 10}", "ls": LINESTYLES[g.mode], "label": label}


def plot_depth(groups: list[Group]) -> bytes:
    """Test accuracy of stage j's head (greedy, decoupled), mean ± std over seeds; e2e's final as a line."""
    plt, fig, ax = _figure()
    for g in groups:
        mean = [100 * m for m, _ in g.depth]
        std = [0.0 if math.isnan(s) else 100 * s for _, s in g.depth]
        style = _style(g, groups)
        if g.mode == "e2e":
            ax.axhline(mean[-1], **{**style, "label": f"{style['label']} (final)"})
            continue
        ax.errorbar(range(1, len(g.depth) + 1), mean, yerr=std, marker="o", capsize=3, **style)
    ax.set(xlabel="stage (block) j", ylabel="test accuracy of head j (%)", title="Accuracy by depth")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_time(groups: list[Group]) -> bytes:
    """Test accuracy after every epoch against training seconds so far, both averaged over seeds."""
    plt, fig, ax = _figure()
    for g in groups:
        curves = [time_curve(r) for r in g.results]
        n = min(len(c) for c in curves)
        seconds = [statistics.fmean(c[i][0] for c in curves) for i in range(n)]
        accs = [100 * statistics.fmean(c[i][1] for c in curves) for i in range(n)]
        ax.plot(seconds, accs, marker=".", **_style(g, groups))
    ax.set(xlabel="training wall time (s, cumulative over stages)", ylabel="test accuracy (%)",
           title="Accuracy vs wall-clock time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_memory(groups: list[Group]) -> bytes:
    """Peak activation memory (bytes saved for backward in one step) per mode or method, bars grouped by k."""
    plt, fig, ax = _figure()
    labels = list(dict.fromkeys(g.label for g in groups))
    ks = sorted({g.k for g in groups}, key=lambda k: (k is None, k or 0))  # None: a run that reads no k
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        found = {g.k: g.cost.peak_activation_bytes / 2**20 for g in groups if g.label == label}
        xs = [ks.index(k) + (i - (len(labels) - 1) / 2) * width for k in found]
        bars = ax.bar(xs, list(found.values()), width, label=label, color=f"C{i % 10}")
        ax.bar_label(bars, fontsize=7, fmt="%.1f")
    ax.set_xticks(range(len(ks)), [f"k={k}" if k is not None else "no k" for k in ks])
    ax.set(ylabel="MiB saved for backward (one step, max over stages)", title="Peak activation memory")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_loss_terms(groups: list[Group]) -> bytes:
    """Each local objective's loss terms (`loss/<term>` of metrics.jsonl, weighted as trained) of every module
    against the epoch, averaged over seeds: one panel per group whose objective has terms."""
    panels = [(g, _term_curves(g)) for g in groups]
    panels = [(g, curves) for g, curves in panels if curves] or [(None, {})]
    plt, fig, axes = _figure(len(panels))
    for ax, (g, curves) in zip(axes, panels, strict=True):
        for i, ((stage, term), values) in enumerate(sorted(curves.items())):
            ax.plot(range(1, len(values) + 1), values, color=f"C{stage % 10}", ls=["-", "--", ":", "-."][i % 4],
                    label=f"module {stage} {term}")
        ax.set(xlabel="epoch", ylabel="loss term (weighted)", title=g.label if g else "no loss terms recorded")
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=6)
    return _png(plt, fig)


def _term_curves(g: Group) -> dict[tuple[int, str], list[float]]:
    """(module, term) -> its mean over seeds at each epoch (as many epochs as every seed has)."""
    per_seed = []
    for result in g.results:
        curves: dict[tuple[int, str], list[float]] = {}
        for record in result.metrics:
            for key, value in record.items():
                if key.startswith("loss/"):
                    curves.setdefault((record["stage"], key[5:]), []).append(value)
        per_seed.append(curves)
    keys = set.intersection(*(set(c) for c in per_seed)) if per_seed else set()
    epochs = {key: min(len(c[key]) for c in per_seed) for key in keys}
    return {key: [statistics.fmean(c[key][i] for c in per_seed) for i in range(epochs[key])] for key in keys}
