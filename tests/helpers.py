"""Running the real CLI from tests."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A small, fast digits run: what most training tests use.
TINY = ["-c", "configs/digits_k2.yaml", "--widths", "16,16,32", "--downsample", "3", "--epochs", "3",
        "--batch-size", "64", "--no-progress"]


def cli(script: str, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python script args` in the repo root, as a user would."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
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
