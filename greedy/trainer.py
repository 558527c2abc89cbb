"""One training loop for every stage: greedy stage j, or the whole net end to end (one stage)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, broadcast, set_seed
from torch import nn
from tqdm import tqdm

from greedy.builder import Stage
from greedy.checkpoint import RunDir, check_finite
from greedy.errors import TrainingDiverged, UsageError
from greedy.models import GreedyNet
from greedy.objectives import LocalObjective, total_loss
from greedy.optim import make_optimizer, make_scheduler
from greedy.schema import Config
from greedy.tracking import Tracker


def make_accelerator(cfg: Config) -> Accelerator:
    """One Accelerator per run: CPU, one GPU or many, with the config's precision and accumulation.

    Raises UsageError for fp16 on a CPU, which has no fp16 autocast (it would train in fp32 while the config says
    fp16).
    """
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with="wandb" if cfg.tracker == "wandb" else None,
        # Shuffling is a function of (seed, epoch): identical on every rank and after a resume.
        # non_blocking: copies of pinned batches to a GPU overlap with compute
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed,
                                                  non_blocking=cfg.pin_memory and torch.cuda.is_available()),
        step_scheduler_with_optimizer=False,
        # pipelined runs: a peer that stops answering is reported after pipeline_timeout seconds, not 30 minutes
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.pipeline_timeout))]
        if cfg.pipeline > 1 else None,
    )
    if cfg.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise UsageError("config key 'mixed_precision': fp16 does not run on a CPU (accelerate has no fp16 autocast "
                         "there and would train in fp32); use --mixed-precision bf16 (works on CPU) or no")
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
    return accelerator


def show_progress(cfg: Config, accelerator: Accelerator) -> bool:
    return accelerator.is_main_process and not cfg.no_progress and sys.stdout.isatty()


@dataclass
class StageResult:
    name: str
    index: int
    test_acc: float
    train_acc: float
    loss: float
    seconds: float


class StepResult(NamedTuple):
    """What one part's training step gives back: its loss (the sum of `terms`), its auxiliary net's logits
    (N x classes) and the objective's weighted loss terms (scalars, name -> tensor, still on the device)."""

    loss: torch.Tensor
    logits: torch.Tensor
    terms: dict[str, torch.Tensor]


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == labels).sum()


def as_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A batch in the memory format the net was converted to."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _fit(model: nn.Module, optimizer, accelerator: Accelerator, x: torch.Tensor, y: torch.Tensor,
         image: torch.Tensor | None = None) -> tuple[StepResult, torch.Tensor]:
    """Forward of a part (builder.LocalPart: its objective's terms computed inside, so DDP sees them), backward of
    their sum, step: (the step's result, the block output)."""
    h, logits, terms = model(x, y, image)
    loss = total_loss(terms)
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, logits, terms), h


def train_step(prefix: nn.Module, model: nn.Module, optimizer, accelerator: Accelerator, x: torch.Tensor,
               y: torch.Tensor, needs_input: bool = False) -> StepResult:
    """One optimisation step of `model` on `prefix(x)` and its local objective; the frozen prefix runs without a
    graph. `needs_input`: the objective reads the input images, handed to it as they are (`x`)."""
    with accelerator.accumulate(model):
        with torch.no_grad(), accelerator.autocast():
            features = prefix(x)
        result, _ = _fit(model, optimizer, accelerator, features, y, x if needs_input else None)
    return result


def decoupled_step(prefix: nn.Module, models: list[nn.Module], optimizers: list, accelerator: Accelerator,
                   x: torch.Tensor, y: torch.Tensor, needs_input: bool = False) -> list[StepResult]:
    """One step of every block+head part, each on its predecessor's detached output and its own local objective:
    one result per part. `needs_input`: the objectives read the input images (`x`).

    Each part's graph is freed by its own backward before the next part runs, so the activation memory is
    one block's, and no gradient crosses a block boundary.
    """
    results = []
    image = x if needs_input else None
    with accelerator.accumulate(*models):
        with torch.no_grad(), accelerator.autocast():
            x = prefix(x)
        for model, optimizer in zip(models, optimizers, strict=True):
            result, h = _fit(model, optimizer, accelerator, x, y, image)
            results.append(result)
            x = h.detach()
    return results


def stage_step(stage: Stage, models: list[nn.Module], optimizers: list, accelerator: Accelerator,
               x: torch.Tensor, y: torch.Tensor) -> list[StepResult]:
    """One training step of the stage: the result of each part."""
    if stage.decoupled:
        return decoupled_step(stage.prefix, models, optimizers, accelerator, x, y, stage.needs_input)
    return [train_step(stage.prefix, models[0], optimizers[0], accelerator, x, y, stage.needs_input)]


