"""The demo end to end (target: under 3 minutes): `softprompt demo` as a user runs it, timed from
process start (imports, model load, zero-shot evaluation, training, evaluation, files written)
to exit. Also printed: the demo's own in-process time and its accuracies.

Run: .venv/bin/python benchmarks/bench_demo.py [--out runs/bench-demo] [--set train.steps=4]
(--set: demo config overrides, e.g. fewer steps for a quick check; the target is for none)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from common import ROOT, machine, timed

TARGET_SECONDS = 180


def run_demo(out: Path, overrides: list[str]) -> dict:
    """Run the installed `softprompt demo` in a fresh process; returns its JSON result."""
    shutil.rmtree(out, ignore_errors=True)
    command = [str(Path(sys.executable).parent / "softprompt"), "demo", "--quiet", "--json"]
    command += ["--out", str(out)]
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(f"softprompt demo failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench-demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    print(machine())
    result, seconds = timed(lambda: run_demo(args.out, args.overrides))
    settings = f" with {' '.join(args.overrides)}" if args.overrides else ""
    print(
        f"demo{settings}: {seconds:.1f} s end to end (target < {TARGET_SECONDS} s), "
        f"{result['seconds']:.1f} s inside the process; zero-shot accuracy "
        f"{result['zero_shot_accuracy']:.3f} -> trained {result['trained_accuracy']:.3f}; "
        f"run in {result['run_dir']}"
    )


if __name__ == "__main__":
    main()
