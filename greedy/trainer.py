"""One training loop for every stage: greedy stage j, or the whole net end to end (one stage)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm import tqdm

from greedy.builder import Stage
from greedy.checkpoint import RunDir
from greedy.config import Config
from greedy.models import GreedyNet
from greedy.tracking import Tracker


def make_accelerator(cfg: Config) -> Accelerator:
    """One Accelerator per run: CPU, one GPU or many, with the config's precision and accumulation."""
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with="wandb" if cfg.tracker == "wandb" else None,
        # Shuffling is a function of (seed, epoch): identical on every rank and after a resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        step_scheduler_with_optimizer=False,
    )


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


def stage_epochs(cfg: Config, stage: Stage) -> int:
    return (cfg.e2e_epochs or cfg.epochs) if stage.name == "e2e" else cfg.epochs


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == labels).sum()


def train_step(prefix: nn.Module, model: nn.Module, optimizer, accelerator: Accelerator,
               x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step of `model` on `prefix(x)`; the frozen prefix runs without a graph."""
    with accelerator.accumulate(model):
        with torch.no_grad(), accelerator.autocast():
            x = prefix(x)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss, logits


def train_one_epoch(stage: Stage, model: nn.Module, loader, optimizer, accelerator: Accelerator,
                    tracker: Tracker, step: int, progress: bool) -> tuple[float, float, int]:
    """One pass over the training data; returns (mean loss, train accuracy, global step)."""
    model.train()
    device = accelerator.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = torch.zeros((), device=device, dtype=torch.long)
    for x, y in tqdm(loader, desc=stage.name, leave=False, disable=not progress):
        loss, logits = train_step(stage.prefix, model, optimizer, accelerator, x, y)
        loss_sum += loss.detach() * y.numel()
        correct += accuracy_counts(logits.detach(), y)
        seen += y.numel()
        step += 1
        if tracker.use_wandb:
            tracker.log_step({"train/loss": loss.item(), "train/lr": optimizer.param_groups[0]["lr"]}, step)
    loss_sum, correct, seen = accelerator.reduce(torch.stack([loss_sum, correct.float(), seen.float()]), "sum")
    return (loss_sum / seen).item(), (correct / seen).item(), step


@torch.no_grad()
def evaluate(stage: Stage, model: nn.Module, loader, accelerator: Accelerator) -> float:
    """Test accuracy of `model(prefix(x))`, over exactly the test set (no padding duplicates)."""
    model.eval()
    correct, total = 0, 0
    for x, y in loader:
        with accelerator.autocast():
            preds = model(stage.prefix(x)).argmax(1)
        preds, y = accelerator.gather_for_metrics((preds, y))
        correct += (preds == y).sum().item()
        total += y.numel()
    return correct / total


def train_stage(stage: Stage, cfg: Config, accelerator: Accelerator, loaders, run: RunDir, tracker: Tracker,
                resume_from=None, say=print) -> StageResult:
    """Fit `stage.trainable` for the configured epochs, saving resumable state after every epoch."""
    epochs = stage_epochs(cfg, stage)
    set_seed(cfg.seed + 1000 * (stage.index + 1), device_specific=True)  # augmentation RNG, per rank
    trainable = stage.trainable
    if cfg.compile:
        trainable = torch.compile(trainable)
    optimizer = create_optimizer_v2(trainable, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum, filter_bias_and_bn=False)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=epochs, decay_epochs=cfg.decay_epochs,
                                       decay_rate=cfg.decay_rate, warmup_epochs=cfg.warmup_epochs)
    model, optimizer, train_loader, test_loader = accelerator.prepare(trainable, optimizer, *loaders)

    start_epoch, step, seconds = 0, 0, 0.0
    if resume_from is not None:
        progress = run.load_state(accelerator, resume_from)
        start_epoch, step, seconds = progress["epoch"] + 1, progress["step"], progress["seconds"]
        say(f"resuming {stage.name} at epoch {start_epoch + 1}/{epochs} from {resume_from}")
    tracker.begin_stage(stage.name)
    show = show_progress(cfg, accelerator)
    result = StageResult(stage.name, stage.index, float("nan"), float("nan"), float("nan"), seconds)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        scheduler.step(epoch)  # the LR is a function of the epoch: nothing else to restore on resume
        train_loader.set_epoch(1000 * stage.index + epoch)
        lr = optimizer.param_groups[0]["lr"]
        loss, train_acc, step = train_one_epoch(stage, model, train_loader, optimizer, accelerator, tracker,
                                                step, show)
        test_acc = evaluate(stage, model, test_loader, accelerator)
        seconds += time.perf_counter() - t0
        result = StageResult(stage.name, stage.index, test_acc, train_acc, loss, seconds)
        record = {"stage": stage.index + 1, "stage_name": stage.name, "epoch": epoch + 1, "loss": loss,
                  "train_acc": train_acc, "test_acc": test_acc, "lr": lr, "time": seconds}
        tracker.log_epoch(record, step)
        if accelerator.is_main_process:
            say(f"{stage.name} epoch {epoch + 1}/{epochs}  loss {loss:.4f}  train {train_acc:.4f}  "
                f"test {test_acc:.4f}  lr {lr:.4g}  {seconds:.1f}s")
        run.save_state(accelerator, stage.index, epoch, {"step": step, "seconds": seconds})
    accelerator.free_memory()  # release this stage's prepared objects before the next stage
    stage.trainable.eval()
    return result


@torch.no_grad()
def evaluate_heads(net: GreedyNet, loader, accelerator: Accelerator) -> dict[str, list[float]]:
    """Test accuracy of every head, and of the paper's ensemble of heads 0..j (softmax weighted by 2^j)."""
    net.eval()
    num = net.num_stages
    correct = torch.zeros(2, num, dtype=torch.long)
    total = 0
    weights = [2.0 ** j for j in range(num)]
    for x, y in loader:
        x, y = x.to(accelerator.device), y.to(accelerator.device)
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
