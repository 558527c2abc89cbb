"""`evaluate.py RUN --analysis`: every probe family on a tiny greedy run compared with an e2e one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import evaluate
from greedy.analysis.report import (
    LoadedRun,
    check_flags,
    check_same_architecture,
    json_safe,
    log_wandb,
    parse_names,
    settings_from_args,
)
from greedy.analysis.runner import FAMILIES, PAIRWISE, AnalysisSettings, run_analysis
from greedy.checkpoint import RunDir
from greedy.datasets import create_datasets
from greedy.errors import UsageError
from greedy.models import GreedyNet, create_greedy_net
from tests.helpers import ROOT, cli, tree_digest

TRAIN = ["-c", "configs/digits_k2.yaml", "--widths", "16,16,32", "--downsample", "3", "--epochs", "2", "--k", "1",
         "--no-progress"]
SMALL = ["--analysis-samples", "200", "--mc-samples", "300", "--segments", "2", "--noise-samples", "4",
         "--sigmas", "0.5,1,2", "--aniso-samples", "32", "--aniso-rank", "2", "--aniso-probes", "2",
         "--path-points", "3"]
PNGS = {"probes", "clustering", "information", "cka", "cka_compare", "noise", "spectrum", "regions", "moments", "chaos",
        "anisotropy", "connectivity"}
# One torch thread: on a shared 2-core machine two OpenMP threads spin against other processes (5x slower).
ENV = {"OMP_NUM_THREADS": "1"}
PER_DEPTH = {"linear": 0, "knn": 0, "clustering": 0, "cka": 0, "binned_entropy": 1, "information": 1, "regions": 1,
             "moments": 0, "chaos": 0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    for name, mode in (("a", "greedy"), ("b", "e2e")):
        cli("train.py", *TRAIN, "--mode", mode, "--experiment", "cmp", "--out-dir", str(out), "--name", name,
            env=ENV)
    return out


@pytest.fixture(scope="module")
def analysed(runs: Path) -> tuple[dict, dict, dict, subprocess.CompletedProcess]:
    """Digests of both runs before, then analysis.json and the process of `--analysis all --compare`."""
    before = {name: tree_digest(runs / name) for name in ("a", "b")}
    argv = [str(runs / "a"), "--analysis", "all", "--compare", str(runs / "b"), *SMALL]
    code = ("import runpy, sys\n"
            f"sys.argv = ['evaluate.py', *{argv!r}]\n"
            "try:\n    runpy.run_path('evaluate.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('wandb imported:', 'wandb' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "disabled", **ENV})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    analysis = json.loads((runs / "a" / "analysis.json").read_text(),
                          parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    return before, {name: tree_digest(runs / name) for name in ("a", "b")}, analysis, proc


def _numbers(obj) -> list[float]:
    """Every number in a JSON value."""
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _numbers(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in _numbers(x)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def test_every_family_has_one_entry_per_depth(analysed):
    _, _, analysis, _ = analysed
    assert analysis["families"] == list(FAMILIES)
    assert [r["mode"] for r in analysis["runs"]] == ["greedy", "e2e"]
    for run in analysis["runs"]:
        res = run["results"]
        assert set(FAMILIES) - (set(PAIRWISE) if run["role"] == "B" else set()) <= set(res)  # a path is A's
        for fam, first in PER_DEPTH.items():
            assert [e["depth"] for e in res[fam]["layers"]] == list(range(first, 4)), fam
            assert "settings" in res[fam] and res[fam]["settings"]["samples"] == 200
        spectrum = res["spectrum"]["layers"]
        assert sorted({e["depth"] for e in spectrum}) == [1, 2, 3] and len(spectrum) == 6  # conv + fc per stage
        # 9 eigenvalues (1-channel first conv), 10 (10-class heads): weightwatcher's small-N fits, flagged
        assert all(e["reliable"] == (e["n"] >= 20) for e in spectrum) and not any(e["reliable"] for e in spectrum
                                                                                   if e["kind"] == "head")
        kept = [e["alpha"] for e in spectrum if e["reliable"] and e["trained"]]
        assert kept and res["spectrum"]["mean_alpha"] == pytest.approx(sum(kept) / len(kept))
        assert [m["model"] for m in res["noise"]["models"]] == ["final"]
        views = [(e["layer"], e["depth"], e["rank"], e["n"]) for e in res["anisotropy"]["layers"]]
        stages = [(f"stage{d}", d, 2, 32) for d in (1, 2, 3)] if run["mode"] == "greedy" else []  # e2e: one problem
        assert views == [*stages, ("net", 3, 2, 32)]
        assert res["noise"]["sigmas"] == [0.5, 1.0, 2.0]
        moments, chaos = res["moments"]["layers"], res["chaos"]["layers"]
        assert moments[0]["chi"] == moments[0]["init_chi"] == 1.0 and res["moments"]["settings"]["n"] == 200
        assert [e["dim"] for e in moments] == [1, 16, 16, 32] and all(e["init_reff_signal"] >= 1 for e in moments)
        assert all(e["activation"] == e["init_activation"] == "relu" and e["batchnorm"] for e in chaos[1:])
        assert chaos[1]["c_pred"] == pytest.approx(chaos[0]["c"])  # block 1: no bias, identity on the input
        assert res["chaos"]["eoc"]["relu"]["sigma_w"][0] == pytest.approx(math.sqrt(2))
    # both runs start from the same net (same config and seed): their init values agree
    a, b = (run["results"]["chaos"]["layers"] for run in analysis["runs"])
    assert [e.get("init_sigma_w2") for e in a] == [e.get("init_sigma_w2") for e in b] and a[1]["init_sigma_w2"] > 0
    assert {"torch", "numpy", "scikit-learn", "greedy", "python"} <= set(analysis["versions"])
    assert analysis["settings"]["samples"] == 200 and analysis["settings"]["mc_samples"] == 300


@pytest.mark.training
def test_numbers_are_finite_and_in_range(analysed):
    _, _, analysis, _ = analysed
    assert all(math.isfinite(v) for v in _numbers(analysis))
    a_res, b_res = (run["results"] for run in analysis["runs"])
    # depth 0 is the input, the same samples for both runs: what the probes find there cannot depend on training
    for fam in ("linear", "knn", "clustering"):
        assert a_res[fam]["layers"][0]["depth"] == 0 and a_res[fam]["layers"][0] == b_res[fam]["layers"][0], fam
    for run in analysis["runs"]:
        res = run["results"]
        accs = [e[k] for fam in ("linear", "knn") for e in res[fam]["layers"] for k in ("train_acc", "test_acc")
                if k in e]
        assert accs and all(0.0 <= a <= 1.0 for a in accs)
        assert res["linear"]["layers"][-1]["test_acc"] > 0.5  # the trained net's last block; chance is 0.1
        assert all(0.0 <= e["silhouette"] + 1 <= 2 and e["ratio"] > 0 for e in res["clustering"]["layers"])
        # regions of the net up to block l refine those up to block l - 1 (its ReLUs and all before): never fewer
        regions = [e["n_regions"] for e in res["regions"]["layers"]]
        assert regions == sorted(regions), regions
        cka = torch.tensor(res["cka"]["matrix"])
        assert torch.allclose(cka.diagonal(), torch.ones(4)) and torch.allclose(cka, cka.T)
        assert bool(((cka >= -1e-9) & (cka <= 1 + 1e-9)).all())
        info = res["information"]
        assert all(-0.2 <= e["mi_nats"] <= info["max_nats"] + 0.2 and e["dim"] == 3 for e in info["layers"])
        assert all(0 <= e["h_bin"] <= res["binned_entropy"]["max_nats"] + 1e-9 for e in res["binned_entropy"]["layers"])
        assert all(e["n_regions"] >= 1 for e in res["regions"]["layers"])
        assert all(0.0 <= p <= 1.0 for m in res["noise"]["models"] for p in m["mean_error"])
    b_heads = analysis["runs"][1]["results"]["information"]["noisy_head_acc"]
    assert [h["trained"] for h in b_heads] == [False, False, True]  # e2e fits only the last head
    compare = torch.tensor(analysis["compare"]["cka"]["matrix"])
    assert compare.shape == (4, 4) and bool(((compare >= -1e-9) & (compare <= 1 + 1e-9)).all())
    assert compare[0, 0] == pytest.approx(1.0)  # both runs see the same inputs
    for e in analysis["runs"][0]["results"]["anisotropy"]["layers"]:
        assert e["trace_sigma"] > 0 and e["lambda_max"] >= e["lambda_min_top"] and len(e["eigenvalues"]) == 2
        assert e["tr_h_sigma_iso"] == pytest.approx(e["trace_h"] * e["trace_sigma"] / e["dim"])  # Tr(H): 2 probes
    conn = analysis["runs"][0]["results"]["connectivity"]
    assert conn["alphas"] == [0.0, 0.5, 1.0] and conn["bn_recomputed"]
    [final] = conn["paths"]  # greedy vs e2e: only the last head is trained in both
    assert final["model"] == "final" and final["train_loss_barrier"] >= 0 and len(final["test_acc"]) == 3
    assert all(0 <= a <= 1 for a in final["test_acc"] + final["stored_bn_test_acc"])
    assert min(final["stored_bn_test_acc"]) > 0.5  # both endpoints are trained nets; chance is 0.1


def test_plots_and_summary_are_written_and_nothing_else_changes(analysed, runs):
    before, after, _, proc = analysed
    pngs = {p.stem for p in (runs / "a" / "analysis").iterdir()}
    assert pngs == PNGS
    assert all((runs / "a" / "analysis" / f"{n}.png").read_bytes()[:4] == b"\x89PNG" for n in PNGS)
    new = {k for k in after["a"] if k == "analysis.json" or k.startswith("analysis/")}
    assert {k: v for k, v in after["a"].items() if k not in new} == before["a"]  # model.safetensors etc.
    assert after["b"] == before["b"]  # the compared run is only read
    assert "final test accuracy" in proc.stdout and "analysis of a (greedy, k=1)" in proc.stdout
    assert "anisotropy stage1: Tr(H Sigma)" in proc.stdout and "connectivity final -> b (e2e, k=1)" in proc.stdout
    assert "wandb imported: False" in proc.stdout


def test_unknown_analysis_name_is_one_line_and_exit_2(runs):
    proc = cli("evaluate.py", str(runs / "a"), "--analysis", "linear,bogus", check=False, env=ENV)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'bogus'" in lines[0] and "linear" in lines[0] and "all" in lines[0]


def test_names_and_flags():
    assert parse_names("all") == list(FAMILIES)
    assert parse_names("cka, linear") == ["linear", "cka"]  # canonical order
    with pytest.raises(UsageError, match="choose from"):
        parse_names(",")
    parser = evaluate.get_args_parser()
    with pytest.raises(UsageError, match="--analysis"):
        check_flags(parser.parse_args(["runs/x", "--compare", "runs/y"]))
    with pytest.raises(UsageError, match="--sigmas"):
        settings_from_args(parser.parse_args(["runs/x", "--analysis", "all", "--sigmas", "0,1"]))
    with pytest.raises(UsageError):
        parser.parse_args(["runs/x", "--analysis", "all", "--sigmas", "a,b"])
    with pytest.raises(UsageError, match=r"^--analysis connectivity needs two runs of one architecture; add "
                                         r"--compare RUN_B$"):
        check_flags(parser.parse_args(["runs/x", "--analysis", "cka,connectivity"]))
    assert "connectivity" in check_flags(parser.parse_args(["runs/x", "--analysis", "all"]))  # skipped, noted
    with pytest.raises(UsageError, match="--path-points must be at least 3"):
        settings_from_args(parser.parse_args(["runs/x", "--analysis", "all", "--path-points", "2"]))


def test_connectivity_refuses_two_architectures():
    data = create_datasets("digits", augment="none")
    nets = [GreedyNet(w, data.num_classes, in_chans=1, k=1) for w in ([8, 8], [8, 16])]
    loaded = [LoadedRun(SimpleNamespace(path=Path(f"runs/{n}")), None, data, net)
              for n, net in zip("ab", nets, strict=True)]
    with pytest.raises(UsageError, match=r"^--compare runs/b: connectivity interpolates weights of one "
                                         r"architecture, but the runs differ at heads\.1\.bn\.weight \(\(8,\) vs "
                                         r"\(16,\)\); compare two seeds, or greedy and e2e, of one config$"):
        check_same_architecture(*loaded)


def test_connectivity_of_two_greedy_nets_goes_module_by_module():
    """Both endpoints train every head: one path per head (blocks 1..j and head j interpolated). Between a net and
    itself every path is flat and every barrier 0, BatchNorm statistics recomputed at each point included."""
    data = create_datasets("digits", augment="none")
    torch.manual_seed(0)
    a, b = GreedyNet([8, 8], data.num_classes, in_chans=1, k=2), GreedyNet([8, 8], data.num_classes, in_chans=1, k=2)
    settings = AnalysisSettings(samples=100, path_points=5)
    res = json_safe(run_analysis(a, data, ["connectivity"], settings, other=b))["connectivity"]
    assert [p["model"] for p in res["paths"]] == ["head1", "final"] and res["alphas"] == [0, 0.25, 0.5, 0.75, 1]
    same = json_safe(run_analysis(a, data, ["connectivity"], settings, other=a))["connectivity"]
    for p in same["paths"]:
        assert len(set(p["train_loss"])) == 1 and len(set(p["test_acc"])) == 1
        assert abs(p["train_loss_barrier"]) < 1e-12 and abs(p["test_error_barrier"]) < 1e-12
    alone = run_analysis(a, data, ["connectivity"], settings)["connectivity"]
    assert alone["skipped"] and "--compare" in alone["notes"]


def _read_when_finished(run_dir: Path, read, timeout: float = 20.0):
    """Read the offline W&B run once its writer has flushed the logged step (finish() may return first)."""
    deadline = time.monotonic() + timeout
    while True:
        record, history = read(run_dir)
        if any("plots/probes/_type" in row for row in history) or time.monotonic() > deadline:
            return record, history
        time.sleep(0.2)


def test_wandb_logs_a_new_analysis_run_in_the_experiment_group(analysed, runs, tmp_path, monkeypatch):
    from tests.wandb_log import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path))  # no credentials anywhere
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    _, _, analysis, _ = analysed
    run = RunDir.open(runs / "a")
    pngs = sorted((runs / "a" / "analysis").glob("*.png"))
    log_wandb(LoadedRun(run, run.load_config(), None, None), analysis, pngs, say=lambda _: None)
    record, history = _read_when_finished(runs / "a" / "analysis", read_offline_run)
    assert (record.job_type, record.run_group, record.display_name) == ("analysis", "cmp", "a-analysis")
    [row] = [r for r in history if "plots/probes/_type" in r]  # one step holds everything
    tables = ("A/linear", "B/regions", "A/noise", "compare/cka", "A/moments", "B/chaos", "B/anisotropy",
              "A/connectivity")
    assert {f"{k}/_type" for k in tables} <= set(row)


def test_head_hidden_layers_are_probed_with_heads():
    data = create_datasets("digits", augment="none")
    torch.manual_seed(0)
    net = GreedyNet([8, 8], data.num_classes, in_chans=1, k=2)
    settings = AnalysisSettings(samples=60, heads=True, mc_samples=100, noisy_passes=2, segments=1,
                                segment_points=50, noise_samples=2, sigmas=(1.0,), noise_heads=True)
    res = json_safe(run_analysis(net, data, ["linear", "information", "regions", "noise"], settings))
    names = [e["layer"] for e in res["linear"]["layers"]]
    assert names == ["input", "block1", "head1.conv1", "block2", "head2.conv1"]
    assert [e["layer"] for e in res["information"]["layers"]] == names[1:]
    assert [e["layer"] for e in res["regions"]["layers"]] == ["block1", "block2"]  # blocks only
    assert [m["model"] for m in res["noise"]["models"]] == ["head1", "final"]


def test_analysis_takes_each_local_module_of_a_residual_net(tmp_path):
    """A ResNet cut into 3 local modules: every probe family reports each module's output."""
    cli("train.py", "-c", "configs/digits_resnet.yaml", "--epochs", "1", "--num-modules", "3", "--no-progress",
        "--out-dir", str(tmp_path), "--name", "res", env=ENV)
    cli("evaluate.py", str(tmp_path / "res"), "--analysis", "all", *SMALL, env=ENV)
    analysis = json.loads((tmp_path / "res" / "analysis.json").read_text())
    res = analysis["runs"][0]["results"]
    for fam, first in PER_DEPTH.items():
        if fam != "cka":
            assert [e["depth"] for e in res[fam]["layers"]] == list(range(first, 4)), fam
    assert sorted({e["depth"] for e in res["spectrum"]["layers"]}) == [1, 2, 3]
    assert all(math.isfinite(v) for v in _numbers(analysis))
    assert {p.stem for p in (tmp_path / "res" / "analysis").glob("*.png")} >= PNGS - {"cka_compare", "connectivity"}
    assert res["connectivity"]["skipped"] and [e["layer"] for e in res["anisotropy"]["layers"]] == [
        "stage1", "stage2", "stage3", "net"]


