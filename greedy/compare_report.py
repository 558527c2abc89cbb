"""The comparison's report (scripts/compare.py): comparison.md, comparison.csv and the plots, for a grid trained
from one config or for run directories compared as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from greedy import compare_plots as plots
from greedy.compare import METHODS, Group, aggregate, budget_rule, csv_text, depth_table, markdown_table, memory_table
from greedy.files import write_bytes
from greedy.schema import Config

PLOTS = {"accuracy_by_depth.png": plots.plot_depth, "accuracy_vs_time.png": plots.plot_time,
         "memory.png": plots.plot_memory, "loss_terms.png": plots.plot_loss_terms}


def write_if_changed(path: Path, data: str | bytes) -> None:
    """Write a report file only when its content changed (a rerun that trains nothing changes nothing)."""
    data = data.encode() if isinstance(data, str) else data
    if not path.exists() or path.read_bytes() != data:
        write_bytes(path, data)


def grid_header(experiment: str, config_path: str, cfg: Config, budget: str, local_mode: str, methods: bool,
                command: str) -> list[str]:
    """The opening lines of a grid trained from one config: what was trained, on what, under which budget."""
    what = (f"every method trains the same architecture, split into K = {cfg.num_blocks} local modules, the local "
            f"ones in mode {local_mode}," if methods else "every mode trains the same architecture for a given k")
    return [
        f"# {experiment}: {'methods of local learning' if methods else 'greedy vs end-to-end vs decoupled'}", "",
        f"`{command}`", "",
        f"Config `{config_path}` ({cfg.dataset}, widths {cfg.widths}, downsample {cfg.downsample}, batch "
        f"{cfg.batch_size}, lr {cfg.lr:g}, augment {cfg.augment}); {what} on the same data with the same optimizer, "
        "schedule shape, augmentation and seeds.", "",
        budget_rule(cfg, budget), "",
    ]


def runs_header(experiment: str, paths: list[str], differing: list[str], groups: list[Group],
                command: str) -> list[str]:
    """The opening lines of run directories compared as they are."""
    keys = ", ".join(differing) if differing else "nothing but the seed"
    return [
        f"# {experiment}: runs compared as they were trained", "",
        f"`{command}`", "",
        f"{len(paths)} finished run directories ({', '.join(f'`{p}`' for p in paths)}), nothing retrained; runs "
        f"whose configs differ only in seed (and in how they executed) are one group, {len(groups)} in all. The "
        f"groups differ in: {keys}. Each run's config is its own `config.yaml`.", "",
    ]


def best_stage_note(rows: list[dict[str, Any]]) -> str:
    """What the best-stage column selected on: the validation split (val_split) or, honestly flagged, the test set."""
    on_test = [r.get("method") or r["mode"] for r in rows if r["best_stage"] is not None and r["selected_on"] == "test"]
    if not on_test:
        return ("- *best stage*: the stage whose head has the best mean accuracy on the **validation split** "
                "(val_split; greedy, decoupled), and that head's test accuracy; *final* is the last head's.")
    return ("- *best stage*: the stage whose head has the best mean test accuracy (greedy, decoupled): **chosen on "
            f"the test set** ({', '.join(on_test)}: trained without val_split), so its accuracy is an optimistic "
            "estimate; *final* is the last head's, chosen by nothing.")


def report_markdown(header: list[str], groups: list[Group], rows: list[dict[str, Any]], methods: bool) -> str:
    """comparison.md: the header, the tables and what every column means."""
    lines = [
        *header,
        "Mean ± std over seeds (sample std; none shown for one seed).", "",
        markdown_table(rows), "",
        "Test accuracy of each stage's head (e2e trains only the last one):", "",
        depth_table(groups), "",
        "Activation memory: MiB saved for backward in one training step of each piece that is backpropagated on "
        "its own (greedy: block j + its auxiliary net and its objective's modules; decoupled: each block + the same, "
        "on the detached output of the block before; e2e: the whole net), at the config's batch size:", "",
        memory_table(groups), "",
        best_stage_note(rows),
        "- *k*: hidden layers of each auxiliary problem; — where no auxiliary net of the run reads k.",
        "- *ensemble*: the paper's ensemble of all heads (softmax outputs weighted by 2^j).",
        "- *train s*: the epochs of all stages including the per-epoch test evaluation (summary.json "
        "`total_time_s`; decoupled: its one joint pass). *process s*: wall time of the train.py process(es), "
        "also counting start-up, data loading, the feature cache and the final evaluation (summed over resumed "
        "segments; runs trained at once with --jobs share the CPU; — for runs compared as they are).",
        "- *training FLOPs*: torch.utils.flop_counter.FlopCounterMode on one training step (forward + backward, "
        "2 FLOPs per multiply-add; the optimizer step and per-epoch evaluation not counted) per stage on a random "
        "batch of the data set's shape, per image x training images x epochs.",
        "- *images / block*: training images each block is fit on (epochs x training-set size).",
        "- *peak activations*: bytes autograd saves for backward in one training step at the config's batch "
        "size (greedy.profiling.saved_tensor_bytes, parameters excluded), max over greedy stages / decoupled "
        "parts (each part's graph is freed by its own backward); measured on CPU.",
        "- *auxiliary params*: parameters trained only to train the net: the auxiliary nets of modules 1..K-1 and "
        "the local objectives' own modules (PredSim's conv and linear layer, InfoPro's decoder and head, AugLocal's "
        "copied units, MAN's copies and base); 0 for e2e.",
        "- loss_terms.png: each local objective's weighted loss terms per module and epoch, mean over seeds.",
    ]
    if methods:
        lines.append("- *methods*: " + "; ".join(f"{g.label}: " + (", ".join(
            f"{k} {v}" for k, v in METHODS[g.label].items()) or "the config as it is") for g in groups) +
            " (e2e_ckpt: end to end with torch.utils.checkpoint per unit, each unit's activations recomputed in "
            "the backward pass).")
    if any(r["feature_cache"] for r in rows):
        lines.append("- ¹ greedy trains on cached features (`greedy.cache`, augment none): the frozen prefix's "
                     "forward is counted once per stage (one block forward over the training set as the cache "
                     "advances), not in every epoch; the steps count block j + head j only.")
    return "\n".join(lines) + "\n"


def write_report(folder: Path, header: list[str], groups: list[Group], methods: bool) -> list[dict[str, Any]]:
    """comparison.csv, comparison.md and the plots in `folder`, each written only if it changed; the rows."""
    rows = aggregate(groups)
    folder.mkdir(parents=True, exist_ok=True)
    write_if_changed(folder / "comparison.csv", csv_text(rows))
    write_if_changed(folder / "comparison.md", report_markdown(header, groups, rows, methods))
    for name, plot in PLOTS.items():
        write_if_changed(folder / name, plot(groups))
    return rows
