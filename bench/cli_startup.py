"""Whole-process times of the command-line tools, against bare Python and a bare torch import.

    python -m bench.cli_startup [--runs 5] [--image PATH]

Each command is run --runs times as a fresh process (in turn, so that a busy spell of the machine
does not fall on one command only); the table prints the fastest and the median wall time, the
fastest CPU time (user + system, the process and its threads) and the ratios of the fastest wall
time to ``python -c pass`` and to ``python -c "import torch"`` measured in the same run.  The
decode is of a Kodak image (kodim23 by default) encoded once, untimed, at the default mode.
Targets (issue 21): ``-h`` and usage errors under 0.5 s, a whole decode under 2 s.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "data" / "kodak"


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall s, CPU s of the child, exit status) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, r.returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--image", type=Path, default=KODAK / "kodim23.png")
    args = p.parse_args(argv)

    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lic = work / "kodim23.lic"
        subprocess.run([py, str(REPO / "encode.py"), str(args.image), "-o", str(lic)], check=True, cwd=REPO)
        commands = {
            "python -c pass": [py, "-c", "pass"],
            'python -c "import torch"': [py, "-c", "import torch"],
            "python encode.py -h": [py, str(REPO / "encode.py"), "-h"],
            "python encode.py x.png -q 9 (usage error)": [py, str(REPO / "encode.py"), "x.png", "-q", "9"],
            "python decode.py x.lic -o out.xyz (usage error)": [py, str(REPO / "decode.py"), "x.lic", "-o", "o.xyz"],
            f"python decode.py {lic.name} -o out.png": [py, str(REPO / "decode.py"), str(lic), "-o",
                                                        str(work / "out.png")],
        }
        runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                runs[name].append(timed(cmd, work))
    best = {name: min(w for w, _, _ in r) for name, r in runs.items()}
    base, torch_base = best["python -c pass"], best['python -c "import torch"']
    print(f"{args.runs} runs each, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end\n")
    print(f"{'command':50} {'best s':>7} {'median s':>8} {'cpu s':>6} {'x pass':>7} {'x torch':>7}  exit")
    for name, r in runs.items():
        walls = [w for w, _, _ in r]
        print(f"{name:50} {best[name]:7.2f} {statistics.median(walls):8.2f} {min(c for _, c, _ in r):6.2f} "
              f"{best[name] / base:7.1f} {best[name] / torch_base:7.2f}  {sorted({c for _, _, c in r})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
