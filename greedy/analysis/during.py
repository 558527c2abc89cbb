"""Probes during training: every `probe_every` epochs, the block(s) being trained, on fixed seeded subsets.

Goldfeld et al. (*Estimating Information Flow in Deep Neural Networks*, ICML 2019) follow I(X;T_l) of the noisy
network over the course of training (it falls as same-class representations cluster). This module only schedules
and records: the numbers are the runner's layer families (`greedy.registry.PROBES`: the same estimators,
settings and readouts as `evaluate.py --analysis`), restricted to the block(s) being trained, on a test subset and
a train subset (read without augmentation) drawn once per run. Greedy stage j probes block j; e2e and decoupled
stages probe every block. Each (stage, epoch, layer) becomes one record of kind "probe" in metrics.jsonl, written
before the epoch's resumable state, so a resume truncates probe records exactly like epoch records.

Only the main process computes, on the net itself (not the DDP or compiled wrappers), while the others wait; the
torch, numpy and python RNG states and every module's train/eval flag are restored afterwards, so a run with
probes ends with the same weights as one without (tested bit for bit).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator

from greedy.analysis.context import AnalysisSettings, Context
from greedy.analysis.representations import Sample, seeded_sample
from greedy.analysis.runner import cpu_threads
from greedy.datasets import DataBundle
from greedy.models import GreedyNet
from greedy.registry import PROBES
from greedy.schema import Config


class TrainedStage(Protocol):
    """What a probe needs of the stage being trained (greedy.builder.Stage has it): its name, whether it is
    decoupled, and the (0-based index, name) its records go under."""

    name: str

    @property
    def decoupled(self) -> bool: ...

    def part_ids(self) -> list[tuple[int, str]]: ...


KIND = "probe"  # the "kind" of a probe record in metrics.jsonl (epoch records have no "kind")
HEADLINE = ("linear_test_acc", "knn_test_acc", "nc1", "h_bin", "mi_xt")  # printed after each probe


def probed_layers(stage: TrainedStage, num_blocks: int) -> list[tuple[int, str, str]]:
    """(0-based stage index, stage name, layer) of every probe record one epoch of `stage` writes.

    The stage index and name are those of the stage's epoch records, so each probe record sits next to one:
    greedy stage j -> block j; e2e -> every block under the e2e stage; decoupled -> block j under part block j.
    """
    if stage.decoupled:
        return [(j, name, f"block{j + 1}") for j, name in stage.part_ids()]
    [(index, name)] = stage.part_ids()
    blocks = range(num_blocks) if stage.name == "e2e" else [index]
    return [(index, name, f"block{j + 1}") for j in blocks]


@contextmanager
def untouched(net: GreedyNet) -> Iterator[None]:
    """Leave what training depends on as it was: torch's CPU (and CUDA) RNG, numpy's and python's RNG, and the
    train/eval flag of every module of the net."""
    modes = [(m, m.training) for m in net.modules()]
    np_state, py_state = np.random.get_state(), random.getstate()
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        for module, training in modes:
            module.train(training)


class TrainingProbes:
    """The probes of one run: which, how often, and the fixed subsets they read (drawn at the first probe)."""

    def __init__(self, cfg: Config, net: GreedyNet, data: DataBundle):
        self.every = cfg.probe_every
        self.names = list(cfg.probes)
        self.net = net
        self.data = data
        # the analysis defaults (pool 2x2, beta 0.5, a 3-d readout, ...) on probe_samples inputs, seeded by the run
        self.settings = AnalysisSettings(samples=cfg.probe_samples, seed=cfg.seed)
        self._samples: tuple[Sample, Sample] | None = None
        self.held_out = cfg.held_out  # the split `data.test` is: "val" with a val_split (keys keep "test")

    @classmethod
    def for_run(cls, cfg: Config, net: GreedyNet, data: DataBundle) -> TrainingProbes | None:
        """The run's probes, or None when `probe_every` is 0."""
        return cls(cfg, net, data) if cfg.probe_every else None

    def due(self, epoch: int, epochs: int) -> bool:
        """Probe after 0-based `epoch`: every `probe_every` epochs of a stage, and its last epoch."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == epochs

    def samples(self) -> tuple[Sample, Sample]:
        """(train, test) subsets of probe_samples items each, seeded by the run's seed; the train one unaugmented."""
        if self._samples is None:
            s = self.settings
            self._samples = (seeded_sample(self.data.unaugmented_train(), s.samples, s.seed),
                             seeded_sample(self.data.test, s.samples, s.seed))
        return self._samples

    def measure(self, layers: list[str]) -> dict[str, dict[str, Any]]:
        """Every probe on the named layers of the net as it is now: {layer: {record key: value}}.

        Raises ValueError (from the estimators) when the subsets hold fewer than two classes.
        """
        ctx = Context(self.net, self.data, self.settings, only=tuple(layers), samples=self.samples())
        values: dict[str, dict[str, Any]] = {layer: {} for layer in layers}
        with cpu_threads(self.settings.threads):
            for name in self.names:
                for entry in PROBES[name](ctx)["layers"]:
                    values[entry["layer"]].update({key: entry[f] for f, key in PROBES[name].during.items()})
        return values

    def after_epoch(self, stage: TrainedStage, epoch: int, epochs: int, accelerator: Accelerator,
                    log: Callable[[dict[str, Any]], None]) -> None:
        """If due, probe the block(s) `stage` trains and `log` one record per layer (the trainer passes its
        tracker's log_probe; main process only, the others wait).

        Records: {"kind": "probe", "stage", "stage_name", "epoch" (1-based, as the epoch records), "layer",
        the probes' values (accuracies in [0, 1], mi_xt in nats), "probe_time" (seconds of this epoch's probes,
        not counted in the stage's training time), "held_out" (the split the `*_test_*` values read: "test", or
        "val" with a val_split)}.
        """
        if not self.due(epoch, epochs):
            return
        if accelerator.is_main_process:
            t0 = time.perf_counter()
            targets = probed_layers(stage, self.net.num_stages)
            with untouched(self.net), torch.no_grad():
                values = self.measure([layer for _, _, layer in targets])
            seconds = time.perf_counter() - t0
            for index, name, layer in targets:
                log({"kind": KIND, "stage": index + 1, "stage_name": name, "epoch": epoch + 1, "layer": layer,
                     **values[layer], "probe_time": seconds, "held_out": self.held_out})
            shown = "  ".join(f"{layer}: " + " ".join(f"{k} {v:.4g}" for k, v in values[layer].items()
                                                       if k in HEADLINE and isinstance(v, float))
                              for _, _, layer in targets)
            print(f"{stage.name} epoch {epoch + 1}/{epochs} probes  {shown}  ({seconds:.1f}s)")
        accelerator.wait_for_everyone()
