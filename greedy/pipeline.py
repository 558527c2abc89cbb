"""Pipelined decoupled training: the blocks of a decoupled run spread over processes, the batch flowing through.

With P x D processes (`--pipeline P`), the J blocks are cut into P contiguous groups, one per process; each group
has D replicas that average their gradients among themselves (DDP on the group's own process group). Replica d of
group 0 reads and augments the data exactly as rank d of a D-process run would; every process trains its blocks
as the sequential decoupled loop does (trainer.decoupled_step: each block on its own auxiliary loss, its input
detached) and sends its last block's output and the labels to replica d of the next group with torch.distributed
point-to-point operations, receiving the next batches while it computes (`IN_FLIGHT` batches ahead).

Synchronous pipelining (Huang et al., GPipe, NeurIPS 2019) is exact here: block j's weights depend on nothing but
its own inputs, so block j at step t sees exactly the input of the sequential loop (Belilovsky et al., Decoupled
Greedy Learning, ICML 2020, where the blocks run in parallel with a buffer between them; here without the buffer).
With one replica and the same threads the run is bit-identical to `--pipeline 1` (tests/test_pipeline.py).
"""

from __future__ import annotations

import re
import resource
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import gather_object, set_seed
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.flop_counter import FlopCounterMode

from greedy.builder import Stage
from greedy.checkpoint import RunDir, check_finite, state_digest
from greedy.datasets import DataBundle, TensorImageDataset, create_loaders, default_workers, device_loader
from greedy.datasets.device import DeviceLoader
from greedy.errors import PipelineLost, UsageError
from greedy.files import writing
from greedy.models import GreedyNet
from greedy.models.tracing import meta_call
from greedy.optim import make_optimizer, make_scheduler
from greedy.schema import Config
from greedy.tracking import Tracker
from greedy.trainer import DivergenceCheck, TermSums, _fit, accuracy_counts, as_input, epoch_line, epoch_record

IN_FLIGHT = 2  # batches a process receives ahead of, and sends behind, the one it computes
COMMUNICATION_ERROR = re.compile(r"gloo|nccl|connection|timed out|timeout|peer|socket", re.IGNORECASE)


