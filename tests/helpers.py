"""Running the real CLI from tests."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A small, fast digits run: what most training tests use.
TINY = ["-c", "configs/digits_k2.yaml", "--widths", "16,16,32", "--downsample", "3", "--epochs", "3",
        "--batch-size", "64", "--no-progress"]


def user_env(**extra: str) -> dict[str, str]:
    """This environment as a user's shell would have it: W&B disabled unless asked, and without the W&B service
    that an in-process test may have started here (a child would share it, and a killed child's run would stay
    open in it)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **extra}


def cli(script: str, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python script args` in the repo root, as a user would."""
    full_env = user_env(**(env or {}))
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def load_script(name: str) -> types.ModuleType:
    """scripts/<name>.py as a module, to call its main() in this process."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def tree_digest(path: Path) -> dict[str, str]:
    """Hash of every file under path: to prove that nothing was changed."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def start_train(*args: str, env: dict | None = None) -> subprocess.Popen:
    """Start `python train.py args` in the background (stderr kept, stdout dropped)."""
    full_env = user_env(**(env or {}))
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=full_env)


def kill_during_stage2(proc: subprocess.Popen, run: Path, min_epoch: int = 2, timeout: float = 120.0,
                       sig: int = signal.SIGKILL) -> None:
    """Send `sig` (SIGKILL) to the run once metrics.jsonl shows stage 2 at epoch >= min_epoch; wait for its end."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any(json.loads(r)["stage"] == 2 and json.loads(r)["epoch"] >= min_epoch for r in lines if r.strip()):
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
            return
        time.sleep(0.01)
    raise AssertionError(f"run ended or hung before stage 2 (rc={proc.poll()}): {proc.stderr.read().decode()}")


def assert_first_module_frozen(run: Path) -> None:
    """Local module 1's weights and BatchNorm statistics in the final model are bit-identical to stage 1's file."""
    import torch
    from safetensors.torch import load_file

    first = {k: v for k, v in load_file(run / "stage1.safetensors").items() if k.startswith("blocks.0.")}
    final = load_file(run / "model.safetensors")
    assert any(k.endswith("running_mean") for k in first) and any(k.endswith("num_batches_tracked") for k in first)
    assert {k for k in final if k.startswith("blocks.0.")} == set(first)
    for key, value in first.items():
        assert torch.equal(final[key], value), key


def free_port() -> int:
    """A TCP port free on this machine now (for MASTER_PORT of a process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def same_weights(a: Path, b: Path) -> bool:
    """Whether two run directories' final models hold exactly the same tensors under the same names."""
    import torch
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
