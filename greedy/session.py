"""One training run, from a resolved config to its summary: what train.py and `greedy.train` share.

    run_training(cfg, run=None, name="digits_k2")          a new run in cfg.out_dir/<name>-..., or
    run_training(cfg, run=RunDir(...), name=...)            the rest of a resumed one
    run_training(cfg, ..., data=bundle)                     on the caller's own DataBundle

The order: refuse a net the images are too small for (meta device), the accelerator, the data, the net, the run
directory, then stage by stage (each resumable), the final evaluation (the test set, once; the validation split's
heads too with val_split), model.safetensors and summary.json. A failed write or an interrupt ends in one line
that says where the run stopped and the command that continues it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object, set_seed

from greedy.analysis.during import TrainingProbes
from greedy.builder import GreedyBuilder, Stage
from greedy.cache import FeatureCache, cache_enabled
from greedy.checkpoint import SKIPPED_IMAGES, RunDir, load_into, load_safetensors, state_digest
from greedy.datasets import (
    DataBundle,
    create_datasets,
    create_loaders,
    dataset_classes,
    dataset_info,
    default_workers,
    log_skipped_images,
    skipped_images,
)
from greedy.errors import (
    DIVERGED_EXIT,
    WRITE_ERRNOS,
    WRITE_EXIT,
    Interrupted,
    TrainingDiverged,
    UsageError,
    WriteFailed,
)
from greedy.files import os_reason
from greedy.models import GreedyNet, check_shapes, create_greedy_net
from greedy.pipeline import Pipeline
from greedy.schema import Config
from greedy.summary import format_table, result_rows
from greedy.tracking import Tracker
from greedy.trainer import evaluate_heads, make_accelerator, train_stage


def input_shape(cfg: Config, data: DataBundle | None = None) -> tuple[int, int]:
    """(channels, side) of the images the net sees: the given data's, else the config's data set's."""
    if data is not None:
        return data.in_chans, data.img_size
    info = dataset_info(cfg.dataset)
    return info.in_chans, cfg.img_size or info.img_size


def check_model_shapes(cfg: Config, data: DataBundle | None = None) -> GreedyNet:
    """The config's net on the meta device (no memory, no data; a timm backbone is built for real to prove its
    chain), after refusing, before any work, images too small for it (one line naming the module). `data`: the
    caller's own data, whose shapes and classes replace the config's data set's."""
    in_chans, img_size = input_shape(cfg, data)
    if data is not None:
        return check_shapes(cfg, in_chans, img_size, data.num_classes)
    classes = cfg.num_classes or dataset_classes(cfg.dataset, cfg.data_dir) or dataset_info(cfg.dataset).num_classes
    return check_shapes(cfg, in_chans, img_size, classes)


def config_data(cfg: Config, augment: str) -> DataBundle:
    """The config's data set as a run reads it (every data key: size, download, strictness, val_split drawn with
    the run's seed, norm_mean / norm_std), its training split augmented with `augment`; raises UsageError."""
    return create_datasets(cfg.dataset, cfg.data_dir, img_size=cfg.img_size, augment=augment, download=cfg.download,
                           strict_data=cfg.strict_data, val_split=cfg.val_split, split_seed=cfg.seed,
                           norm=(cfg.norm_mean, cfg.norm_std))