def block_costs(net: GreedyNet, in_chans: int, img_size: int) -> list[int]:
    """Forward FLOPs of each block with its auxiliary net on one image (torch's FlopCounterMode, on the meta device:
    no memory, the net's weights untouched); the input stem's FLOPs are added to block 0 (the first group runs it).
    A training step costs about 3x this (forward + backward); only the ratios are used."""
    x = torch.zeros(1, in_chans, img_size, img_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        x = meta_call(net.stem, x)
    costs, stem = [], counter.get_total_flops()
    for block, head in zip(net.blocks, net.heads, strict=True):
        with FlopCounterMode(display=False) as counter:
            y = meta_call(block, x)
            meta_call(head, y)
        costs.append(counter.get_total_flops())
        x = y
    costs[0] += stem
    return costs


def balanced_split(costs: list[float], groups: int) -> list[int]:
    """Blocks per group: the contiguous cut of `costs` into `groups` non-empty groups whose costliest group is the
    cheapest possible (a synchronous pipeline steps at its slowest stage's pace); exact, by dynamic programming
    over cut points (J <= a few dozen blocks). Raises ValueError for more groups than blocks."""
    n = len(costs)
    if not 1 <= groups <= n:
        raise ValueError(f"cannot cut {n} blocks into {groups} non-empty groups")
    total = [0.0]
    for c in costs:
        total.append(total[-1] + c)
    # best[g][k]: (max group cost, cut) for the first k blocks in g groups
    best = [[(float("inf"), 0)] * (n + 1) for _ in range(groups + 1)]
    best[0][0] = (0.0, 0)
    for g in range(1, groups + 1):
        for k in range(g, n + 1):
            best[g][k] = min((max(best[g - 1][i][0], total[k] - total[i]), i) for i in range(g - 1, k))
    split, k = [], n
    for g in range(groups, 0, -1):
        i = best[g][k][1]
        split.append(k - i)
        k = i
    return split[::-1]


@dataclass(frozen=True)
class Placement:
    """Where a process sits: rank = group * replicas + replica; group g holds blocks `blocks(g)`."""

    split: tuple[int, ...]  # blocks per group
    replicas: int
    rank: int

    @property
    def groups(self) -> int:
        return len(self.split)

    @property
    def group(self) -> int:
        return self.rank // self.replicas

    @property
    def replica(self) -> int:
        return self.rank % self.replicas

    def blocks(self, group: int | None = None) -> range:
        g = self.group if group is None else group
        start = sum(self.split[:g])
        return range(start, start + self.split[g])

    def rank_of(self, group: int, replica: int | None = None) -> int:
        return group * self.replicas + (self.replica if replica is None else replica)

    def describe(self, costs: list[float], explicit: bool) -> str:
        """One line: the groups, their blocks and each one's share of the step cost."""
        total = sum(costs)
        parts = []
        for g in range(self.groups):
            blocks = self.blocks(g)
            names = f"block {blocks[0] + 1}" if len(blocks) == 1 else f"blocks {blocks[0] + 1}-{blocks[-1] + 1}"
            parts.append(f"group {g + 1} = {names} ({100 * sum(costs[j] for j in blocks) / total:.1f}%)")
        how = "pipeline_split" if explicit else "balanced"
        return (f"pipeline: {self.groups} groups x {self.replicas} replica(s) = {self.groups * self.replicas} "
                f"processes; {how}, share of the step FLOPs (block + auxiliary net, stem in group 1): "
                + ", ".join(parts))


def _stand_in(n: int) -> Dataset:
    """A split of n samples holding no data (the device path reads `images`, the DataLoader path indices)."""
    return TensorImageDataset(torch.empty(n, 0), torch.zeros(n, dtype=torch.long))


def every(split: TensorImageDataset, start: int, step: int) -> TensorImageDataset:
    """Samples start, start + step, ... of an in-memory split (views, no copy), with its device-path fields."""
    pick = slice(start, None, step)
    return TensorImageDataset(split.images[pick], split.targets[pick], split.transform,
                              crop_padding=split.crop_padding)


class Pipeline:
    """This process's part of a pipelined decoupled run: its group's blocks, its peers, its replica group."""

    def __init__(self, cfg: Config, accelerator: Accelerator, meta_net: GreedyNet, in_chans: int, img_size: int):
        """Place this process; collective (every process builds every replica group). Raises UsageError when the
        processes are not a multiple of cfg.pipeline."""
        world = accelerator.num_processes
        if world % cfg.pipeline:
            raise UsageError(f"--pipeline {cfg.pipeline}: {world} process(es) are not a multiple of {cfg.pipeline} "
                             f"groups; launch {cfg.pipeline} x D processes (e.g. --num_processes {cfg.pipeline})")
        self.cfg, self.accelerator, self.device = cfg, accelerator, accelerator.device
        self.costs = block_costs(meta_net, in_chans, img_size)
        split = cfg.pipeline_split or balanced_split(self.costs, cfg.pipeline)
        self.placement = Placement(tuple(split), world // cfg.pipeline, accelerator.process_index)
        p = self.placement
        self.in_shape = meta_net.module_shapes(in_chans, img_size)[p.blocks()[0]][0]  # (C, H, W) of our input
        self.image_shape = (in_chans, img_size, img_size)  # of the net's input, sent along for InfoPro
        self.prev = p.rank_of(p.group - 1) if p.group > 0 else None
        self.next = p.rank_of(p.group + 1) if p.group < p.groups - 1 else None
        self.replica_group = None
        if p.replicas > 1:
            for g in range(p.groups):  # new_group is collective: every process creates every group, in order
                pg = dist.new_group([p.rank_of(g, d) for d in range(p.replicas)])
                if g == p.group:
                    self.replica_group = pg
        self.sending: deque = deque()
        self.wait_seconds = 0.0
        self.run_path: Path | str = "RUN_DIR"

    def describe(self) -> str:
        return self.placement.describe(self.costs, bool(self.cfg.pipeline_split))

    # --- faults: any failed or timed-out communication is one line naming the peer ---------------------------

    @contextmanager
    def talking_to(self, peer: int | None, what: str) -> Iterator[None]:
        """Turn a torch.distributed failure (peer gone, timeout) into PipelineLost naming the peer (None: a
        collective, any process); other errors pass unchanged."""
        try:
            yield
        except RuntimeError as err:  # dist.DistError is one; gloo and DDP raise plain RuntimeErrors too
            if not isinstance(err, dist.DistError) and not COMMUNICATION_ERROR.search(str(err)):
                raise  # not a peer's loss (a bug, out of memory): as it is
            reason = re.sub(r"^\[[^\]]*\] ", "", " ".join(str(err).split())).split(". ")[0][:160]  # gloo's first line
            if peer is None and self.accelerator.num_processes == 2:
                peer = 1 - self.placement.rank
            who = (f"pipeline process {peer} (group {peer // self.placement.replicas + 1})" if peer is not None
                   else "a pipeline process")
            raise PipelineLost(f"{who} was lost while {what} ({reason}); process {self.placement.rank} stops; the "
                               f"last complete epoch's state is kept: resume with --resume {self.run_path}") from None

    def _wait(self, work, peer: int, what: str) -> None:
        t0 = time.perf_counter()
        with self.talking_to(peer, what):
            work.wait()
        self.wait_seconds += time.perf_counter() - t0

    # --- point-to-point: activations and labels to the next group, from the previous one ----------------------

    def received(self, sizes: list[int], images: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """The (activation, labels, input images or None) batches of the previous group, `sizes` samples each,
        received IN_FLIGHT batches ahead of the one being computed; the images travel only when `images` is set
        (an objective that reads them, InfoPro)."""
        ahead: deque = deque()
        pending = iter(sizes)

        def post(n: int) -> None:
            batch = [torch.empty((n, *self.in_shape), device=self.device),
                     torch.empty(n, dtype=torch.long, device=self.device)]
            if images:
                batch.append(torch.empty((n, *self.image_shape), device=self.device))
            with self.talking_to(self.prev, "receiving a batch"):
                ahead.append((batch, [dist.irecv(t, self.prev, tag=tag) for tag, t in enumerate(batch)]))

        for n in (next(pending, None) for _ in range(IN_FLIGHT)):
            if n is not None:
                post(n)
        while ahead:
            batch, works = ahead.popleft()
            for work in works:
                self._wait(work, self.prev, "receiving a batch")
            n = next(pending, None)
            if n is not None:
                post(n)
            x, y, *image = batch
            yield as_input(x, self.cfg.channels_last), y, (image[0] if image else None)

    def send(self, x: torch.Tensor, y: torch.Tensor, image: torch.Tensor | None = None) -> None:
        """Send a batch's last-block output, labels and (when given) input images to the next group without
        waiting (at most IN_FLIGHT sends outstanding)."""
        batch = [x.detach().contiguous(), y] + ([image.contiguous()] if image is not None else [])
        with self.talking_to(self.next, "sending a batch"):
            self.sending.append((batch, [dist.isend(t, self.next, tag=tag) for tag, t in enumerate(batch)]))
        while len(self.sending) > IN_FLIGHT:
            self._flush_one()

    def flush(self) -> None:
        while self.sending:
            self._flush_one()

    def _flush_one(self) -> None:
        _, works = self.sending.popleft()
        for work in works:
            self._wait(work, self.next, "sending a batch")

    # --- data: only group 0 reads it; the others know the batch sizes ------------------------------------------

    def loaders(self, data: DataBundle) -> tuple:
        """(train, test) loaders of this replica: the train data sharded over the D replicas exactly as a D-process
        run shards it (device data: DeviceLoader with num_processes = D; else accelerate's seedable sampler with
        data_seed = seed), the test set split d::D (exactly once over all). Groups after the first get stand-ins
        of the same lengths holding no data: only their batch sizes are read."""
        p, cfg = self.placement, self.cfg
        if p.group > 0:
            data = replace(data, train=_stand_in(len(data.train)), test=_stand_in(len(data.test)))
        if cfg.on_device:
            shard = {"device": self.device, "seed": cfg.seed}
            train = device_loader(data.train, cfg.batch_size, shuffle=True, num_processes=p.replicas,
                                  process_index=p.replica, **shard)
            test = device_loader(every(data.test, p.replica, p.replicas), cfg.eval_batch_size or cfg.batch_size,
                                 shuffle=False, **shard)
            return train, test
        data = replace(data, test=Subset(data.test, range(p.replica, len(data.test), p.replicas)))
        train, test = create_loaders(data, cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                                     num_workers=default_workers(cfg.dataset, cfg.num_workers) if p.group == 0 else 0,
                                     pin_memory=cfg.pin_memory, persistent_workers=cfg.persistent_workers)
        train = prepare_data_loader(train, self.device, num_processes=p.replicas, process_index=p.replica,
                                    put_on_device=True, use_seedable_sampler=True, data_seed=cfg.seed)
        return train, test

    def batches(self, loader, prefix: nn.Module | None,
                images: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """This group's input batches (x, y, input images when `images`, else None): group 0 reads `loader` and
        runs the frozen `prefix`; the others receive."""
        if self.prev is not None:
            sizes = (loader.batch_sizes() if isinstance(loader, DeviceLoader)
                     else [len(b) for b in loader.batch_sampler])
            yield from self.received(sizes, images)
            return
        for x, y in loader:
            x, y = as_input(x.to(self.device), self.cfg.channels_last), y.to(self.device)
            image = x if images else None
            if prefix is not None:
                with torch.no_grad():
                    x = prefix(x)
            yield x, y, image

    # --- training -------------------------------------------------------------------------------------------

    def train(self, stage: Stage, data: DataBundle, run: RunDir, tracker: Tracker, resume_from: Path | None = None,
              say: Callable[[str], None] = print) -> list[dict]:
        """Train this process's blocks for the configured epochs (trainer.train_stage's schedule, records and
        per-epoch state), then give every process the whole trained net. Returns each process's figures (blocks,
        busy fraction, peak memory, bytes held for its blocks), the same list on every process.

        Raises PipelineLost when a peer is gone (nothing saved is touched), TrainingDiverged as train_stage does.
        """
        cfg, accelerator, p = self.cfg, self.accelerator, self.placement
        self.run_path = run.path
        with self.talking_to(None, "training"):
            return self._train(stage, cfg, accelerator, p, data, run, tracker, resume_from, say)

    def _train(self, stage, cfg, accelerator, p, data, run, tracker, resume_from, say) -> list[dict]:
        epochs, mine, held_out = cfg.train_epochs, p.blocks(), cfg.held_out
        set_seed(cfg.seed + 1000 * (stage.index + 1) + p.replica)  # what rank `replica` of a D-process run sets
        parts = [stage.parts[j] for j in mine]
        optimizers = [make_optimizer(cfg, part) for part in parts]
        schedulers = [make_scheduler(cfg, o, epochs) for o in optimizers]
        models = parts
        if self.replica_group is not None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            models = [DistributedDataParallel(part, device_ids=ids, process_group=self.replica_group) for part in parts]
        models = [torch.compile(m) for m in models] if cfg.compile else models
        train_loader, test_loader = self.loaders(data)
        prefix = stage.prefix if p.group == 0 else None

        start_epoch, step, seconds = 0, tracker.step, 0.0
        if resume_from is not None:
            weights, state, progress = run.load_rank_state(resume_from, p.rank)
            for j, part in zip(mine, parts, strict=True):
                part.load_state_dict({k.split(".", 1)[1]: v for k, v in weights.items() if k.split(".")[0] == str(j)})
            for optimizer, saved in zip(optimizers, state["optimizers"], strict=True):
                optimizer.load_state_dict(saved)
            torch.set_rng_state(state["rng"])
            if "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            start_epoch, step, seconds = progress["epoch"] + 1, progress["step"], progress["seconds"]
            say(f"resuming {stage.name} at epoch {start_epoch + 1}/{epochs} from {resume_from}")
        for _, name in stage.part_ids():
            tracker.begin_stage(name)
        busy = []
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            for scheduler in schedulers:
                scheduler.step(epoch)
            train_loader.set_epoch(1000 * stage.index + epoch)
            lr = optimizers[0].param_groups[0]["lr"]
            self.wait_seconds = 0.0
            sums, step, steps = self.train_one_epoch(stage, models, optimizers, train_loader, prefix, tracker, step,
                                                     epoch)
            busy.append(1.0 - self.wait_seconds / max(time.perf_counter() - t0, 1e-9))
            step_time = (time.perf_counter() - t0) / max(steps, 1)
            self.sync_buffers(parts)
            for part in parts:
                check_finite(part.state_dict(), f"{stage.name} epoch {epoch + 1}")
            correct, total = self.evaluate(parts, test_loader, prefix)
            with self.talking_to(None, "summing the epoch's figures"):
                figures = torch.cat([sums.double(), correct.double(), torch.tensor([total], dtype=torch.double)])
                dist.all_reduce(figures)
            seconds += time.perf_counter() - t0
            n, t = len(stage.parts), len(sums) - 2 * len(stage.parts) - 1  # t: the loss terms' sums
            train = figures[:2 * n + 1].float()
            losses, train_accs = (train[:-1].view(2, -1) / train[-1]).tolist()
            terms = TermSums(stage.objectives, self.device).means(figures[2 * n + 1:2 * n + 1 + t].float() / train[-1])
            test_accs = (figures[2 * n + 1 + t:3 * n + 1 + t].long() / int(figures[-1])).tolist()
            for (index, name), loss, part_terms, train_acc, test_acc in zip(stage.part_ids(), losses, terms,
                                                                            train_accs, test_accs, strict=True):
                record = epoch_record(index, name, epoch, loss, part_terms, train_acc, held_out, test_acc, lr,
                                      seconds, 0.0, step_time)
                tracker.log_epoch(record, step)
                say(epoch_line(record, epochs, held_out))
            with self.talking_to(None, "saving the epoch's state"):
                run.save_state(accelerator, stage.index, epoch, {"step": step, "seconds": seconds, "cache_time": 0.0},
                               save_rank=lambda folder: self.save_rank(folder, parts, optimizers))
            tracker.flush_epochs()
        tracker.step = step
        mine = self.figures(parts, optimizers, busy)  # before the assembly, which makes every replica equal
        with self.talking_to(None, "assembling the trained net"):
            self.assemble(stage)
            return gather_object([mine])

    def train_one_epoch(self, stage: Stage, models: list[nn.Module], optimizers: list, loader: DataLoader,
                        prefix: nn.Module | None, tracker: Tracker, step: int,
                        epoch: int) -> tuple[torch.Tensor, int, int]:
        """One pass: (sums (2, J) of loss x samples and correct predictions, zero outside this group's blocks,
        with the samples seen appended; the global step; this epoch's steps). Each block is trained as in
        trainer.decoupled_step (trainer._fit on its predecessor's detached output)."""
        mine, n = self.placement.blocks(), len(stage.parts)
        for model in models:
            model.train()
        sums = torch.zeros(2, n, device=self.device)
        seen = torch.zeros((), device=self.device)
        terms = TermSums(stage.objectives, self.device)
        divergence = DivergenceCheck(stage, epoch, self.device)
        steps = 0
        for x, y, image in self.batches(loader, prefix, stage.needs_input):
            losses = torch.zeros(n, device=self.device)
            logged = {}
            for j, model, optimizer in zip(mine, models, optimizers, strict=True):
                result, h = _fit(model, optimizer, self.accelerator, x, y, image)
                losses[j] = result.loss.detach().float()
                sums[1, j] += accuracy_counts(result.logits.detach(), y)
                terms.add(j, result.terms, y.numel())
                logged[j] = result.terms
                x = h.detach()
            if self.next is not None:
                self.send(x, y, image)
            sums[0] += losses * y.numel()
            seen += y.numel()
            step += 1
            steps += 1
            divergence.record(losses, steps, step)
            if steps % self.cfg.finite_check_every == 0:
                divergence.check()
            if tracker.use_wandb and self.placement.rank == 0 and step % self.cfg.log_every == 0:
                tracker.log_step({f"train/loss_{stage.part_ids()[j][1]}": losses[j].item() for j in mine}
                                 | {k: v for j in mine for k, v in terms.wandb(j, logged[j]).items()}
                                 | {"train/lr": optimizers[-1].param_groups[0]["lr"]}, step)
        self.flush()
        divergence.check()
        if self.placement.group > 0:  # the samples are counted once, by group 0
            seen.zero_()
        return torch.cat([sums.flatten(), seen[None], terms.sums]), step, steps

    @torch.no_grad()
    def evaluate(self, parts: list[nn.Module], loader: DataLoader,
                 prefix: nn.Module | None) -> tuple[torch.Tensor, int]:
        """Correct test predictions of each block's head (length J, zero outside this group) and the test samples
        seen (counted by group 0 only), through the pipeline as trainer.evaluate_parts computes them."""
        mine, n = self.placement.blocks(), len(self.costs)
        for part in parts:
            part.eval()
        correct, total = torch.zeros(n, dtype=torch.long), 0
        for x, y, _ in self.batches(loader, prefix):
            for j, part in zip(mine, parts, strict=True):
                x, logits = part(x)
                correct[j] += (logits.argmax(1) == y).sum().cpu()
            if self.next is not None:
                self.send(x, y)
            total += y.numel()
        self.flush()
        return correct, total if self.placement.group == 0 else 0

    @torch.no_grad()
    def sync_buffers(self, parts: list[nn.Module]) -> None:
        """Give the group's replicas replica 0's BatchNorm statistics (each updated them on its own shard)."""
        if self.replica_group is None:
            return
        with self.talking_to(None, "synchronizing BatchNorm statistics"):
            for part in parts:
                for buf in part.buffers():
                    dist.broadcast(buf, self.placement.rank_of(self.placement.group, 0), group=self.replica_group)

    def save_rank(self, folder: Path, parts: list[nn.Module], optimizers: list) -> None:
        """This process's blocks (weights, BatchNorm statistics), optimizer states and RNG states, into `folder`."""
        weights_path, state_path = RunDir.rank_files(folder, self.placement.rank)
        weights = {f"{j}.{k}": v.detach().cpu().contiguous() for j, part in zip(self.placement.blocks(), parts,
                                                                                 strict=True)
                   for k, v in part.state_dict().items()}
        state = {"optimizers": [o.state_dict() for o in optimizers], "rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        with writing(weights_path):
            save_file(weights, str(weights_path))
        with writing(state_path):
            torch.save(state, state_path)

    @torch.no_grad()
    def assemble(self, stage: Stage) -> None:
        """Give every process the whole trained net: replica 0 of each group broadcasts its blocks' weights and
        BatchNorm statistics."""
        for g in range(self.placement.groups):
            for j in self.placement.blocks(g):
                for tensor in [*stage.parts[j].parameters(), *stage.parts[j].buffers()]:
                    dist.broadcast(tensor.data, self.placement.rank_of(g, 0))

    def figures(self, parts: list[nn.Module], optimizers: list, busy: list[float]) -> dict:
        """This process's blocks, busy fraction (1 - time waiting on its peers / epoch time, mean over epochs),
        peak memory (CUDA: allocated; CPU: the process's max RSS) and bytes held for its blocks (weights,
        gradients, optimizer state, BatchNorm statistics), and the sha256 of its blocks' weights."""
        p = self.placement
        params = [t for part in parts for t in part.parameters()]
        held = sum(t.numel() * t.element_size() for t in params) * 2  # weights + gradients
        held += sum(v.numel() * v.element_size() for o in optimizers for s in o.state.values() for v in s.values()
                    if torch.is_tensor(v))
        held += sum(b.numel() * b.element_size() for part in parts for b in part.buffers())
        peak = (torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        digest = state_digest({f"{j}.{k}": v for j, part in zip(p.blocks(), parts, strict=True)
                               for k, v in part.state_dict().items()})
        return {"rank": p.rank, "group": p.group + 1, "replica": p.replica,
                "blocks": [j + 1 for j in p.blocks()], "busy_fraction": sum(busy) / max(len(busy), 1),
                "peak_bytes": peak, "block_bytes": held, "weights_digest": digest}
