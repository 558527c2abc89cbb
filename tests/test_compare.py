"""scripts/compare.py: every (mode, k, seed) through train.py, resumable, then one table, a CSV and three plots."""

import csv
import fcntl
import json
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.flop_counter import FlopCounterMode

from greedy import compare
from greedy import cost as costs
from greedy.builder import GreedyBuilder
from greedy.checkpoint import RunDir
from greedy.config import build_config, load_yaml
from greedy.errors import UsageError
from greedy.objectives import total_loss
from greedy.profiling import saved_tensor_bytes
from greedy.trainer import decoupled_step, train_step
from tests.helpers import cli, load_script, tree_digest
from tests.wandb_log import read_offline_run

ARGS = ["-c", "configs/digits_k2.yaml", "--modes", "greedy,e2e,decoupled", "--k", "1", "--seeds", "0,1",
        "--experiment", "tiny", "--jobs", "2"]
TRAIN = ["--", "--widths", "16,16,32", "--downsample", "3", "--epochs", "2"]
PLOTS = ("accuracy_by_depth.png", "accuracy_vs_time.png", "memory.png", "loss_terms.png")
RUNS = [f"{m}-k1-s{s}" for m in ("greedy", "e2e", "decoupled") for s in (0, 1)]


@pytest.fixture(scope="module")
def script():
    return load_script("compare")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """The comparison run once as a user runs it; one thread per train.py so that the two jobs share the cores."""
    out = tmp_path_factory.mktemp("compare")
    proc = cli("scripts/compare.py", *ARGS, "--out-dir", str(out), *TRAIN, env={"OMP_NUM_THREADS": "1"})
    return out / "tiny", proc.stdout


