"""Tables for people: the model's stages (--print-model) and the per-stage results of a run."""

from __future__ import annotations

from typing import Any

from torch import nn

from greedy.models import GreedyNet, stage_param_count


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table with one column per key of the first row."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1.0 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def describe_model(net: GreedyNet, in_chans: int, img_size: int,
                   objectives: list[nn.Module] | None = None) -> list[dict[str, Any]]:
    """Per local module (block): its units, input and output shapes (C x H x W, from a meta-device pass), its
    auxiliary net, and the parameters of module, head and the model assembled after its stage; with `objectives`
    (one per module) that own parameters, those too (`objective_params`: trained with the module, not part of
    the net)."""
    rows = []
    owned = [sum(p.numel() for p in o.parameters()) for o in objectives or []]
    for j, (in_shape, out_shape) in enumerate(net.module_shapes(in_chans, img_size)):
        names = net.module_units[j]
        counts = stage_param_count(net, j)
        rows.append({
            "stage": j + 1, "units": names[0] if len(names) == 1 else f"{names[0]}..{names[-1]} ({len(names)})",
            "input": "x".join(map(str, in_shape)), "block_out": "x".join(map(str, out_shape)),
            "head": type(net.heads[j]).__name__, "block_params": counts["block"], "head_params": counts["head"],
            **({"objective_params": owned[j]} if any(owned) else {}), "model_params": counts["model"],
        })
    return rows


def result_rows(net: GreedyNet, mode: str, heads: dict[str, list[float]], seconds: dict[int, float]) -> list[dict]:
    """One row per trained stage (decoupled: per block): its head's test accuracy, the ensemble's, parameters and
    wall time (decoupled: the one joint pass, on the last row)."""
    last = net.num_stages - 1
    per_block = mode in ("greedy", "decoupled")
    stages = range(net.num_stages) if per_block else [last]

    def time_s(j: int) -> float | None:
        return seconds.get(j) if mode != "decoupled" else (max(seconds.values(), default=None) if j == last else None)

    return [{
        "stage": j + 1 if per_block else "e2e",
        "test_acc": heads["head_acc"][j],
        "ensemble_acc": heads["ensemble_acc"][j] if per_block else None,
        "params": stage_param_count(net, j)["model"],
        "time_s": time_s(j),
    } for j in stages]
