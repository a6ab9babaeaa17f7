"""Load time of the bundled models from the softprompt cache (target: under 2 s each).

Run: .venv/bin/python benchmarks/bench_load.py [--repeats 3]
(after `make setup`, which fills the cache)
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import machine

from softprompt.models import BUNDLED, ensure_bundled, load_backbone


def main(repeats: int = 3) -> None:
    print(machine())
    for alias in BUNDLED:
        ensure_bundled(alias)
        load_backbone(alias)  # warm the import and file caches once
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            load_backbone(alias)
            times.append(time.perf_counter() - started)
        print(f"{alias}: median load {statistics.median(times):.2f} s over {repeats} loads")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed loads per model")
    main(parser.parse_args().repeats)