def test_initial_net_is_the_net_train_py_started_from(tmp_path, monkeypatch):
    """report.initial_net rebuilds exactly the weights train.py created before its first step."""
    import train
    from greedy import session
    from greedy.analysis.report import initial_net

    created = []

    def spy(*args, **kwargs):
        net = create_greedy_net(*args, **kwargs)
        created.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        return net

    monkeypatch.setattr(session, "create_greedy_net", spy)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert train.main([*TRAIN, "--epochs", "1", "--seed", "3", "--out-dir", str(tmp_path), "--name", "r"]) == 0
    run = RunDir.open(tmp_path / "r")
    cfg = run.load_config()
    data = create_datasets(cfg.dataset, augment="none")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    rebuilt = initial_net(cfg, data).state_dict()
    assert torch.rand(1) == before  # the caller's random state is left as it was
    assert created and rebuilt.keys() == created[0].keys()
    assert all(torch.equal(rebuilt[k], created[0][k]) for k in rebuilt)
    trained = evaluate.load_trained(run)[2].state_dict()
    assert not torch.equal(trained["blocks.0.conv.weight"], rebuilt["blocks.0.conv.weight"])


def test_a_bad_compare_run_is_refused_before_any_evaluation(runs, tmp_path, monkeypatch, capsys):
    """`evaluate.py RUN --analysis linear --compare runs/nope` used to evaluate RUN fully first."""
    from greedy.errors import exit_code

    def never(*args, **kwargs):
        raise AssertionError("nothing may be loaded before --compare is checked")

    monkeypatch.setattr(evaluate, "load_trained", never)
    code = exit_code(evaluate.main, [str(runs / "a"), "--analysis", "linear", "--compare", str(tmp_path / "nope")])
    assert code == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'nope'} is not a run directory (no config.yaml); pass a "
                                       "directory made by train.py\n")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((runs / "b" / "config.yaml").read_text())
    code = exit_code(evaluate.main, [str(runs / "a"), "--analysis", "linear", "--compare", str(unfinished)])
    assert code == 2 and f"--compare {unfinished} has no model.safetensors" in capsys.readouterr().err


def test_a_run_is_labelled_with_k_only_where_an_auxiliary_net_reads_it(tmp_path):
    from greedy.analysis.report import LoadedRun
    from greedy.config import build_config, load_yaml

    base = load_yaml("configs/digits_k2.yaml")
    cnn = build_config({**base, "k": 3}, check_data=False)
    dgl = build_config({**base, "aux": "mlp_sr"}, check_data=False)
    assert LoadedRun(RunDir(tmp_path / "a"), cnn, None, None).label == "a (greedy, k=3)"
    assert LoadedRun(RunDir(tmp_path / "b"), dgl, None, None).label == "b (greedy)"  # mlp_sr reads no k