@pytest.fixture
def one_thread_here_and_in_runs(one_thread, monkeypatch):
    """One torch thread in this process (conftest) and in every train.py that compare.py starts."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.training
def test_table_csv_and_plots(experiment):
    folder, stdout = experiment
    assert "6 runs, 0 done, 6 to run" in stdout and "budget per_stage" in stdout
    rows = list(csv.DictReader((folder / "comparison.csv").open()))
    assert [(r["mode"], r["k"], r["seeds"], r["epochs"]) for r in rows] == [
        ("greedy", "1", "2", "2"), ("e2e", "1", "2", "2"), ("decoupled", "1", "2", "2")]
    for r in rows:
        assert 0.7 < float(r["final_acc_mean"]) <= 1  # chance is 0.1
        assert int(r["images_per_block"]) == 2 * 1437 and float(r["train_flops"]) > 0
    by_mode = {r["mode"]: r for r in rows}
    assert by_mode["e2e"]["best_stage"] == "" and by_mode["greedy"]["best_stage"] in ("1", "2", "3")
    assert by_mode["greedy"]["feature_cache"] == "True"  # augment none: greedy trains on cached features
    # a greedy stage and a decoupled part hold one block's activations; e2e holds every block's
    e2e, greedy, dec = (int(by_mode[m]["peak_activation_bytes"]) for m in ("e2e", "greedy", "decoupled"))
    assert greedy == dec < e2e
    summaries = {name: json.loads((folder / name / "summary.json").read_text()) for name in RUNS}
    for mode in ("greedy", "e2e", "decoupled"):  # mean and sample std over the two seeds of what each run saved
        finals = [summaries[f"{mode}-k1-s{s}"]["final_test_acc"] for s in (0, 1)]
        assert float(by_mode[mode]["final_acc_mean"]) == pytest.approx(sum(finals) / 2, abs=1e-6)
        assert float(by_mode[mode]["final_acc_std"]) == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5, abs=1e-6)

    table = (folder / "comparison.md").read_text()
    assert table.count("| greedy | 1 | 2 |") == 1 and "| e2e | 1 | 2 |" in table and "| decoupled | 1 | 2 |" in table
    assert "budget per_stage" in table and "¹ greedy trains on cached features" in table
    memory = table.split("Activation memory")[1].split("\n\n")[1].splitlines()
    assert memory[0] == "| mode | k | module 1 | module 2 | module 3 | max | vs e2e |"
    cells = {row.split(" | ")[0].strip("| "): row.strip("| ").split(" | ")[2:] for row in memory[2:]}
    assert cells["greedy"] == cells["decoupled"]  # a stage and a decoupled part save the same: one block's
    per_module = [float(c) for c in cells["greedy"][:3]]
    assert len(per_module) == 3 and min(per_module) > 0 and float(cells["greedy"][3]) == max(per_module)
    assert float(cells["greedy"][4].rstrip("x")) < 1 and cells["e2e"][:3] == ["—", "—", "(whole net)"]
    for name in PLOTS:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    commands = [(folder / "logs" / f"{name}.log").read_text().splitlines()[0] for name in RUNS]
    assert all("train.py -c configs/digits_k2.yaml" in c and "--experiment tiny" in c for c in commands)


def test_second_invocation_runs_nothing(experiment, script, one_thread_here_and_in_runs, monkeypatch, capsys):
    folder, _ = experiment
    before = tree_digest(folder)
    started = []
    monkeypatch.setattr(script.subprocess, "run", lambda cmd, **_: started.append(cmd))  # no train.py may start
    assert script.main([*ARGS, "--out-dir", str(folder.parent), *TRAIN]) == 0
    assert started == []
    assert "6 runs, 6 done, 0 to run" in capsys.readouterr().out
    assert tree_digest(folder) == before  # not even the report files are rewritten


def test_concurrent_invocation_is_refused(experiment, script):
    folder, _ = experiment
    with (folder / ".lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another comparison is training in this folder
        with pytest.raises(UsageError, match="another compare.py is running on"):
            script.main([*ARGS, "--out-dir", str(folder.parent), *TRAIN])


def test_run_without_summary_is_resumed(experiment, script, one_thread_here_and_in_runs, capsys):
    folder, _ = experiment
    run = folder / "decoupled-k1-s1"
    expected = json.loads((run / "summary.json").read_text())["final_test_acc"]
    (run / "summary.json").unlink()
    assert script.main([*ARGS, "--out-dir", str(folder.parent), *TRAIN]) == 0
    out = capsys.readouterr().out
    assert "5 done, 1 to run" in out and "resuming decoupled-k1-s1" in out
    assert "--resume" in (folder / "logs" / "decoupled-k1-s1.log").read_text()
    assert json.loads((run / "summary.json").read_text())["final_test_acc"] == expected


def test_bad_input_exits_2(tmp_path):
    proc = cli("scripts/compare.py", "-c", "configs/digits_k2.yaml", "--modes", "greedy,greedier", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown mode 'greedier'" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["-c", "configs/digits_k2.yaml", "--k", "1,4"], "--k: 4 is outside 1..3"),
    (["-c", "configs/nope.yaml"], "does not exist"),
    (["-c", "configs/digits_k2.yaml", "--budget", "half"], "--budget"),
    (["-c", "configs/digits_k2.yaml", "--", "--k", "2"], "use compare.py's --k"),
    (["-c", "configs/digits_k2.yaml", "--", "--epoks", "2"], "unrecognized arguments"),
    (["-c", "configs/fashion_mnist_k2.yaml", "--", "--data-dir", "/nonexistent"], "does not exist"),
    (["-c", "configs/digits_k2.yaml", "--jobs", "2", "--launcher", "accelerate launch"], "--jobs above 1"),
    (["-c", "configs/digits_k2.yaml", "--methods", "dgl,infopro"], "--methods: unknown method 'infopro'; choose "
                                                                     "from greedy_sl, dgl, predsim"),
    (["-c", "configs/digits_k2.yaml", "--methods", "dgl,e2e,dgl"], "--methods: dgl,e2e,dgl names a method twice"),
    (["-c", "configs/digits_k2.yaml", "--methods", "dgl", "--modes", "greedy,decoupled"],
     "--modes: with --methods, the one mode the local methods train in, not greedy,decoupled"),
    (["-c", "configs/digits_k2.yaml", "--methods", "dgl", "--modes", "e2e"], "--modes: with --methods, the one mode"),
    (["-c", "configs/digits_k2.yaml", "--methods", "dgl", "--", "--aux", "cnn"],
     "--aux after `--`: --methods sets it per method"),
])
def test_bad_input_is_one_line(script, tmp_path, args, message):
    with pytest.raises(UsageError, match=message):
        script.main(["--out-dir", str(tmp_path), *args])
    assert not any(tmp_path.iterdir())  # refused before anything was written


METHODS = ["greedy_sl", "dgl", "predsim", "infopro_contrast", "auglocal", "man", "e2e", "e2e_ckpt"]


@pytest.mark.training
def test_methods_table_on_one_split(tmp_path):
    """--methods: every method on the same ResNet split into 3 modules, the local ones decoupled; one table with
    accuracy, time, activation memory per module against e2e and e2e_ckpt, auxiliary parameters, loss terms."""
    cli("scripts/compare.py", "-c", "configs/digits_resnet.yaml", "--methods", ",".join(METHODS), "--seeds", "0",
        "--modes", "decoupled", "--experiment", "methods", "--out-dir", str(tmp_path), "--",
        "--num-modules", "3", "--epochs", "1", env={"OMP_NUM_THREADS": "2"})
    folder = tmp_path / "methods"
    rows = {r["method"]: r for r in csv.DictReader((folder / "comparison.csv").open())}
    assert list(rows) == METHODS
    assert [rows[m]["mode"] for m in METHODS] == ["decoupled"] * 6 + ["e2e"] * 2
    assert all(float(r["final_acc_mean"]) > 0.3 for r in rows.values())  # one epoch; chance is 0.1
    params = {m: int(r["auxiliary_params"]) for m, r in rows.items()}
    assert params["e2e"] == params["e2e_ckpt"] == 0 < params["greedy_sl"] < params["predsim"]
    assert params["greedy_sl"] < params["infopro_contrast"] and params["dgl"] != params["greedy_sl"]
    assert params["auglocal"] > params["greedy_sl"]  # its copies of later units, besides the readout
    assert params["man"] > params["infopro_contrast"]  # InfoPro's modules (on y) and the trainable copy LB
    memory = {m: int(r["peak_activation_bytes"]) for m, r in rows.items()}
    assert memory["e2e_ckpt"] < memory["e2e"] and memory["greedy_sl"] < memory["e2e"]
    assert memory["infopro_contrast"] > memory["greedy_sl"]  # its decoder works at the input's resolution
    saved = {m: RunDir.open(folder / f"{m}-s0").load_config() for m in METHODS}
    assert saved["dgl"].aux == "mlp_sr" and saved["e2e_ckpt"].grad_checkpoint and not saved["e2e"].grad_checkpoint
    assert saved["infopro_contrast"].objective == "infopro_contrast" and saved["greedy_sl"].objective == "ce"
    assert saved["auglocal"].objective == "auglocal"
    table = (folder / "comparison.md").read_text()
    assert table.startswith("# methods: methods of local learning")
    assert "| e2e_ckpt | e2e | — |" in table  # e2e trains only the linear last head, which reads no k
    assert "| method | k | module 1 | module 2 | module 3 | max | vs e2e |" in table
    for name in PLOTS:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_changed_config_is_refused_for_an_existing_experiment(experiment, script):
    folder, _ = experiment
    before = tree_digest(folder)
    with pytest.raises(UsageError, match="was trained with epochs: 2 but this comparison asks for 3"):
        script.main([*ARGS, "--out-dir", str(folder.parent), *TRAIN[:-1], "3"])
    assert tree_digest(folder) == before


def test_plan_prints_commands_with_the_budget_and_wandb(script, tmp_path, capsys):
    args = ["-c", "configs/digits_k2.yaml", "--k", "2", "--seeds", "0", "--budget", "total", "--wandb", "--plan",
            "--experiment", "exp", "--out-dir", str(tmp_path), "--launcher", "accelerate launch --num_processes 2"]
    assert script.main(args) == 0
    out = capsys.readouterr().out
    lines = {line.split(" ")[0]: line for line in out.splitlines() if line.startswith(("greedy-", "e2e-", "dec"))}
    assert lines["greedy-k2-s0"].split(": ", 1)[1].startswith("accelerate launch --num_processes 2 train.py -c ")
    assert "--tracker wandb" in lines["e2e-k2-s0"] and "--experiment exp" in lines["e2e-k2-s0"]
    # total budget: e2e and decoupled get epochs x blocks (3 x 10) and the LR decay scaled alike (3 x 6)
    assert "--epochs 30 --decay-epochs 18.0 --e2e-epochs 30" in lines["e2e-k2-s0"]
    assert "--epochs 30 --decay-epochs 18.0" in lines["decoupled-k2-s0"]
    assert "--epochs" not in lines["greedy-k2-s0"]
    assert "budget total" in out and "| e2e | 2 | 30 |" in out
    assert not any(tmp_path.iterdir())


def test_wandb_summary_run_is_in_the_experiment_group(script, experiment, monkeypatch, tmp_path):
    """The summary table run: a real offline W&B run, job_type compare in the --experiment group, holding the
    table and the three plots, offline without credentials."""
    folder, _ = experiment
    shutil.copytree(folder, tmp_path / folder.name)  # the run lands in the experiment folder: a copy of it
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SERVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no credentials
    monkeypatch.setenv("WANDB_SILENT", "true")
    plan = script.make_plan(script.get_args([*ARGS, "--out-dir", str(tmp_path), "--wandb", *TRAIN]))
    rows = list(csv.DictReader((plan.folder / "comparison.csv").open()))
    script.log_to_wandb(plan, rows)
    assert os.environ["WANDB_MODE"] == "offline"
    import wandb

    wandb.teardown()  # a W&B service that an earlier in-process test started may still be writing the run's log
    run, history = read_offline_run(plan.folder)
    assert run.run_group == "tiny" and run.job_type == "compare" and run.display_name == "tiny-compare"
    [logged] = history
    assert {"comparison", "accuracy_by_depth", "accuracy_vs_time", "memory"} <= {k.split("/")[0] for k in logged}
    [files] = list(plan.folder.glob("wandb/offline-run-*/files"))
    [table] = list(files.glob("media/table/comparison_*.table.json"))
    saved = json.loads(table.read_text())
    assert saved["columns"] == list(rows[0]) and [r[0] for r in saved["data"]] == [r["mode"] for r in rows]
    images = sorted(p.name.split("_0_")[0] for p in files.glob("media/images/*.png"))
    assert images == ["accuracy_by_depth", "accuracy_vs_time", "loss_terms", "memory"]


# ---------------------------------------------------------------------------------------------- greedy.compare


def tiny_config(k: int = 2, **values):
    return build_config({**load_yaml("configs/digits_k2.yaml"), "widths": [8, 8, 16], "downsample": [3], "k": k,
                         "batch_size": 16, **values}, check_data=False)


def test_budget_rule():
    cfg = tiny_config(epochs=4, decay_epochs=3)
    assert compare.budget_overrides(cfg, "greedy", "total") == {}
    assert compare.budget_overrides(cfg, "decoupled", "per_stage") == {}
    assert compare.budget_overrides(cfg, "e2e", "per_stage") == {"e2e_epochs": 4}
    assert compare.budget_overrides(cfg, "e2e", "total") == {"epochs": 12, "decay_epochs": 9, "e2e_epochs": 12}
    assert compare.budget_overrides(cfg, "decoupled", "total") == {"epochs": 12, "decay_epochs": 9}


@pytest.mark.parametrize("mode, objective", [("greedy", "ce"), ("e2e", "ce"), ("decoupled", "ce"),
                                             ("greedy", "predsim"), ("decoupled", "infopro_contrast")])
def test_cost_matches_the_trainers_steps(mode, objective, one_thread):
    """FLOPs and saved bytes equal FlopCounterMode / saved_tensor_bytes around train_step / decoupled_step, the
    local objective's own modules included."""
    cfg = tiny_config(k=3, mode=mode, cache="off", epochs=1, objective=objective)
    net, shape, _ = costs._net(cfg, "cpu")
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    stats = (0.5,) * shape[0]
    accelerator = Accelerator(cpu=True)
    builder = GreedyBuilder(net, mode, objective, image_shape=shape, mean=stats, std=stats)
    weights = [*net.parameters(), *net.buffers(), *(t for o in builder.objectives for t in (*o.parameters(),
                                                                                          *o.buffers()))]
    flops, saved = 0.0, []
    for i in range(builder.num_stages):
        stage = builder.stage(i)
        optimizers = [torch.optim.SGD(p.parameters(), lr=0.0) for p in stage.parts]
        if stage.decoupled:
            step = lambda s=stage, o=optimizers: decoupled_step(  # noqa: E731
                s.prefix, s.parts, o, accelerator, x, y, s.needs_input)
            h = stage.prefix(x)
            for part in stage.parts:  # each part's graph is freed by its own backward: its peak is its own
                saved.append(saved_tensor_bytes(lambda p=part, h=h: total_loss(p(h, y, x)[2]).backward(), weights))
                h = part(h)[0].detach()
        else:
            step = lambda s=stage, o=optimizers: train_step(  # noqa: E731
                s.prefix, s.trainable, o[0], accelerator, x, y, s.needs_input)
            saved.append(saved_tensor_bytes(step, weights))
        with FlopCounterMode(display=False) as counter:
            step()
        flops += counter.get_total_flops()
    cost = costs.measure_cost(cfg, n_train=16)
    assert cost.train_flops == flops and cost.cache_flops == 0 and not cost.cached
    assert cost.peak_activation_bytes == max(saved)


