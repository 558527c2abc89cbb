"""PNG figures of an analysis (the dict written to analysis.json); runs A and B share every plot.

Uses matplotlib's object API with the Agg canvas only: no pyplot, no display, no global state.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter
from PIL import Image

from greedy.files import atomic_write

COLORS = ("C0", "C3", "C2", "C1")
DPI = 110
Run = dict[str, Any]  # one entry of analysis["runs"]: label, results, ...


def save_png(fig: Figure, path: Path) -> None:
    """Write the figure as a 256-colour palette PNG (a third of the RGBA size, same look for line plots)."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png", facecolor="white")
    buf.seek(0)
    image = Image.open(buf).convert("RGB").quantize(colors=256)
    atomic_write(path, lambda p: image.save(p, format="PNG", optimize=True))


def number(value: Any) -> float:
    """A JSON number (None for non-finite) as a float, nan for None."""
    return float("nan") if value is None else float(value)


def _x(entry: dict[str, Any]) -> float:
    """Plot position of a layer: its depth; a head's hidden layer sits a quarter step per layer after its block."""
    return entry["depth"] + 0.25 * entry.get("hidden", 0) if entry["kind"] == "head" else entry["depth"]


def _hidden_index(results: dict[str, Any]) -> dict[str, int]:
    """Layer name -> index of a head's hidden layer (from the run's layer list)."""
    return {la["name"]: la.get("hidden", 0) for la in results.get("layers", [])}