def data_loaders(cfg: Config, data: DataBundle, accelerator, with_train: bool = True) -> tuple:
    """The run's (train, test) loaders: the caller's own (`data.loaders`), the data set on the accelerator
    (device_data) or torch DataLoaders; without `with_train` (an evaluation) (None, test)."""
    if data.loaders is not None:
        return data.loaders
    on_device = {"device": accelerator.device, "seed": cfg.seed, "num_processes": accelerator.num_processes,
                 "process_index": accelerator.process_index} if cfg.on_device else {}
    workers = default_workers(cfg.dataset, cfg.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return create_loaders(data, cfg.batch_size, eval_batch_size=cfg.eval_batch_size, num_workers=workers,
                          pin_memory=cfg.pin_memory, persistent_workers=cfg.persistent_workers, with_train=with_train,
                          **on_device)


def stage_loaders(cfg: Config, data: DataBundle, stage: Stage, cache: FeatureCache | None, net,
                  accelerator) -> tuple:
    """The stage (its prefix replaced when it trains on cached features), its (train, test) loaders and the
    seconds spent building its feature cache."""
    if cache is None:
        return stage, data_loaders(cfg, data, accelerator), 0.0
    if cache.stage is not None and cache.stage == stage.index - 1:
        cache.advance(net.blocks[stage.index - 1])
    else:  # the first stage, or the first one trained after a resume: from the (loaded) frozen prefix
        cache.build(stage.prefix, data, stage.index, default_workers(cfg.dataset, cfg.num_workers))
    loaders = cache.loaders(cfg.batch_size, cfg.eval_batch_size, cfg.pin_memory)
    return replace(stage, prefix=cache.prefix()), loaders, cache.seconds


def trained_heads(cfg: Config, heads: dict[str, list[float]]) -> dict[str, list[float | None]]:
    """Per-head accuracies, None where e2e trained nothing: its intermediate heads and their ensembles."""
    if cfg.mode != "e2e":
        return heads
    n = len(heads["head_acc"])
    return {"head_acc": [None] * (n - 1) + heads["head_acc"][-1:], "ensemble_acc": [None] * n}


def results(cfg: Config, net, run: RunDir, heads: dict[str, list[float]], accelerator) -> tuple[list[dict], dict]:
    """The printed per-stage rows and the summary's final numbers (accuracies, times, every rank's weights)."""
    seconds = run.stage_seconds()
    rows = result_rows(net, cfg.mode, heads, seconds)
    # decoupled: every block's records carry the time of the one joint pass
    total = max(seconds.values()) if cfg.mode == "decoupled" else sum(seconds.values())
    digests = gather_object([state_digest(net.state_dict())])  # one per rank: DDP must keep them equal
    if len(set(digests)) > 1:
        accelerator.print(f"warning: the {len(digests)} processes ended with different weights")
    trained = trained_heads(cfg, heads)
    return rows, {"final_test_acc": rows[-1]["test_acc"], "stage_test_acc": trained["head_acc"],
                  "ensemble_acc": trained["ensemble_acc"], "total_time_s": total,
                  "cache_time_s": run.cache_seconds(), "num_processes": accelerator.num_processes,
                  "rank_weight_digests": digests}


def interrupted_where(builder: GreedyBuilder, run: RunDir) -> tuple[str, bool]:
    """Where a run stopped, from its run directory ("stage 2, epoch 4"), and whether anything of it is saved:
    the epoch in training is the one after the newest complete state, in the first stage without weights."""
    stages = builder.stage_ids()
    todo = [(n, index, name) for n, (index, name) in enumerate(stages) if not run.stage_weights_path(name).exists()]
    try:
        state = run.latest_state()
    except UsageError:  # an incomplete newest state: a resume reports it
        state = None
    saved = state is not None or len(todo) < len(stages)
    if not todo:
        return "the final evaluation", saved
    n, index, name = todo[0]
    epoch = state[1] + 2 if state is not None and state[0] == index else 1
    if builder.mode == "greedy":
        return f"stage {n + 1}, epoch {epoch}", saved
    return f"{name} training, epoch {epoch}", saved


def stopped(err: WriteFailed | Interrupted, builder: GreedyBuilder, run: RunDir, tracker: Tracker | None) -> None:
    """Complete the one line of a run stopped by a failed write or a signal with where it was and the command
    that continues it, and end its W&B run marked as failed (write) or interrupted (signal)."""
    resume = f"python train.py --resume {run.path}"
    if isinstance(err, WriteFailed):
        err.retry = f"run {resume}"
        code = WRITE_EXIT
    else:
        where, saved = interrupted_where(builder, run)
        err.where = where
        err.retry = (f"the last complete epoch is saved: {resume}" if saved else
                     f"no epoch was complete yet: {resume} starts again")
        code = err.exit_code
    if tracker is not None:
        try:
            tracker.finish(exit_code=code, interrupted=isinstance(err, Interrupted))
        except (Exception, Interrupted):  # a second signal or a full disk must not hide the first line
            pass


def run_training(cfg: Config, run: RunDir | None, name: str, data: DataBundle | None = None,
                 net: GreedyNet | None = None) -> tuple[dict[str, Any], GreedyNet, RunDir]:
    """Train the config's net stage by stage and evaluate it: (summary.json's content, the trained net, its run
    directory). `run`: a run directory to continue (None: a new one, `cfg.out_dir/<name>-...`); `data`: the data
    to train on (None: the config's data set, `create_datasets`); `net`: a GreedyNet of the caller's own units
    (`GreedyNet.from_units`) instead of the config's (not pipelined). Raises UsageError (bad input, before any work
    where possible), WriteFailed or Interrupted (one line, with the command that continues the run),
    TrainingDiverged."""
    if net is not None and cfg.pipeline > 1:
        raise UsageError(f"--pipeline {cfg.pipeline} places the config's net on the processes; train your own "
                         "GreedyNet with pipeline 1")
    # refuse a net the images are too small for before anything is written
    meta_net = check_model_shapes(cfg, data) if net is None else None
    if run is None:
        RunDir.new_path(cfg, name)  # a clear error now rather than after the data is loaded

    accelerator = make_accelerator(cfg)
    say = accelerator.print
    pipe = None
    if cfg.pipeline > 1:  # the blocks spread over the processes (greedy/pipeline.py)
        in_chans, img_size = input_shape(cfg, data)
        pipe = Pipeline(cfg, accelerator, meta_net, in_chans, img_size)
        say(pipe.describe())
    set_seed(cfg.seed)  # the same initial weights on every rank
    use_cache = cache_enabled(cfg, say)
    if data is None:
        data = config_data(cfg, augment="none" if use_cache else cfg.augment)
    seen = data.for_training()  # with val_split, training evaluates and selects on it: the test set waits
    if cfg.num_classes not in (None, data.num_classes):
        raise UsageError(f"config key 'num_classes' is {cfg.num_classes} but {cfg.dataset} in {cfg.data_dir} "
                         f"has {data.num_classes} classes; drop the key or fix the data")
    if net is None:
        net = create_greedy_net(cfg, num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size)
    elif net.num_classes != data.num_classes:
        raise UsageError(f"your GreedyNet has {net.num_classes} classes but the data {data.num_classes}; build it "
                         f"with num_classes={data.num_classes}")
    net = net.to(accelerator.device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)

    if run is None:  # the main process names and creates the run directory; the others follow it
        holder = [None]
        if accelerator.is_main_process:
            holder = [str(RunDir.create(cfg, name).path)]
        run = RunDir(Path(broadcast_object_list(holder)[0]))
    tracker = None
    builder = GreedyBuilder.for_run(cfg, net, data)
    try:
        say(f"run directory: {run.path}")
        log_skipped_images(data, run.path / SKIPPED_IMAGES)
        replicas = accelerator.num_processes // cfg.pipeline  # processes reading different data
        if replicas > 1 or cfg.grad_accum > 1:  # --batch-size is per process: say what it adds up to
            say(f"global batch: {cfg.batch_size} per process x {replicas} {'replicas' if pipe else 'processes'} x "
                f"{cfg.grad_accum} accumulation steps = {cfg.batch_size * replicas * cfg.grad_accum}")
        tracker = Tracker(accelerator, cfg, run, say)
        resume = run.latest_state()
        replayed = tracker.replay(run.metrics_until(resume[:2] if resume else None, by_epoch=cfg.mode == "decoupled",
                                                    kind=None))
        if replayed:
            say(f"W&B: logged {replayed} record(s) from metrics.jsonl that the interrupted run had not saved")

        pipeline_figures: list[dict] = []
        cache = FeatureCache.for_run(cfg, accelerator, run.path, say) if use_cache else None
        probes = TrainingProbes.for_run(cfg, net, seen)  # None unless probe_every is set
        try:
            for i in range(builder.num_stages):
                stage = builder.stage(i)
                weights = run.stage_weights_path(stage.name)
                if weights.exists():  # finished before a resume
                    load_into(net, load_safetensors(weights), weights, strict=False)
                    continue
                resume_from = resume[2] if resume is not None and resume[0] == stage.index else None
                if resume_from is not None:  # check first: a corrupt checkpoint must not cost the metrics saved
                    run.verify_state(resume_from)
                    if accelerator.is_main_process:
                        run.truncate_metrics(resume[0], resume[1], by_epoch=stage.decoupled)
                elif accelerator.is_main_process:  # a fresh stage: no record of an earlier try of it stays
                    run.drop_stage_metrics(stage.index, by_epoch=stage.decoupled)
                if pipe is not None:
                    pipeline_figures = pipe.train(stage, seen, run, tracker, resume_from, say)
                else:
                    stage, loaders, cache_seconds = stage_loaders(cfg, seen, stage, cache, net, accelerator)
                    train_stage(stage, cfg, accelerator, loaders, run, tracker, resume_from, say, cache_seconds,
                                probes)
                if accelerator.is_main_process:
                    run.save_weights(weights, builder.stage_state_dict(stage))
                run.drop_states(accelerator)
        except TrainingDiverged:
            tracker.finish(exit_code=DIVERGED_EXIT)  # the W&B run ends marked failed, its history kept
            raise
        finally:
            if cache is not None:
                cache.close()

        _, test_loader = data_loaders(cfg, data, accelerator, with_train=False)  # the test set, read once, now
        heads = evaluate_heads(net, accelerator.prepare(test_loader), accelerator, cfg.channels_last)
        rows, final = results(cfg, net, run, heads, accelerator)
        if data.val is not None:  # the validation split's heads too: what selections read
            _, val_loader = data_loaders(cfg, seen, accelerator, with_train=False)
            val = trained_heads(cfg, evaluate_heads(net, accelerator.prepare(val_loader), accelerator,
                                                    cfg.channels_last))
            final.update(stage_val_acc=val["head_acc"], final_val_acc=val["head_acc"][-1])
        skipped = skipped_images(data)
        if skipped:
            say(f"warning: skipped {len(skipped)} unreadable image(s), listed in summary.json (skipped_images)")
        final.update(skipped_images=skipped)
        if pipe is not None:
            final.update(pipeline=pipeline_figures)
        summary = {"mode": cfg.mode, "held_out": cfg.held_out, "rows": rows, **final}
        if accelerator.is_main_process:
            run.save_weights(run.path / "model.safetensors",
                             {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()})
            run.save_summary(summary)
        say(format_table(rows))
        say(f"final test accuracy: {final['final_test_acc']:.4f}  ({run.path})")
        tracker.log_summary(rows, final)
        tracker.finish()
    except (WriteFailed, Interrupted) as err:
        stopped(err, builder, run, tracker)
        raise
    except OSError as err:  # a write outside greedy.files (a library's own file): the same one line
        if err.errno not in WRITE_ERRNOS:
            raise
        failed = WriteFailed(err.filename or run.path, *os_reason(err))
        stopped(failed, builder, run, tracker)
        raise failed from None
    return summary, net, run