def test_cached_greedy_counts_the_prefix_once(one_thread):
    uncached = costs.measure_cost(tiny_config(cache="off", epochs=3), n_train=100)
    cached = costs.measure_cost(tiny_config(cache="on", epochs=3), n_train=100)
    prefix = [p for p, _ in costs.flops_per_image(tiny_config())]
    assert cached.cached and cached.cache_flops == prefix[-1] * 100  # blocks 1..J-1, once each
    assert uncached.train_flops - cached.step_flops == pytest.approx(sum(prefix) * 100 * 3)


def test_activation_bytes_extrapolate_exactly(one_thread):
    """Saved bytes are affine in the batch: the 2 -> 4 extrapolation equals measuring at the full batch."""
    cfg = tiny_config(batch_size=24)
    net, shape, _ = costs._net(cfg, "cpu")
    stage = GreedyBuilder(net, "e2e").stage(0)
    x, y = torch.randn(24, *shape), torch.randint(0, 10, (24,))
    direct = saved_tensor_bytes(lambda: F.cross_entropy(stage.trainable(x)[1], y).backward(),
                                [*net.parameters(), *net.buffers()])
    assert costs.activation_bytes(tiny_config(batch_size=24, mode="e2e")) == direct


def test_time_curve_adds_up_the_stages():
    spec = compare.RunSpec("greedy", 1, 0)
    metrics = [{"stage": s, "epoch": e, "time": 10.0 * e, "test_acc": 0.1 * s} for s in (1, 2) for e in (1, 2)]
    result = compare.RunResult(spec, {"stage_test_acc": [0.1, 0.2]}, metrics)
    assert compare.time_curve(result) == [(10.0, 0.1), (20.0, 0.1), (30.0, 0.2), (40.0, 0.2)]


