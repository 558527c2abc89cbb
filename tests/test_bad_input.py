"""Bad input is refused before any work: exit code 2, one line on stderr, no traceback, nothing written or changed.

The table runs train.main in this process (a subprocess per case would cost seconds each); test_train.py and the
fp16 case below run the real CLI in a subprocess.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

import train
from greedy.config import RANGES
from greedy.errors import exit_code
from greedy.schema import FIELDS
from tests.helpers import TINY, cli, tree_digest

# Every config key gets at least one bad value here (test_every_key_has_a_bad_value checks that).
BAD_VALUES = [
    # the examples
    (["--decay-rate", "0"], "config key 'decay_rate': 0.0 is outside the allowed range (0, 1]"),
    (["--decay-rate", "-2"], "config key 'decay_rate': -2.0 is outside the allowed range (0, 1]"),
    (["--lr", "nan"], "config key 'lr': nan is not a finite number"),
    (["--lr", "inf"], "config key 'lr': inf is not a finite number"),
    (["--weight-decay", "-1"], "config key 'weight_decay': -1.0 is outside the allowed range [0, inf)"),
    (["--num-workers", "-1"], "config key 'num_workers': -1 is outside the allowed range [0, inf)"),
    # the rest of the schema
    (["--lr", "0"], "config key 'lr': 0.0 is outside the allowed range (0, inf)"),
    (["--lr", "fast"], "config key 'lr': 'fast' is not a number"),
    (["--momentum", "1.5"], "config key 'momentum': 1.5 is outside the allowed range [0, 1)"),
    (["--decay-epochs", "0"], "config key 'decay_epochs': 0.0 is outside the allowed range (0, inf)"),
    (["--warmup-epochs", "-1"], "config key 'warmup_epochs': -1 is outside the allowed range [0, inf)"),
    (["--cache-budget-gb", "-1"], "config key 'cache_budget_gb': -1.0 is outside the allowed range [0, inf)"),
    (["--cache-budget-gb", "nan"], "config key 'cache_budget_gb': nan is not a finite number"),
    (["--cache-device-gb", "-1"], "config key 'cache_device_gb': -1.0 is outside the allowed range [0, inf)"),
    (["--device-data", "gpu"], "config key 'device_data': 'gpu' is not one of auto, on, off"),
    (["--dataset", "imagenet", "--device-data", "on"], "config key 'device_data': on holds an in-memory dataset on "
     "the accelerator; imagenet is decoded from image folders by DataLoader workers: use --device-data auto or off"),
    (["--seed", "-1"], "config key 'seed': -1 is outside the allowed range [0, 4294967295]"),
    (["--epochs", "0"], "config key 'epochs': 0 is outside the allowed range [1, inf)"),
    (["--epochs", "1.5"], "config key 'epochs': '1.5' is not an integer"),
    (["--e2e-epochs", "0"], "config key 'e2e_epochs': 0 is outside the allowed range [1, inf)"),
    (["--batch-size", "0"], "config key 'batch_size': 0 is outside the allowed range [1, inf)"),
    (["--eval-batch-size", "-4"], "config key 'eval_batch_size': -4 is outside the allowed range [1, inf)"),
    (["--grad-accum", "0"], "config key 'grad_accum': 0 is outside the allowed range [1, inf)"),
    (["--log-every", "0"], "config key 'log_every': 0 is outside the allowed range [1, inf)"),
    (["--finite-check-every", "0"], "config key 'finite_check_every': 0 is outside the allowed range [1, inf)"),
    (["--mode", "decoupled", "--pipeline", "2", "--probe-every", "1"], "config key 'probe_every': probes during "
     "training need the whole net in one process, but --pipeline 2 spreads its blocks"),
    (["--probe-every", "-1"], "config key 'probe_every': -1 is outside the allowed range [0, inf)"),
    (["--probe-every", "2", "--probes", "linear,informaton"],
     "config key 'probes': 'informaton' is not a probe during training; did you mean 'information'? choose from "
     "linear, knn, clustering, binned_entropy, information"),
    (["--probe-every", "1", "--probes", ""], "config key 'probes': empty while probe_every is 1; name at least one"),
    (["--probe-samples", "5"], "config key 'probe_samples': 5 is outside the allowed range [10, inf)"),
    (["--pool-size", "0"], "config key 'pool_size': 0 is outside the allowed range [1, inf)"),
    (["--aux-width", "0"], "config key 'aux_width': 0 is outside the allowed range [1, inf)"),
    (["--val-split", "1"], "config key 'val_split': 1.0 is outside the allowed range [0, 1)"),
    (["--norm-mean", "0.5"], "config keys norm_mean/norm_std: [0.5] and [] must give one value per channel of "
                             "digits (1), e.g. --norm-mean 0.5 --norm-std 0.25"),
    (["--norm-mean", "0.5", "--norm-std", "0"], "config keys norm_mean/norm_std: [0.5] and [0.0] must be finite, "
                                                "each std > 0"),
    (["--dataset", "imagenet", "--norm-mean", "0.5", "--norm-std", "0.2"], "config keys norm_mean/norm_std: [0.5] "
     "and [0.2] must give one value per channel of imagenet (3), e.g. --norm-mean 0.5,0.5,0.5 --norm-std "
     "0.25,0.25,0.25"),
    (["--k", "0"], "config key 'k': 0 is outside the allowed range [1, 3]"),
    (["--num-classes", "1"], "config key 'num_classes': 1 is outside the allowed range [2, inf)"),
    (["--img-size", "0"], "config key 'img_size': 0 is outside the allowed range [1, inf)"),
    (["--widths", "16,0"], "config key 'widths': [16, 0] must be a non-empty list of positive integers"),
    (["--downsample", "2,2"], "config key 'downsample': [2, 2] names a block twice"),
    (["--mode", "fancy"], "config key 'mode': 'fancy' is not one of greedy, e2e, decoupled"),
    (["--dataset", "mnist"], "config key 'dataset': 'mnist' is not one of digits, fashion_mnist"),
    (["--augment", "mixup"], "config key 'augment': 'mixup' is not one of none, crop_flip, imagenet"),
    (["--augment", "imagenet"], "config key 'augment': 'imagenet' does not apply to dataset 'digits'"),
    (["--downsample-mode", "avgpool"], "config key 'downsample_mode': 'avgpool' is not one of"),
    (["--final-head", "transformer"], "config key 'final_head': 'transformer' is not one of auxiliary, cnn, mlp"),
    (["--arch", "vit"], "config key 'arch': 'vit' is not one of plain, resnet, timm"),
    (["--arch", "timm"], "config key 'model': arch timm needs a timm model name (e.g. --model resnet18)"),
    (["--model", "resnet18"], "config key 'model': 'resnet18' is for arch timm (arch is plain)"),
    (["--pretrained", "true"], "config key 'pretrained': True is for arch timm (arch is plain)"),
    (["--final-head", "timm"], "config key 'final_head': 'timm' (the timm model's own classifier) is for arch timm"),
    (["--arch", "timm", "--model", "resnet5O", "--num-modules", "2"], "unknown timm model 'resnet5O'; did you mean"),
    (["--block", "wide"], "config key 'block': 'wide' is not one of basic, bottleneck"),
    (["--shortcut", "C"], "config key 'shortcut': 'C' is not one of A, B"),
    (["--arch", "resnet", "--depths", "1,0,1"], "config key 'depths': [1, 0, 1] must give at least 1 residual block"),
    (["--depths", "1,1,1"], "config key 'depths': [1, 1, 1] is for arch resnet (arch is plain)"),
    (["--stem-width", "0"], "config key 'stem_width': 0 is outside the allowed range [1, inf)"),
    (["--num-modules", "0"], "config key 'num_modules': 0 is outside the allowed range [1, inf)"),
    (["--num-modules", "5"], "config key 'num_modules': 5 is outside 1..3 (the net has 3 units)"),
    (["--split-points", "2,1"], "config key 'split_points': [2, 1] must be increasing unit indices >= 1"),
    (["--split-by", "time"], "config key 'split_by': 'time' is not one of flops, memory"),
    (["--split-points", "1", "--split-by", "memory"], "config key 'split_by': memory balances the modules "
                                                       "num_modules cuts, but split_points [1] gives the cut"),
    (["--split-points", "1,7"], "config key 'split_points': [1, 7] must be increasing unit indices in 1..2"),
    (["--aux", "conv"], "config key 'aux': 'conv' is not one of cnn, mlp, mlp_sr, linear, vgg"),
    (["--objective", "predsm"], "config key 'objective': 'predsm' is not one of auglocal, ce, infopro_ce, "
                                "infopro_contrast, man, man_pp, predsim"),
    (["--predsim-beta", "1.5"], "config key 'predsim_beta': 1.5 is outside the allowed range [0, 1]"),
    (["--predsim-dim", "0"], "config key 'predsim_dim': 0 is outside the allowed range [1, inf)"),
    (["--contrast-temperature", "0"], "config key 'contrast_temperature': 0.0 is outside the allowed range (0, inf)"),
    (["--auglocal-depth", "0"], "config key 'auglocal_depth': 0 is outside the allowed range [1, inf)"),
    (["--auglocal-tau", "1.5"], "config key 'auglocal_tau': 1.5 is outside the allowed range [0, 1]"),
    (["--man-momentum", "1"], "config key 'man_momentum': 1.0 is outside the allowed range [0, 1)"),
    (["--man-base", "infopro"], "config key 'man_base': 'infopro' is not one of infopro_contrast, infopro_ce, dgl"),
    (["--objective", "man", "--mode", "decoupled", "--pipeline", "2"],
     "config key 'pipeline': objective man reads the next module's first unit at every step, which another group"),
    (["--infopro-lambdas", "5,1,0"], "config key 'infopro_lambdas': [5.0, 1.0, 0.0] must be 4 finite weights >= 0"),
    (["--infopro-lambdas", "5,1,-1,0"], "config key 'infopro_lambdas': [5.0, 1.0, -1.0, 0.0] must be 4 finite"),
    (["--grad-checkpoint", "true"], "config key 'grad_checkpoint': true recomputes the activations of end-to-end "
                                    "training (mode is greedy"),
    (["--grad-checkpoint", "maybe"], "config key 'grad_checkpoint': 'maybe' is not a boolean"),
    (["--infopro-lambdas", "5,x,0,1"], "config key 'infopro_lambdas': ['5', 'x', '0', '1'] is not a list of numbers"),
    (["--objective", "infopro_ce", "--cache", "on"], "config key 'cache': on trains on the frozen prefix's cached "
                                                     "features, but objective infopro_ce reconstructs the input"),
    (["--mixed-precision", "fp8"], "config key 'mixed_precision': 'fp8' is not one of no, bf16, fp16"),
    (["--tracker", "tensorboard"], "config key 'tracker': 'tensorboard' is not one of none, wandb"),
    (["--cache", "maybe"], "config key 'cache': 'maybe' is not one of auto, on, off"),
    (["--cache-dtype", "fp64"], "config key 'cache_dtype': 'fp64' is not one of auto, fp32, fp16, bf16"),
    (["--opt", "adamm"], "config key 'opt': 'adamm' is not a timm optimizer; did you mean 'adam'?"),
    (["--sched", "plateau"], "config key 'sched': 'plateau' is not one of step, multistep, cosine"),
    (["--pipeline", "0"], "config key 'pipeline': 0 is outside the allowed range [1, inf)"),
    (["--pipeline", "2"], "config key 'pipeline': 2 groups pipeline the blocks of mode decoupled (mode is greedy)"),
    (["--mode", "decoupled", "--pipeline", "4"], "config key 'pipeline': 4 groups but the net has 3 blocks"),
    (["--mode", "decoupled", "--pipeline", "2", "--mixed-precision", "bf16"],
     "config key 'pipeline': pipelined training runs in fp32 without accumulation"),
    (["--mode", "decoupled", "--pipeline", "2", "--pipeline-split", "1,1"],
     "config key 'pipeline_split': [1, 1] must give each of the 2 groups at least one block, 3 blocks in all"),
    (["--pipeline-split", "2,1"], "config key 'pipeline_split': [2, 1] needs --pipeline 2"),
    (["--pipeline-timeout", "0"], "config key 'pipeline_timeout': 0.0 is outside the allowed range (0, inf)"),
    (["--name", "a/b"], "config key 'name': 'a/b' is not a valid run directory name"),
    (["--name", ".."], "config key 'name': '..' is not a valid run directory name"),
    (["--wandb-project", "team/project"], "config key 'wandb_project': 'team/project' is not a valid W&B project"),
    (["--out-dir", ""], "config key 'out_dir': must not be empty"),
    (["--batchnorm", "maybe"], "config key 'batchnorm': 'maybe' is not a boolean (true/false)"),
    (["--dataset", "cifar10", "--data-dir", "MISSING"], "data directory MISSING for dataset 'cifar10' does not exist"),
    # shapes, checked on the meta device before training (and before --print-model)
    (["--img-size", "3"], "input 1x3x3 does not fit unit 3 'block3' in local module 3 (it cannot take its 16x3x3"),
    (["--input-downsample", "true", "--img-size", "9"], "input 1x9x9 does not fit the input stem (it cannot take it"),
    (["--img-size", "3", "--print-model"], "input 1x3x3 does not fit unit 3 'block3' in local module 3"),
    (["--img-size", "2", "--downsample-mode", "maxpool", "--downsample", "2,3"],
     "input 1x2x2 does not fit unit 3 'block3' in local module 3 (it cannot take its 16x1x1 input"),
    # paths
    (["--out-dir", "/proc/greedy-runs"], "--out-dir /proc/greedy-runs: cannot create folders in /proc"),
    (["--out-dir", "AFILE"], "--out-dir AFILE: AFILE is a file, not a folder"),
    (["--name", "existing"], "run directory OUT/existing already exists"),
    (["--widht", "3"], "unrecognized arguments: --widht"),
    (["--num-module", "4"], "unrecognized arguments: --num-module 4; did you mean --num-modules?"),
    (["--batchsize", "8"], "unrecognized arguments: --batchsize 8; did you mean --batch-size?"),
    (["configs/digits_k2.yaml"], "unrecognized arguments: configs/digits_k2.yaml; pass the config with -c: -c "
                                 "configs/digits_k2.yaml; see `train.py --help`"),
    (["--widths", "32", "32"], "unrecognized arguments: 32; a flag takes one word: lists are comma-separated "
                               "(--widths 32,32); see `train.py --help`"),
    # settings no auxiliary net of the run reads
    (["--k", "3", "--aux", "mlp_sr"], "config key 'k': 3 is read by no auxiliary net of this run (aux mlp_sr, "
                                      "final_head auxiliary), only by cnn; drop the key (default 2) or pass --aux cnn"),
    (["--aux", "linear", "--pool-size", "4"], "config key 'pool_size': 4 is read by no auxiliary net of this run "
                                              "(aux linear, final_head auxiliary), only by cnn, mlp, mlp_sr"),
    (["--mode", "e2e", "--final-head", "linear", "--aux-width", "8"],
     "config key 'aux_width': 8 is read by no auxiliary net of this run (aux cnn, final_head linear in mode e2e)"),
    (["-c", "DUP"], "config key 'lr' appears twice (lines 1 and 3); keep one"),
    # resume
    (["--resume", "OUT/existing", "-c", "configs/digits_k2.yaml"], "--resume OUT/existing continues the run with"),
    (["--resume", "OUT"], "is not a run directory (no config.yaml)"),
    (["--resume", "OUT/partial", "--lr", "0.01"], "--lr 0.01 contradicts the saved config (lr: 0.05)"),
]
# Keys whose bad values are free text (any string is a valid path or label) or booleans checked by one case.
FREE_TEXT = {"data_dir", "experiment", "no_progress", "download", "pin_memory", "persistent_workers", "strict_data",
             "input_downsample", "channels_last", "compile"}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """An --out-dir with a finished run, a partial (killed after stage 1) run, a config with a key twice, a file."""
    out = tmp_path_factory.mktemp("bad-input")
    cli("train.py", *TINY, "--epochs", "1", "--out-dir", str(out), "--name", "existing")
    shutil.copytree(out / "existing", out / "partial")
    for name in ("model.safetensors", "summary.json", "stage2.safetensors", "stage3.safetensors"):
        (out / "partial" / name).unlink()
    (out / "dup.yaml").write_text("lr: 0.1\nepochs: 2\nlr: 0.2\n")
    (out / "afile").write_text("not a folder\n")
    return out


def run_train(args: list[str], capsys) -> tuple[int, str, str]:
    code = exit_code(train.main, args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args, message", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_input_is_one_line_exit_2_nothing_written(out, monkeypatch, capsys, args, message):
    monkeypatch.chdir(train.__file__.rsplit("/", 1)[0])
    subst = {"OUT": str(out), "DUP": str(out / "dup.yaml"), "AFILE": str(out / "afile"),
             "MISSING": str(out / "missing")}
    for key, value in subst.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    before = tree_digest(out)
    argv = args if "--resume" in args else [*TINY, "--out-dir", str(out), *args]
    code, _, err = run_train(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err
    assert tree_digest(out) == before  # no run directory created, the existing ones byte-identical


def test_every_key_has_a_bad_value():
    covered = {arg[2:].replace("-", "_") for args, _ in BAD_VALUES for arg in args if arg.startswith("--")}
    missing = set(FIELDS) - covered - FREE_TEXT
    assert not missing, f"keys without a bad-value case: {sorted(missing)}"
    assert set(RANGES) <= covered


def test_resume_of_a_finished_run_touches_nothing(out, monkeypatch, capsys):
    monkeypatch.chdir(train.__file__.rsplit("/", 1)[0])
    before = tree_digest(out / "existing")
    code, stdout, err = run_train(["--resume", str(out / "existing")], capsys)
    assert (code, err) == (0, "")
    assert f"run {out / 'existing'} is finished" in stdout
    assert tree_digest(out / "existing") == before


def test_fp16_on_cpu_is_refused_by_the_cli(tmp_path):
    proc = cli("train.py", *TINY, "--mixed-precision", "fp16", "--out-dir", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr == ("error: config key 'mixed_precision': fp16 does not run on a CPU (accelerate has no fp16 "
                           "autocast there and would train in fp32); use --mixed-precision bf16 (works on CPU) or no\n")
    assert not any(tmp_path.iterdir())



def shared_yaml(out, **keys) -> str:
    """configs/digits_k2.yaml with `keys` added: a config file several runs share."""
    path = out / "shared.yaml"
    base = yaml.safe_load(open(train.__file__.rsplit("/", 1)[0] + "/configs/digits_k2.yaml"))
    path.write_text(yaml.safe_dump({**base, **keys}))
    return str(path)


@pytest.mark.parametrize("keys, args, warning", [
    ({"mode": "e2e", "grad_checkpoint": True}, ["--mode", "greedy"],
     "config key 'grad_checkpoint': True in SHARED is not read (only mode e2e reads it, this run is greedy); this run "
     "leaves it at False"),
    ({"k": 3}, ["--aux", "mlp_sr"], "config key 'k': 3 in SHARED is not read (no auxiliary net of this run reads it: "
                                    "aux mlp_sr, final_head auxiliary); this run leaves it at 2"),
])
def test_a_shared_file_s_key_this_run_does_not_read_is_warned_once(out, monkeypatch, capsys, keys, args, warning):
    """The file's key is harmless where the command line picks a mode or head that ignores it: one warning line,
    the run goes on at the default; the same contradiction given on the command line is refused."""
    monkeypatch.chdir(train.__file__.rsplit("/", 1)[0])
    path = shared_yaml(out, **keys)
    code, stdout, err = run_train(["-c", path, *args, "--print-model"], capsys)
    assert code == 0 and err == f"warning: {warning.replace('SHARED', path)}\n"
    key, value = next((k, v) for k, v in keys.items() if k != "mode")
    flag = [f"--{key.replace('_', '-')}", str(value).lower()]
    code, _, err = run_train(["-c", shared_yaml(out, **{k: v for k, v in keys.items() if k == "mode"}), *args, *flag,
                              "--print-model"], capsys)
    assert code == 2 and err.startswith(f"error: config key '{key}'") and err.count("\n") == 1
