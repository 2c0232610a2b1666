"""A study's wall time with inductor's compile caches against without them, interleaved.

Issue 15 (3): trials that compile the same graph reuse it. ``cache`` is the harness as it is:
every process of a run compiles into one inductor cache folder of the run (FX graph and AOT
autograd caches), so each graph compiles cold once per run and warm in every later trial, and
``measurements.csv`` counts the cold and warm compiles (``compile_cache_misses``, ``_hits``).
``nocache`` turns both caches off (``TORCHINDUCTOR_FX_GRAPH_CACHE=0``,
``TORCHINDUCTOR_AUTOGRAD_CACHE=0``): every trial compiles every graph from scratch, what each
trial paid before. Each run is a new ``python -m harness study`` process with empty pretraining
and inductor caches, ``--jobs 1`` (the same threads for both) and no figures; ``--rounds`` times
each setting, alternating.

Prints per run the wall time of the command, the seconds of the compiling steps its trials
recorded (``compile_steps_s``: the first steps, compile included), the cold and warm compiles,
and the medians.

    python scripts/bench_compile_cache.py [--rounds 2] [--study eager_vs_compiled]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"nocache": {"TORCHINDUCTOR_FX_GRAPH_CACHE": "0", "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"},
            "cache": {}}


def one_run(study: str, setting: str) -> dict:
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        env = os.environ | {"HARNESS_CACHE_DIR": f"{tmp}/cache",
                            "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor"} | SETTINGS[setting]
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "harness", "study", study, "--out",
                              f"{tmp}/runs", "--quiet", "--jobs", "1", "--no-figures"],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"the study failed ({res.returncode}): {res.stderr.strip()[-800:]}")
        run_dir = next(Path(f"{tmp}/runs/{study}").iterdir())
        m = pd.read_csv(run_dir / "measurements.csv")
        trials = pd.read_csv(run_dir / "trials.csv")

        def total(metric: str) -> float:
            return float(m.loc[m["metric"] == metric, "value"].sum())

        return {"wall_s": wall, "trial_s": float(trials["seconds"].sum()),
                "compile_s": total("compile_steps_s"), "misses": total("compile_cache_misses"),
                "hits": total("compile_cache_hits")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="runs of each setting (default 2)")
    ap.add_argument("--study", default="eager_vs_compiled")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {k: [] for k in SETTINGS}
    for r in range(args.rounds):
        for name in SETTINGS:  # interleaved: load drifts hit both alike
            x = one_run(args.study, name)
            runs[name].append(x)
            print(f"round {r + 1} {name:7s}: {x['wall_s']:.1f} s wall, trials {x['trial_s']:.1f} s, "
                  f"compile steps {x['compile_s']:.1f} s, FX graph cache misses "
                  f"{x['misses']:.0f} hits {x['hits']:.0f}", flush=True)
    med = {k: statistics.median(x["wall_s"] for x in v) for k, v in runs.items()}
    comp = {k: statistics.median(x["compile_s"] for x in v) for k, v in runs.items()}
    print(f"\nmedian wall over {args.rounds} round(s): without caches {med['nocache']:.1f} s, "
          f"with the run's cache {med['cache']:.1f} s (ratio {med['cache'] / med['nocache']:.2f}); "
          f"compiling steps {comp['nocache']:.1f} s against {comp['cache']:.1f} s")


if __name__ == "__main__":
    main()
