"""The default study's wall time: the old setting against the new default, interleaved.

Runs ``python -m harness study finetune_vs_probe`` as a user does, each run from a cold start
(fresh pretraining and inductor caches, a new process), alternating

- ``old``: ``--jobs 1 --executions eager``: one process, NCHW convolutions, as before issue 15;
- ``new``: ``--jobs 1`` with the study's own execution, ``eager+channels_last`` for
  finetune_vs_probe (on 2 cores one process with both threads beat the default two
  single-threaded ones for this CNN; pass other flags after ``--``),

``--rounds`` times each (default 3), and prints per setting the median wall time of the whole
command, where it went (imports, pretraining, the trials of each cell, tables and report), and
the claims' verdicts, which must be the same. Goal (issue 15): the new default in at most 60 s
on a quiet 2-core machine.

    python scripts/bench_default.py [--rounds 3] [--study finetune_vs_probe] [-- extra study args]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"old": ["--jobs", "1", "--executions", "eager"], "new": ["--jobs", "1"]}


def import_seconds() -> float:
    """Wall time of a bare ``python -m harness --help``: interpreter and imports, no work."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "--help"], cwd=ROOT, check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def one_run(study: str, args: list[str], extra: list[str]) -> dict:
    """One cold run of the study; its wall time and where it went."""
    with tempfile.TemporaryDirectory() as tmp:
        env = os.environ | {"HARNESS_CACHE_DIR": f"{tmp}/cache", "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor"}
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "harness", "study", study, "--out", f"{tmp}/runs",
                              "--quiet", *args, *extra], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=False)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"the study failed ({res.returncode}): {res.stderr.strip()[-500:]}")
        run_dir = next(Path(f"{tmp}/runs/{study}").iterdir())
        return {"wall_s": wall, **_breakdown(run_dir)}


def _breakdown(run_dir: Path) -> dict:
    env = json.loads((run_dir / "env.json").read_text())
    trials = pd.read_csv(run_dir / "trials.csv")
    m = pd.read_csv(run_dir / "measurements.csv")
    pre = m[m["metric"] == "pretrain_time_s"]["value"].sum()
    claims = run_dir / "claims.csv"
    verdicts = (pd.read_csv(claims)[["claim", "verdict"]].to_dict("records")
                if claims.is_file() else [])
    per_cell = trials.groupby("cell")["seconds"].sum()
    return {"jobs": env.get("jobs", 1), "threads": env.get("threads_per_job"),
            "pretrain_s": float(pre), "trial_s": float(trials["seconds"].sum()),
            "per_cell_s": {c.split("/shots=")[1]: round(float(s), 1) for c, s in per_cell.items()},
            "verdicts": {v["claim"]: v["verdict"] for v in verdicts}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="runs of each setting (default 3)")
    ap.add_argument("--study", default="finetune_vs_probe")
    ap.add_argument("extra", nargs="*", help="more study arguments, after --")
    args = ap.parse_args()
    print(f"imports (python -m harness --help): {import_seconds():.1f} s")
    runs: dict[str, list[dict]] = {k: [] for k in SETTINGS}
    for r in range(args.rounds):
        for name, flags in SETTINGS.items():  # interleaved: load drifts hit both alike
            runs[name].append(one_run(args.study, flags, args.extra))
            x = runs[name][-1]
            print(f"round {r + 1} {name}: {x['wall_s']:.1f} s wall, jobs {x['jobs']}, threads "
                  f"{x['threads']}, pretraining {x['pretrain_s']:.1f} s, trials {x['trial_s']:.1f} s "
                  f"(summed over processes); per cell {x['per_cell_s']}", flush=True)
    med = {k: statistics.median(x["wall_s"] for x in v) for k, v in runs.items()}
    print(f"\nmedian wall time over {args.rounds} round(s): old {med['old']:.1f} s, new "
          f"{med['new']:.1f} s (ratio {med['new'] / med['old']:.2f}); goal: new <= 60 s")
    verdicts = {k: [x["verdicts"] for x in v] for k, v in runs.items()}
    same = all(v == verdicts["old"][0] for vs in verdicts.values() for v in vs)
    print(f"claims' verdicts {'the same in every run' if same else 'DIFFER'}: {verdicts['new'][0]}")
    if not same:
        print(json.dumps(verdicts, indent=1))


if __name__ == "__main__":
    main()