def _series(run: Run, family: str, key: str, kinds: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one per-layer value over the layers of the given kinds."""
    hidden = _hidden_index(run["results"])
    rows = [e for e in run["results"][family]["layers"] if e["kind"] in kinds]
    xs = [_x({**e, "hidden": hidden.get(e["layer"], 0)}) for e in rows]
    return np.array(xs, dtype=float), np.array([number(e.get(key)) for e in rows])


def _depth_plot(ax: Axes, runs: list[Run], family: str, key: str, label: str = "", style: str = "-",
                marker: str = "o") -> None:
    """One line per run over input/block depths, head hidden layers as unconnected markers."""
    for color, run in zip(COLORS, runs, strict=False):
        xs, ys = _series(run, family, key, ("input", "block"))
        ax.plot(xs, ys, style, marker=marker, color=color, label=f"{run['label']}{label}")
        hx, hy = _series(run, family, key, ("head",))
        if hx.size:
            ax.plot(hx, hy, linestyle="none", marker="x", color=color, label=f"{run['label']} head hidden{label}")


def _depth_axis(ax: Axes, runs: list[Run], family: str, ylabel: str, title: str = "") -> None:
    """Integer depth ticks labelled input / block j, grid, labels, legend."""
    depths = sorted({e["depth"] for run in runs for e in run["results"][family]["layers"]})
    ax.set_xticks(depths, ["input" if d == 0 else f"block{d}" for d in depths])
    ax.set_xlabel("depth")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _log_axis(ax: Axes, axis: str = "y", ticks: list[float] | None = None) -> None:
    """Log scale with plain-number labels (major ticks only; `ticks` if given)."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    if ticks is not None:
        target.set_ticks(ticks)
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def figure(ncols: int, title: str, width: float = 4.6, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    """A one-row figure with a suptitle."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0].tolist()
    fig.suptitle(title, fontsize=11)
    return fig, axes


def plot_probes(runs: list[Run], path: Path) -> None:
    """Linear-probe (train and test) and kNN accuracy by depth."""
    fams = [f for f in ("linear", "knn") if f in runs[0]["results"]]
    fig, axes = figure(len(fams), "Probe accuracy by depth (test subset)")
    for ax, fam in zip(axes, fams, strict=True):
        if fam == "linear":
            _depth_plot(ax, runs, "linear", "test_acc", " test")
            _depth_plot(ax, runs, "linear", "train_acc", " train", style=":", marker=".")
            k = runs[0]["results"]["linear"]["settings"]
            _depth_axis(ax, runs, fam, "accuracy", f"linear probe (logistic regression, C={k['linear_c']})")
        else:
            _depth_plot(ax, runs, "knn", "test_acc")
            _depth_axis(ax, runs, fam, "accuracy", f"k-NN probe (k={runs[0]['results']['knn']['settings']['knn_k']})")
    save_png(fig, path)


def plot_clustering(runs: list[Run], path: Path) -> None:
    """Tr(S_W)/Tr(S_B), NC1 and silhouette by depth."""
    fig, axes = figure(3, "Class clustering by depth (test subset)")
    for ax, key, ylabel in ((axes[0], "ratio", "Tr(S_W) / Tr(S_B)"), (axes[1], "nc1", "NC1"),
                            (axes[2], "silhouette", "silhouette")):
        _depth_plot(ax, runs, "clustering", key)
        _depth_axis(ax, runs, "clustering", ylabel, {"ratio": "within / between scatter (lower: tighter)",
                                                     "nc1": "neural collapse NC1 (lower: more collapsed)",
                                                     "silhouette": "silhouette (higher: better separated)"}[key])
    save_png(fig, path)


def plot_information(runs: list[Run], path: Path) -> None:
    """I(X;T_l) by depth, H(Bin(T_l)) next to it, and the plane of I(X;T_l) against probe accuracy."""
    res = runs[0]["results"]
    have = [f for f in ("information", "binned_entropy") if f in res]
    plane = "information" in res and "linear" in res
    fig, axes = figure(len(have) + plane, "Information by depth")
    for ax, fam in zip(axes, have, strict=False):
        key = "mi_nats" if fam == "information" else "h_bin"
        _depth_plot(ax, runs, fam, key)
        s = res[fam]["settings"]
        if fam == "information":
            _error_bars(ax, runs)
            title = f"I(X;T_l), noisy net (SP, beta={s['beta']}, d={s['info_dim']})"
        else:
            title = f"H(Bin(T_l)), deterministic net ({s['n_bins']} bins, d={s['info_dim']})"
        ax.axhline(res[fam]["max_nats"], color="gray", linestyle="--", linewidth=1, label="ln n (max)")
        _depth_axis(ax, runs, fam, "nats", title)
    if plane:
        _information_plane(axes[-1], runs)
    save_png(fig, path)


def _error_bars(ax: Axes, runs: list[Run]) -> None:
    """Monte-Carlo standard errors of the block-layer I(X;T_l) estimates."""
    for color, run in zip(COLORS, runs, strict=False):
        xs, ys = _series(run, "information", "mi_nats", ("block",))
        _, err = _series(run, "information", "stderr_nats", ("block",))
        ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=color, capsize=3)


def _information_plane(ax: Axes, runs: list[Run]) -> None:
    """I(X;T_l) against the linear probe's test accuracy, one point per block, labelled by depth."""
    for color, run in zip(COLORS, runs, strict=False):
        info = {e["layer"]: e for e in run["results"]["information"]["layers"] if e["kind"] == "block"}
        lin = {e["layer"]: e for e in run["results"]["linear"]["layers"]}
        names = [n for n in info if n in lin]
        xs = [info[n]["mi_nats"] for n in names]
        ys = [lin[n]["test_acc"] for n in names]
        ax.plot(xs, ys, "-o", color=color, label=run["label"])
        for n, xv, yv in zip(names, xs, ys, strict=True):
            ax.annotate(n.replace("block", ""), (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8,
                        color=color)
    ax.set_xlabel("I(X;T_l) [nats]")
    ax.set_ylabel("linear probe test accuracy")
    ax.set_title("information plane (numbers: depth)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _heatmap(fig: Figure, ax: Axes, matrix: np.ndarray, rows: list[str], cols: list[str], title: str) -> None:
    """A CKA matrix in [0, 1] with its values written in the cells."""
    im = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if matrix.size <= 144:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)


def plot_cka(runs: list[Run], path: Path) -> None:
    """Linear CKA between every pair of layers, one heatmap per run."""
    fig, axes = figure(len(runs), "Linear CKA between layers (test subset)", width=5.0, height=4.4)
    for ax, run in zip(axes, runs, strict=True):
        cka = run["results"]["cka"]
        m = np.array([[number(v) for v in row] for row in cka["matrix"]])
        _heatmap(fig, ax, m, cka["names"], cka["names"], run["label"])
    save_png(fig, path)


def plot_cka_compare(runs: list[Run], compare: dict[str, Any], path: Path) -> None:
    """Linear CKA between the layers of run A (rows) and run B (columns)."""
    fig, axes = figure(1, "Linear CKA, run A vs run B (same test inputs)", width=5.6, height=4.8)
    m = np.array([[number(v) for v in row] for row in compare["matrix"]])
    _heatmap(fig, axes[0], m, [f"A {n}" for n in compare["names_a"]], [f"B {n}" for n in compare["names_b"]],
             f"A = {runs[0]['label']}\nB = {runs[1]['label']}")
    save_png(fig, path)


def plot_noise(runs: list[Run], path: Path) -> None:
    """Test error under Gaussian input noise, and the implied distance to the error set, against sigma."""
    fig, axes = figure(2, "Gaussian input noise (Ford et al. 2019)")
    for color, run in zip(COLORS, runs, strict=False):
        noise = run["results"]["noise"]
        sig = np.array(noise["sigmas"], dtype=float)
        for i, model in enumerate(noise["models"]):
            style = "-" if model["model"] == "final" else (":", "-.", "--")[i % 3]
            label = f"{run['label']} {model['model']}"
            axes[0].plot(sig, model["mean_error"], style, marker="o", color=color, label=label)
            axes[1].plot(sig, [number(v) for v in model["distance_from_mean_error"]], style, marker="o", color=color,
                         label=f"{label}: from mean error")
            axes[1].plot(sig, [number(v) for v in model["median_distance"]], style, marker="s", color=color,
                         alpha=0.5, label=f"{label}: median per point")
    axes[0].set_ylabel("test error on x + N(0, sigma^2 I)")
    axes[0].set_title("error in noise", fontsize=10)
    axes[1].set_ylabel("implied distance -sigma Phi^-1(p)")
    axes[1].set_title("implied distance (missing: p = 0 or p >= 1/2)", fontsize=10)
    sigmas = [float(v) for v in runs[0]["results"]["noise"]["sigmas"]]
    for ax in axes:
        _log_axis(ax, "x", sigmas)
        ax.set_xlabel("sigma (input units)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_png(fig, path)


def plot_spectrum(runs: list[Run], path: Path) -> None:
    """Power-law alpha of every conv/linear layer; hollow: too few eigenvalues; x: untrained head."""
    names = list(dict.fromkeys(e["layer"] for run in runs for e in run["results"]["spectrum"]["layers"]))
    fig, axes = figure(1, "Heavy-tailed weight spectra (Martin & Mahoney)", width=max(6.0, 0.8 * len(names)))
    ax = axes[0]
    ax.axhspan(2.0, 6.0, color="green", alpha=0.08, label="2 < alpha < 6")
    offsets = np.linspace(-0.12, 0.12, len(runs)) if len(runs) > 1 else [0.0]
    for color, run, off in zip(COLORS, runs, offsets, strict=False):
        for e in run["results"]["spectrum"]["layers"]:
            if e.get("alpha") is None:
                continue
            marker = "x" if not e["trained"] else "o"
            face = color if e["reliable"] or marker == "x" else "none"
            ax.plot(names.index(e["layer"]) + off, e["alpha"], marker=marker, color=color, markerfacecolor=face,
                    linestyle="none")
        ax.plot([], [], "o", color=color, label=run["label"])
    few = runs[0]["results"]["spectrum"]["settings"]["min_eigs_reliable"]
    ax.plot([], [], "o", color="gray", markerfacecolor="none", label=f"< {few} eigenvalues: fit means little")
    ax.plot([], [], "x", color="gray", label="untrained head")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    alphas = [e["alpha"] for run in runs for e in run["results"]["spectrum"]["layers"] if e.get("alpha")]
    _log_axis(ax, "y", [t for t in (1, 1.5, 2, 3, 4, 6, 10, 20, 50, 100) if t <= max(alphas + [6.0]) * 1.2])
    ax.set_ylabel("alpha")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_png(fig, path)


def plot_regions(runs: list[Run], path: Path) -> None:
    """Linear regions per unit length per neuron, and the mean distance to the nearest boundary, by depth."""
    fig, axes = figure(3, "Linear regions along segments from test inputs (Hanin & Rolnick 2019)")
    for ax, key, ylabel in ((axes[0], "regions_per_length", "regions per unit length"),
                            (axes[1], "regions_per_length_per_neuron", "regions / length / neuron"),
                            (axes[2], "mean_boundary_distance", "mean distance to nearest boundary")):
        _depth_plot(ax, runs, "regions", key)
        _depth_axis(ax, runs, "regions", ylabel)
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylim(bottom=0)
    save_png(fig, path)


def _init_and_trained(ax: Axes, runs: list[Run], family: str, key: str, label: str = "") -> None:
    """`key` of the trained net (solid) and `init_key` of the net at initialization (dotted) by depth."""
    _depth_plot(ax, runs, family, key, f"{label} trained")
    if any(f"init_{key}" in e for run in runs for e in run["results"][family]["layers"]):
        _depth_plot(ax, runs, family, f"init_{key}", f"{label} init", style=":", marker=".")


def plot_moments(runs: list[Run], path: Path) -> None:
    """Normalized sensitivity chi, and effective ranks of the signal and the noise, by depth; init dotted."""
    fig, axes = figure(3, "Signal and noise moments by depth (Labatie 2019); dotted: at initialization")
    _init_and_trained(axes[0], runs, "moments", "chi")
    axes[0].axhline(1.0, color="gray", linestyle="--", linewidth=1)
    _depth_axis(axes[0], runs, "moments", "chi", "normalized sensitivity chi (> 1: noise grows vs signal)")
    _log_axis(axes[0])
    for ax, key, what in ((axes[1], "reff_signal", "signal"), (axes[2], "reff_noise", "noise")):
        _init_and_trained(ax, runs, "moments", key)
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        _depth_axis(ax, runs, "moments", "Tr C / lambda_max", f"effective rank of the {what} (1: one-dimensional)")
        _log_axis(ax)
    save_png(fig, path)


def plot_chaos(runs: list[Run], path: Path) -> None:
    """Pair correlations by depth against the mean-field map, and the layers on the edge-of-chaos plane."""
    fig, axes = figure(2, "Signal propagation and the edge of chaos (Poole et al. 2016, Hayou et al. 2019)")
    ax = axes[0]
    _init_and_trained(ax, runs, "chaos", "c", " measured")
    for color, run in zip(COLORS, runs, strict=False):
        for prefix, marker in (("", "s"), ("init_", "^")):
            xs, ys = _series(run, "chaos", f"{prefix}c_pred", ("block",))
            if np.isfinite(ys).any():
                ax.plot(xs, ys, linestyle="none", marker=marker, markerfacecolor="none", color=color,
                        label=f"{run['label']} {'init' if prefix else 'trained'}: one-step map")
    _depth_axis(ax, runs, "chaos", "correlation of input pairs", "pre-activation correlation (hollow: mean-field map)")
    ax.legend(fontsize=6)
    ax = axes[1]
    eoc = {name: c for run in runs for name, c in run["results"]["chaos"]["eoc"].items()}
    for style, (name, curve) in zip(("-", "--", "-.", ":"), eoc.items(), strict=False):
        sw = np.array([number(v) for v in curve["sigma_w"]])
        ax.plot(curve["sigma_b"], sw, style, color="k", label=f"EOC {name}")
        if np.isfinite(sw).sum() == 1:  # a single point (ReLU, linear: sigma_b = 0 only)
            ax.plot(np.array(curve["sigma_b"])[np.isfinite(sw)], sw[np.isfinite(sw)], "*", color="k", markersize=12)
    for color, run in zip(COLORS, runs, strict=False):
        for prefix, face in (("init_", "none"), ("", color)):
            rows = [e for e in run["results"]["chaos"]["layers"] if e.get(f"{prefix}sigma_w2") is not None]
            xs = [np.sqrt(e[f"{prefix}sigma_b2"]) for e in rows]
            ys = [np.sqrt(e[f"{prefix}sigma_w2"]) for e in rows]
            ax.plot(xs, ys, "o", color=color, markerfacecolor=face, linestyle="none",
                    label=f"{run['label']} {'init' if prefix else 'trained'}")
            for e, xv, yv in zip(rows, xs, ys, strict=True):
                ax.annotate(str(e["depth"]), (xv, yv), textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=color)
    top = max([max(c["sigma_b"]) for c in eoc.values()] + [1.0])
    ax.set_xlim(-0.03 * top, top)
    ax.set_xlabel("sigma_b")
    ax.set_ylabel("sigma_w = sqrt(fan_in Var W)")
    ax.set_title("edge of chaos (chi_1 = 1); points: blocks (numbers: depth)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_png(fig, path)


def plot_anisotropy(runs: list[Run], path: Path) -> None:
    """Tr(H Sigma) and its isotropic equivalent per trained stage and for the whole net, and their ratio."""
    views = list(dict.fromkeys(e["layer"] for run in runs for e in run["results"]["anisotropy"]["layers"]))
    fig, axes = figure(2, "SGD noise vs curvature (Zhu et al. 2019)", width=max(4.6, 1.0 * len(views) + 1.5))
    offsets = np.linspace(-0.1, 0.1, len(runs)) if len(runs) > 1 else [0.0]
    for color, run, off in zip(COLORS, runs, offsets, strict=False):
        rows = run["results"]["anisotropy"]["layers"]
        xs = np.array([views.index(e["layer"]) for e in rows], dtype=float) + off
        axes[0].plot(xs, [number(e["tr_h_sigma"]) for e in rows], "o", color=color,
                     label=f"{run['label']}: Tr(H Sigma), top-{rows[0]['rank']}")
        axes[0].plot(xs, [number(e["tr_h_sigma_iso"]) for e in rows], "s", color=color, markerfacecolor="none",
                     label=f"{run['label']}: Tr(H) Tr(Sigma) / D")
        axes[1].plot(xs, [number(e["ratio"]) for e in rows], "o", color=color, label=run["label"])
        for xv, e in zip(xs, rows, strict=True):
            axes[1].annotate(f"{number(e['top_fraction']):.0%}", (xv, number(e["ratio"])), textcoords="offset points",
                             xytext=(5, -3), fontsize=7, color=color)
    axes[1].axhline(1.0, color="gray", linestyle="--", linewidth=1, label="isotropic noise")
    axes[0].set_title("indicator and its isotropic equivalent", fontsize=10)
    axes[1].set_title("ratio (labels: top-r share of Tr(H))", fontsize=10)
    axes[0].set_ylabel("per-sample gradient noise (batch size 1)")
    axes[1].set_ylabel("Tr(H Sigma) / (Tr(H) Tr(Sigma) / D)")
    for ax in axes:
        values = [v for line in ax.get_lines() for v in np.asarray(line.get_ydata(), dtype=float) if v > 0]
        if values:
            _log_axis(ax, "y")
        ax.set_xticks(range(len(views)), views)
        ax.set_xlabel("trained problem (net: all blocks + final head)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_png(fig, path)


def plot_connectivity(runs: list[Run], path: Path) -> None:
    """Train loss and test accuracy along the straight line from run A to run B, one curve per head."""
    conn = runs[0]["results"]["connectivity"]
    other = runs[1]["label"] if len(runs) > 1 else "B"
    fig, axes = figure(2, f"Linear path: alpha 0 = {runs[0]['label']}, alpha 1 = {other}")
    alphas = np.array(conn["alphas"], dtype=float)
    for i, p in enumerate(conn["paths"]):
        final = p["model"] == "final"
        style = {"color": "k" if final else f"C{i}", "linestyle": "-" if final else "--", "marker": "o",
                 "markersize": 4, "linewidth": 2 if final else 1}
        loss, acc = [number(v) for v in p["train_loss"]], [number(v) for v in p["test_acc"]]
        axes[0].plot(alphas, loss, label=f"{p['model']} (barrier {number(p['train_loss_barrier']):.3g})", **style)
        axes[1].plot(alphas, acc, label=f"{p['model']} (error barrier {number(p['test_error_barrier']):.3g})",
                     **style)
        if final:
            axes[0].plot(alphas[[0, -1]], [loss[0], loss[-1]], ":", color="gray", label="chord (final)")
            for ax, key in ((axes[0], "stored_bn_train_loss"), (axes[1], "stored_bn_test_acc")):
                ends = ", ".join(f"{number(v):.3g}" for v in p[key])  # often far off the path: legend only
                ax.plot([], [], " ", label=f"final at alpha 0, 1 with stored BatchNorm statistics: {ends}")
    bn = "BatchNorm statistics recomputed at every point" if conn["bn_recomputed"] else "no BatchNorm"
    axes[0].set_title(f"train loss (train subset; {bn})", fontsize=9)
    axes[1].set_title("test accuracy (test subset)", fontsize=9)
    axes[0].set_ylabel("cross-entropy")
    axes[1].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel("alpha")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_png(fig, path)


PLOTS: dict[str, tuple[tuple[str, ...], Callable[[list[Run], Path], None]]] = {
    "probes.png": (("linear", "knn"), plot_probes),
    "clustering.png": (("clustering",), plot_clustering),
    "information.png": (("information", "binned_entropy"), plot_information),
    "cka.png": (("cka",), plot_cka),
    "noise.png": (("noise",), plot_noise),
    "spectrum.png": (("spectrum",), plot_spectrum),
    "regions.png": (("regions",), plot_regions),
    "moments.png": (("moments",), plot_moments),
    "chaos.png": (("chaos",), plot_chaos),
    "anisotropy.png": (("anisotropy",), plot_anisotropy),
    "connectivity.png": (("connectivity",), plot_connectivity),
}


def make_plots(analysis: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write every plot whose families were run into out_dir; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = analysis["runs"]
    written = []
    for name, (families, plot) in PLOTS.items():
        if any(f in runs[0]["results"] and not runs[0]["results"][f].get("skipped") for f in families):
            plot(runs, out_dir / name)
            written.append(out_dir / name)
    compare = analysis.get("compare", {}).get("cka")
    if compare is not None and len(runs) > 1:
        plot_cka_compare(runs, compare, out_dir / "cka_compare.png")
        written.append(out_dir / "cka_compare.png")
    return written