def stage_logits(stage: Stage, models: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """The logits of each part on prefix(x) (decoupled: the parts chained block to block)."""
    x = stage.prefix(x)
    if not stage.decoupled:
        return [models[0](x)[1]]
    logits = []
    for model in models:
        x, out = model(x)
        logits.append(out)
    return logits


class TermSums:
    """The sum over an epoch of each part's loss terms (x samples), on the device, for objectives of more than one
    term (a one-term objective's term is its loss, recorded already). Parts are numbered as the stage's parts."""

    def __init__(self, objectives: list[LocalObjective], device: torch.device):
        self.declared = [tuple(o.term_names) for o in objectives]
        self.names = [names if len(names) > 1 else () for names in self.declared]
        self.offsets = [sum(map(len, self.names[:j])) for j in range(len(objectives) + 1)]
        self.sums = torch.zeros(self.offsets[-1], device=device)
        self.decoupled = len(objectives) > 1

    def add(self, j: int, terms: dict[str, torch.Tensor], n: int) -> None:
        """Add part j's terms of one step of `n` samples. Raises ValueError when its objective returned other
        terms than its `term_names`."""
        if tuple(terms) != self.declared[j]:
            raise ValueError(f"the objective of part {j + 1} returned the terms {list(terms)} but declares "
                             f"{list(self.declared[j])} (LocalObjective.term_names)")
        if self.names[j]:
            self.sums[self.offsets[j]:self.offsets[j + 1]] += torch.stack(
                [terms[name].detach().float() for name in self.names[j]]) * n

    def wandb(self, j: int, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Part j's terms of this step as W&B values, `train/<term>` (decoupled: `train/<term>_block<j>`)."""
        suffix = f"_block{j + 1}" if self.decoupled else ""
        return {f"train/{name}{suffix}": terms[name].item() for name in self.names[j]}

    def means(self, totals: torch.Tensor) -> list[dict[str, float]]:
        """{`loss/<term>`: epoch mean} of each part, from the (reduced) sums divided by the samples."""
        values = totals.tolist()
        return [{f"loss/{name}": values[self.offsets[j] + i] for i, name in enumerate(names)}
                for j, names in enumerate(self.names)]


class DivergenceCheck:
    """Records, on the device, the first step whose loss is NaN or infinite; `check()` raises TrainingDiverged.

    Recording costs no device sync; each `check()` costs one, so the loop calls it every `finite_check_every`
    steps (default 1: training stops at the first non-finite loss) and at the end of every epoch.
    """

    def __init__(self, stage: Stage, epoch: int, device: torch.device):
        self.stage, self.epoch = stage, epoch
        self.first = torch.full((3,), -1, dtype=torch.long, device=device)  # step in epoch, global step, part

    def record(self, losses: torch.Tensor, step_in_epoch: int, step: int) -> None:
        finite = torch.isfinite(losses)
        part = (~finite).to(torch.long).argmax()
        new = torch.stack([torch.full_like(part, step_in_epoch), torch.full_like(part, step), part])
        self.first = torch.where((self.first[0] < 0) & ~finite.all(), new, self.first)

    def check(self) -> None:
        step_in_epoch, step, part = self.first.tolist()
        if step_in_epoch < 0:
            return
        where = self.stage.name if not self.stage.decoupled else f"{self.stage.name} {self.stage.part_ids()[part][1]}"
        raise TrainingDiverged(
            f"{where} diverged: the loss became non-finite at epoch {self.epoch + 1}, step {step_in_epoch} (global "
            f"step {step}); training stopped, finished stages and the last complete epoch's state are kept; lower "
            "--lr (or add --warmup-epochs) and start a new run")


def train_one_epoch(stage: Stage, models: list[nn.Module], loader, optimizers: list, accelerator: Accelerator,
                    tracker: Tracker, step: int, progress: bool, channels_last: bool = False,
                    log_every: int = 1, epoch: int = 0,
                    finite_check_every: int = 1) -> tuple[list[float], list[float], int, float, list[dict]]:
    """One pass over the training data: (mean loss per part, train accuracy per part, global step, s/step, mean
    of each loss term per part (TermSums.means)).

    Raises TrainingDiverged at the first non-finite loss (checked every `finite_check_every` steps and at the
    end), before the epoch's results or state are recorded anywhere.
    """
    for model in models:
        model.train()
    device = accelerator.device
    sums = torch.zeros(2, len(models), device=device)  # loss * n, correct
    seen = torch.zeros((), device=device)
    steps, t0 = 0, time.perf_counter()
    divergence = DivergenceCheck(stage, epoch, device)
    terms = TermSums(stage.objectives, device)
    for x, y in tqdm(loader, desc=stage.name, leave=False, disable=not progress):
        results = stage_step(stage, models, optimizers, accelerator, as_input(x, channels_last), y)
        losses = torch.stack([r.loss.detach().float() for r in results])
        sums[0] += losses * y.numel()
        sums[1] += torch.stack([accuracy_counts(r.logits.detach(), y) for r in results])
        for j, result in enumerate(results):
            terms.add(j, result.terms, y.numel())
        seen += y.numel()
        step += 1
        steps += 1
        divergence.record(losses, steps, step)
        if steps % finite_check_every == 0:
            divergence.check()
        if tracker.use_wandb and step % log_every == 0:  # .item() waits for the device: not every step
            values = {"train/loss": losses[-1].item(), "train/lr": optimizers[-1].param_groups[0]["lr"]}
            if stage.decoupled:
                values.update({f"train/loss_{name}": v for (_, name), v in zip(stage.part_ids(), losses.tolist(),
                                                                                strict=True)})
            for j, result in enumerate(results):
                values.update(terms.wandb(j, result.terms))
            tracker.log_step(values, step)
    divergence.check()
    seconds_per_step = (time.perf_counter() - t0) / max(steps, 1)
    totals = accelerator.reduce(torch.cat([sums.flatten(), terms.sums, seen[None]]), "sum")
    seen = totals[-1]
    loss, acc = (totals[:2 * len(models)].view(2, -1) / seen).tolist()
    return loss, acc, step, seconds_per_step, terms.means(totals[2 * len(models):-1] / seen)


@torch.no_grad()
def evaluate_parts(stage: Stage, models: list[nn.Module], loader, accelerator: Accelerator,
                   channels_last: bool = False) -> list[float]:
    """Test accuracy of each part, over exactly the test set (no padding duplicates)."""
    for model in models:
        model.eval()
    correct, total = torch.zeros(len(models), dtype=torch.long), 0
    for x, y in loader:
        with accelerator.autocast():
            preds = torch.stack([lg.argmax(1) for lg in stage_logits(stage, models, as_input(x, channels_last))], 1)
        preds, y = accelerator.gather_for_metrics((preds, y))
        correct += (preds == y[:, None]).sum(0).cpu()
        total += y.numel()
    return (correct / total).tolist()


@torch.no_grad()
def sync_buffers(models: list[nn.Module], accelerator: Accelerator) -> None:
    """Give every rank rank 0's BatchNorm statistics: each rank updated them on its own shard of the data."""
    if accelerator.num_processes == 1:
        return
    for model in models:
        for buf in accelerator.unwrap_model(model).buffers():
            buf.copy_(broadcast(buf.clone()))


def epoch_record(index: int, name: str, epoch: int, loss: float, terms: dict[str, float], train_acc: float,
                 held_out: str, held_out_acc: float, lr: float, seconds: float, cache_time: float,
                 step_time: float) -> dict[str, Any]:
    """One part's metrics.jsonl record of 0-based `epoch` of 0-based stage `index`: its mean loss and terms, train
    accuracy, accuracy on the held-out split (`test_acc`, or `val_acc` with a val_split), LR and seconds."""
    return {"stage": index + 1, "stage_name": name, "epoch": epoch + 1, "loss": loss, **terms,
            "train_acc": train_acc, f"{held_out}_acc": held_out_acc, "lr": lr, "time": seconds,
            "cache_time": cache_time, "step_time": step_time}


def epoch_line(record: dict[str, Any], epochs: int, held_out: str) -> str:
    """The printed line of an epoch record."""
    r = record
    return (f"{r['stage_name']} epoch {r['epoch']}/{epochs}  loss {r['loss']:.4f}  train {r['train_acc']:.4f}  "
            f"{held_out} {r[f'{held_out}_acc']:.4f}  lr {r['lr']:.4g}  {r['time']:.1f}s")


def train_stage(stage: Stage, cfg: Config, accelerator: Accelerator, loaders, run: RunDir, tracker: Tracker,
                resume_from=None, say=print, cache_seconds: float = 0.0, probes=None) -> StageResult:
    """Fit the stage's part(s) for the configured epochs, saving resumable state after every epoch.

    Greedy and e2e stages have one part; a decoupled stage has one per block, each with its own optimizer,
    scheduler and record per epoch (stage = block number), all in the same pass over the data.
    `cache_seconds`, the time spent building this stage's feature cache, is counted in the stage's time and
    reported on its own as `cache_time`. `probes` (greedy.analysis.during.TrainingProbes, optional) probes the
    block(s) being trained after an epoch's evaluation, before its state is saved.
    """
    epochs = cfg.train_epochs
    set_seed(cfg.seed + 1000 * (stage.index + 1), device_specific=True)  # augmentation RNG, per rank
    parts = [torch.compile(p) for p in stage.parts] if cfg.compile else stage.parts  # block(s) + head(s) only
    optimizers = [make_optimizer(cfg, p) for p in parts]
    schedulers = [make_scheduler(cfg, o, epochs) for o in optimizers]
    n = len(parts)
    prepared = accelerator.prepare(*parts, *optimizers, *loaders)
    models, optimizers, (train_loader, test_loader) = list(prepared[:n]), list(prepared[n:2 * n]), prepared[2 * n:]

    start_epoch, step, seconds, cache_time = 0, tracker.step, 0.0, 0.0  # step counts across stages (W&B x axis)
    if resume_from is not None:
        progress = run.load_state(accelerator, resume_from)
        start_epoch, step, seconds = progress["epoch"] + 1, progress["step"], progress["seconds"]
        cache_time = progress.get("cache_time", 0.0)
        say(f"resuming {stage.name} at epoch {start_epoch + 1}/{epochs} from {resume_from}")
    seconds, cache_time = seconds + cache_seconds, cache_time + cache_seconds  # a resume rebuilds the cache
    for _, name in stage.part_ids():
        tracker.begin_stage(name)
    show = show_progress(cfg, accelerator)
    held_out = cfg.held_out
    result = StageResult(stage.name, stage.index, float("nan"), float("nan"), float("nan"), seconds)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        for scheduler in schedulers:
            scheduler.step(epoch)  # the LR is a function of the epoch: nothing else to restore on resume
        train_loader.set_epoch(1000 * stage.index + epoch)
        lr = optimizers[0].param_groups[0]["lr"]
        losses, train_accs, step, step_time, terms = train_one_epoch(
            stage, models, train_loader, optimizers, accelerator, tracker, step, show, cfg.channels_last,
            cfg.log_every, epoch, cfg.finite_check_every)
        sync_buffers(models, accelerator)
        for model in models:  # a finite loss can still leave non-finite weights or BatchNorm statistics
            check_finite(accelerator.unwrap_model(model).state_dict(), f"{stage.name} epoch {epoch + 1}")
        test_accs = evaluate_parts(stage, models, test_loader, accelerator, cfg.channels_last)
        seconds += time.perf_counter() - t0
        for (index, name), loss, part_terms, train_acc, test_acc in zip(stage.part_ids(), losses, terms, train_accs,
                                                                        test_accs, strict=True):
            result = StageResult(stage.name, stage.index, test_acc, train_acc, loss, seconds)
            record = epoch_record(index, name, epoch, loss, part_terms, train_acc, held_out, test_acc, lr, seconds,
                                  cache_time, step_time)
            tracker.log_epoch(record, step)
            if accelerator.is_main_process:
                say(epoch_line(record, epochs, held_out))
        if probes is not None:  # every probe_every epochs; leaves the RNG and the weights as they were
            probes.after_epoch(stage, epoch, epochs, accelerator, tracker.log_probe)
        run.save_state(accelerator, stage.index, epoch, {"step": step, "seconds": seconds, "cache_time": cache_time})
        tracker.flush_epochs()
    tracker.step = step
    accelerator.free_memory()  # release this stage's prepared objects before the next stage
    stage.trainable.eval()
    return result


@torch.no_grad()
def evaluate_heads(net: GreedyNet, loader, accelerator: Accelerator,
                   channels_last: bool = False) -> dict[str, list[float]]:
    """Test accuracy of every head, and of the paper's ensemble of heads 0..j (softmax weighted by 2^j)."""
    net.eval()
    num = net.num_stages
    correct = torch.zeros(2, num, dtype=torch.long)
    total = 0
    weights = [2.0 ** j for j in range(num)]
    for x, y in loader:
        x, y = as_input(x.to(accelerator.device), channels_last), y.to(accelerator.device)
        with accelerator.autocast():
            logits = net.forward_heads(x)
        probs = torch.stack([w * F.softmax(lg.float(), dim=1) for w, lg in zip(weights, logits, strict=True)])
        heads = torch.stack([lg.float().argmax(1) for lg in logits])
        ensemble = probs.cumsum(0).argmax(2)
        heads, ensemble, y = accelerator.gather_for_metrics((heads.T, ensemble.T, y))
        correct[0] += (heads == y[:, None]).sum(0).cpu()
        correct[1] += (ensemble == y[:, None]).sum(0).cpu()
        total += y.numel()
    return {"head_acc": (correct[0] / total).tolist(), "ensemble_acc": (correct[1] / total).tolist()}
