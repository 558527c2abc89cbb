"""What every benchmark shares: the repository root, the machine it ran on, markdown tables."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import torch

MiB = 2**20
ROOT = Path(__file__).resolve().parents[2]


def machine_info(device: torch.device) -> dict:
    """The machine a benchmark ran on: CPU model, cores, torch threads and version, GPU, load average."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average": list(os.getloadavg()),
    }




def markdown(rows: list[dict]) -> str:
    """Rows of {column: value} as a markdown table (columns in order of appearance; floats to 3 digits)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: ("" if v is None else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}")  # noqa: E731
                     if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)




def relative(path: str) -> str:
    """A path inside the repository as written from its root (what the docs show), others unchanged."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else path


def run_all(commands: dict[str, list[str]], env: dict, logs: Path, sequential: bool) -> dict[str, tuple[int, float]]:
    """Run the commands (all at once, or one after the other): (return code, wall seconds) of each."""
    done: dict[str, tuple[int, float]] = {}
    for group in [[name] for name in commands] if sequential else [list(commands)]:
        procs = {name: (subprocess.Popen(commands[name], cwd=ROOT, env=env, stderr=subprocess.STDOUT,
                                         stdout=(logs / f"{name}.log").open("w")), time.perf_counter())
                 for name in group}
        while any(name not in done for name in group):
            for name, (proc, t0) in procs.items():
                if name not in done and proc.poll() is not None:
                    done[name] = (proc.returncode, time.perf_counter() - t0)
            time.sleep(0.2)
    return done