# ---------------------------------------------------------------------------------------------- runs that exist


def test_existing_runs_are_compared_as_they_are(experiment, script, tmp_path, one_thread, capsys):
    """compare.py RUN_DIR ...: the same numbers as the grid's own table, from the run directories alone; nothing
    trains and nothing in the runs changes."""
    folder, _ = experiment
    before = tree_digest(folder)
    runs = [str(folder / name) for name in RUNS]
    assert script.main([*runs, "--out-dir", str(tmp_path), "--experiment", "mine"]) == 0
    assert tree_digest(folder) == before
    grid = {r["mode"]: r for r in csv.DictReader((folder / "comparison.csv").open())}
    mine = list(csv.DictReader((tmp_path / "mine" / "comparison.csv").open()))
    # the groups differ in mode (and e2e's e2e_epochs, which train.py reads): runs differing in seed are averaged
    assert [r["method"] for r in mine] == ["mode=greedy e2e_epochs=None", "mode=e2e e2e_epochs=2",
                                           "mode=decoupled e2e_epochs=None"]
    for r in mine:
        ref = grid[r["mode"]]
        assert r["seeds"] == "2" and r["k"] == "1"
        for key in ("final_acc_mean", "final_acc_std", "best_stage", "peak_activation_bytes", "train_flops"):
            assert r[key] == ref[key], key
    table = (tmp_path / "mine" / "comparison.md").read_text()
    assert table.startswith("# mine: runs compared as they were trained") and "nothing retrained" in table
    assert "The groups differ in: mode, e2e_epochs." in table and "**chosen on the test set**" in table
    for name in PLOTS:
        assert (tmp_path / "mine" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| mode=e2e e2e_epochs=2 | e2e | 1 |" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["PARTIAL"], "PARTIAL has not finished (no summary.json); finish it with `python train.py --resume PARTIAL` or "
                  "leave it out"),
    (["NOTARUN"], "NOTARUN is not a run directory (no config.yaml); pass a directory made by train.py"),
    (["DONE", "DONE"], "DONE is given twice (also as DONE); name each run once"),
    (["DONE", "-c", "configs/digits_k2.yaml"], "give -c CONFIG (train a grid and compare it) or RUN_DIRs (compare "
                                               "runs that exist), not both"),
    ([], "nothing to compare: pass -c configs/<name>.yaml to train and compare a grid, or finished run directories"),
    (["DONE", "--modes", "greedy"], "--modes is for training a grid (-c); RUN_DIRs are compared as they were trained: "
                                    "drop it"),
    (["DONE", "--", "--epochs", "3"], "-- --epochs 3 is for training a grid (-c)"),
    (["-c", "configs/digits_k2.yaml", "--epochs", "3", "--seeds", "0"],
     "unrecognized arguments: --epochs 3; train.py's config overrides go after `--`: compare.py --out-dir OUT -c "
     "configs/digits_k2.yaml --seeds 0 -- --epochs 3"),
    (["-c", "configs/fashion_mnist_resnet.yaml", "--k", "1,2"], "--k 1,2: no auxiliary net of this config reads k "
     "(aux mlp_sr, final_head linear); the runs would be identical: drop --k"),
])
def test_bad_runs_and_flags_are_one_line(experiment, script, tmp_path, args, message):
    folder, _ = experiment
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text((folder / "greedy-k1-s0" / "config.yaml").read_text())
    out = tmp_path / "out"
    subst = {"NOTARUN": str(tmp_path / "nope"), "DONE": str(folder / "greedy-k1-s0"), "PARTIAL": str(partial),
             "OUT": str(out)}
    args = [subst.get(a, a) for a in args]
    for key, value in subst.items():
        message = message.replace(key, value)
    with pytest.raises(UsageError) as err:
        script.main(["--out-dir", str(out), *args])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_k_is_swept_only_where_an_auxiliary_net_reads_it(script, tmp_path, capsys):
    """digits_resnet: aux cnn reads k in greedy and decoupled, its linear last head does not in e2e: e2e runs once
    per seed. fashion_mnist_resnet (aux mlp_sr): no run reads k, one run per mode and seed."""
    assert script.main(["-c", "configs/digits_resnet.yaml", "--seeds", "0", "--plan", "--out-dir",
                        str(tmp_path)]) == 0
    names = [line.split(" ")[0] for line in capsys.readouterr().out.splitlines() if " [new]: " in line]
    assert names == ["greedy-k1-s0", "e2e-s0", "decoupled-k1-s0", "greedy-k2-s0", "decoupled-k2-s0", "greedy-k3-s0",
                     "decoupled-k3-s0"]
    assert script.main(["-c", "configs/fashion_mnist_resnet.yaml", "--seeds", "0", "--plan", "--out-dir",
                        str(tmp_path), "--", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert [line.split(" ")[0] for line in out.splitlines() if " [new]: " in line] == [
        "greedy-s0", "e2e-s0", "decoupled-s0"]
    assert "| greedy | — |" in out and not any(tmp_path.iterdir())


def test_help_shows_the_defaults_and_the_passthrough(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--help"])
    text = capsys.readouterr().out
    assert "(default: 0,1,2)" in text and "(default: per_stage)" in text and "(default: runs)" in text
    assert "-- --epochs 3" in text and "27 runs" in text and "RUN_DIR" in text


def test_a_key_only_some_modes_read_is_dropped_where_unread_with_one_warning(script, tmp_path, capsys):
    args = ["-c", "configs/digits_k2.yaml", "--modes", "greedy,e2e,decoupled", "--k", "1,2", "--seeds", "0",
            "--out-dir", str(tmp_path), "--", "--grad-checkpoint", "true"]
    plan = script.make_plan(script.get_args(args))
    where = "configs/digits_k2.yaml and the overrides after --"
    assert capsys.readouterr().err.splitlines() == [  # once for the grid, not once per k
        f"warning: config key 'grad_checkpoint': True in {where} is not read (only mode e2e reads it, this run is "
        f"{mode}); this run leaves it at False" for mode in ("greedy", "decoupled")]
    assert len(plan.runs) == 6
    for run in plan.runs:
        e2e = run.spec.mode == "e2e"
        assert run.cfg.grad_checkpoint == e2e and ("grad_checkpoint" in run.overrides) == e2e
