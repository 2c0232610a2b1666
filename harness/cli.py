"""Command line: ``python -m harness {study,worker,list,env} ...``; see ``python -m harness --help``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from harness.errors import UserError

EXAMPLES = """examples:
  python -m harness study finetune_vs_probe                  the default comparison (~3.5 min on 2 cores)
  python -m harness study finetune_vs_probe --jobs 2         two local processes share the run
  python -m harness study finetune_vs_probe --trials 2 --seeds 3 --out /tmp/runs
  python -m harness study my_study.toml --device cuda:0       a study from a TOML file
  python -m harness study finetune_vs_probe --devices cpu,cuda:0 --objectives accuracy,throughput
  python -m harness study finetune_vs_probe --resume results/finetune_vs_probe/<run_id>
  python -m harness study S --storage journal:/tmp/s.log & python -m harness worker S --storage journal:/tmp/s.log
  python -m harness worker S --storage env:HARNESS_STORAGE    the URL from a variable, out of ps
  python -m harness list strategies
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, like every user mistake
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, but got {value}")
    return value


def _labels(text: str) -> tuple[str, ...]:
    labels = tuple(t.strip() for t in text.split(",") if t.strip())
    if not labels:
        raise argparse.ArgumentTypeError(f"must name at least one, but got {text!r}")
    return labels


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m harness",
        description="Benchmark fine-tuning strategies: accuracy, speed and memory, with honest "
                    "statistics. Runs land in results/<study>/<run_id>/.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    st = sub.add_parser(
        "study", help="run a study: Optuna search per cell, seeded re-runs, tables, plot, report",
        description="Run a study: for every cell (label budget x strategy) an Optuna search with "
                    "the same trial budget selects on validation accuracy; the best config is "
                    "re-run with several seeds and its test accuracy reported as mean and 95% CI.",
    )
    st.add_argument("name", help="a registered study (see `list studies`) or a path to a .toml study file")
    st.add_argument("--trials", type=_positive_int,
                    help="Optuna trials per cell, the same for every strategy (default: the study's)")
    st.add_argument("--seeds", type=_positive_int,
                    help="re-runs of each cell's best config with fresh seeds (default: the study's)")
    st.add_argument("--epochs", type=_positive_int, help="training epochs per trial (default: the study's)")
    st.add_argument("--storage", metavar="URL",
                    help="Optuna storage URL, or env:VAR / file:PATH to read it from a variable or "
                         "a file, out of `ps` (default: sqlite:///<run folder>/optuna.db)")
    st.add_argument("--out", metavar="DIR", default="results",
                    help="root folder of run outputs; the run goes to DIR/<study>/<run_id> (default: results)")
    st.add_argument("--device", "--devices", dest="devices", metavar="LIST", type=_labels,
                    help="comma-separated devices, a grid axis: cpu, cuda, cuda:N, mps; one this "
                         "machine lacks gives skipped cells with the reason (default: the study's, cpu)")
    st.add_argument("--executions", metavar="LIST", type=_labels,
                    help="comma-separated executions, a grid axis: eager, compile, compile:MODE, "
                         "each with optional +bf16, +fp16 (CUDA), +channels_last "
                         "(default: the study's, eager)")
    st.add_argument("--strategies", metavar="LIST", type=_labels,
                    help="comma-separated strategies to compare (default: the study's)")
    st.add_argument("--models", metavar="LIST", type=_labels,
                    help="comma-separated backbones, a grid axis (see `list models`; default: the study's)")
    st.add_argument("--datasets", metavar="LIST", type=_labels,
                    help="comma-separated datasets with the study's classes, a grid axis "
                         "(see `list datasets`; default: the study's)")
    st.add_argument("--sampler", choices=["tpe", "random", "grid"],
                    help="Optuna sampler (default: the study's, tpe); grid needs the study's grid")
    st.add_argument("--pruner", choices=["median", "percentile", "sha", "hyperband", "none"],
                    help="stop weak trials early on val accuracy per epoch: below the median or "
                         "the best third (percentile) of earlier trials, successive halving (sha), "
                         "hyperband, or none (default: the study's, median)")
    st.add_argument("--objectives", metavar="LIST", type=_labels,
                    help="what Optuna maximises: accuracy (default), or accuracy,throughput for a "
                         "Pareto front marked in the tables (no pruning then)")
    st.add_argument("--resume", metavar="RUN_DIR",
                    help="finish the run in RUN_DIR whose process was killed: completed trials are "
                         "kept, interrupted ones re-run; pass --storage too if the run used one")
    st.add_argument("--jobs", type=_positive_int, metavar="N",
                    help="processes working on the run on this machine: this one and N-1 local "
                         "workers it starts and stops; each cell's search still runs its trials "
                         "in order, so the trials are those of --jobs 1 at the same threads per "
                         "trial (default: chosen from the cores and the models, recorded in "
                         "env.json; 1 with --storage, where you start the workers)")
    st.add_argument("--threads", type=_positive_int, metavar="T",
                    help="torch threads per job (default: the cores shared between the jobs)")
    st.add_argument("--check", action="store_true",
                    help="exit 1 unless every claim of the study's paper passes (see claims.csv)")
    st.add_argument("--quiet", action="store_true", help="no progress bar")
    st.add_argument("--no-figures", dest="figures", action="store_false", default=None,
                    help="write the tables and reports without figures (about 1 s a figure "
                         "file on 2 CPU cores; `report RUN_DIR` draws them later); "
                         "HARNESS_FIGURES=0 does the same for every run")

    wk = sub.add_parser(
        "worker", help="join a study's run in a shared storage and run its trials",
        description="Join the newest run of STUDY in the storage (started by `study ... --storage "
                    "URL`) and run its queued trials until none is left; start one per GPU or "
                    "machine. The storage hands each trial to exactly one worker.",
    )
    wk.add_argument("study", help="the study's name")
    wk.add_argument("--storage", metavar="URL", required=True,
                    help="the run's storage: journal:PATH (one machine) or postgresql://... "
                         "(many); env:VAR or file:PATH reads the URL from a variable or a file")
    wk.add_argument("--device", metavar="D",
                    help="run on D and take only the cells of its kind (default: each cell's device)")
    wk.add_argument("--run", metavar="RUN_ID", help="the run to join (default: the newest)")
    wk.add_argument("--wait", metavar="SECONDS", type=float, default=0.0,
                    help="wait this long for the run to appear in the storage (default: 0)")
    wk.add_argument("--threads", type=_positive_int, metavar="T",
                    help="torch threads for its trials (default: torch's own choice)")
    wk.add_argument("--compile-cache", metavar="DIR",
                    help="inductor's cache folder shared with the run's other processes on this "
                         "machine, so each graph compiles cold once (default: a fresh one)")
    wk.add_argument("--quiet", action="store_true", help="no progress bar")

    from harness.analysis import compare
    from harness.report import markdown as report

    compare.add_parser(sub)
    report.add_parser(sub)

    ls = sub.add_parser("list", help="list registered strategies, datasets, models or studies",
                        description="List a registry's entries with a one-line description each.")
    ls.add_argument("kind", choices=["strategies", "datasets", "models", "studies"])

    env = sub.add_parser("env", help="print the environment that every run records (JSON)",
                         description="Print library versions, device, CPU and git commit as JSON.")
    env.add_argument("--device", default="cpu", help="device to describe (default: cpu)")
    return parser


def _describe(obj) -> str:
    desc = getattr(obj, "description", "") or ""
    if not desc:
        doc = getattr(obj, "__doc__", "") or ""
        desc = doc.strip().splitlines()[0] if doc.strip() else ""
    return desc


def storage_url(value: str | None) -> str | None:
    """The storage URL that ``--storage`` names: ``env:VAR`` reads it from the environment
    variable VAR and ``file:PATH`` from the file PATH, so that a password never shows in ``ps``;
    anything else is the URL itself.

    >>> storage_url("journal:/tmp/s.log")
    'journal:/tmp/s.log'
    """
    if value is None or not value.startswith(("env:", "file:")):
        return value
    kind, _, name = value.partition(":")
    if not name:
        raise UserError(f"--storage {value!r} names no {'variable' if kind == 'env' else 'file'}; "
                        "write env:VAR or file:PATH, e.g. env:HARNESS_STORAGE.")
    if kind == "env":
        url = os.environ.get(name, "").strip()
        if not url:
            raise UserError(f"--storage {value!r}: the environment variable {name} is not set or "
                            f"empty; export {name}=postgresql://user:pass@host/db (the run's "
                            "storage URL) first.")
        return url
    try:
        url = Path(name).expanduser().read_text().strip()
    except OSError as e:
        raise UserError(f"--storage {value!r}: cannot read {name!r} ({e.strerror}); write the "
                        "storage URL into that file (chmod 600) or pass another.") from None
    if not url:
        raise UserError(f"--storage {value!r}: the file {name!r} is empty; write the storage URL "
                        "into it.")
    return url


def cmd_list(kind: str) -> int:
    from harness.registry import DATASETS, MODELS, STRATEGIES, STUDIES

    reg = {"strategies": STRATEGIES, "datasets": DATASETS, "models": MODELS, "studies": STUDIES}[kind]
    names = reg.names()
    width = max(map(len, names), default=0)
    for name in names:
        obj = reg.get(name)
        if kind == "studies":
            desc = obj().description
        else:
            desc = _describe(obj)
        print(f"{name:<{width}}  {desc}")
    return 0


_OVERRIDES = ("trials", "seeds", "epochs", "devices", "executions", "strategies", "sampler", "pruner",
              "objectives", "models", "datasets")


def cmd_study(args: argparse.Namespace) -> int:
    from harness.analysis.text import markdown_table
    from harness.config.spec import load_study
    from harness.pipeline import resume_study, run_study
    from harness.report.markdown import summary_view

    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    if args.resume:
        if overrides or args.jobs or args.threads:
            given = [*overrides, *(k for k in ("jobs", "threads") if getattr(args, k))]
            raise UserError(f"--resume finishes a run as it was planned; drop "
                            f"{', '.join('--' + k for k in given)}.")
        run = resume_study(args.resume, storage=args.storage, progress=not args.quiet,
                           figures=args.figures)
    else:
        spec = load_study(args.name)
        if "strategies" in overrides:  # a study's fixed configs of strategies left out go too
            keep = set(overrides["strategies"])
            overrides["enqueue"] = {k: v for k, v in spec.enqueue.items() if k in keep}
            overrides["grid"] = {k: v for k, v in spec.grid.items() if k in keep}
        spec = dataclasses.replace(spec, **overrides)
        # with --storage the user starts the workers; else the machine decides (None)
        jobs = args.jobs or (1 if args.storage is not None else None)
        run = run_study(spec, out_root=args.out, storage=args.storage, progress=not args.quiet,
                        jobs=jobs, threads=args.threads, figures=args.figures)
    print()
    print(markdown_table(summary_view(run.summary)))
    plots = "plots, " if (run.run_dir / "plots").is_dir() and any((run.run_dir / "plots").iterdir()) else ""
    print(f"\n{args.name}: finished in {run.seconds:.0f} s; tables, {plots}report.md and "
          f"report.html in {run.run_dir}")
    if run.claims is not None and len(run.claims):
        from harness.analysis.claims import claims_view

        print("\nclaims:\n" + markdown_table(claims_view(run.claims)))
    if args.check:
        if run.claims is None or not len(run.claims):
            raise UserError(f"--check: study {args.name!r} declares no claims to check.")
        failed = run.claims[~run.claims["verdict"].isin(["pass", "not applicable"])]
        if len(failed):
            print(f"\n--check: {len(failed)} of {len(run.claims)} claims did not pass: "
                  f"{', '.join(failed['claim'])}", file=sys.stderr)
            return 1
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from harness.run.sweep import run_worker

    n = run_worker(args.study, args.storage, device=args.device, run_id=args.run,
                   wait_s=args.wait, progress=not args.quiet, threads=args.threads,
                   compile_cache=args.compile_cache)
    print(f"worker: ran {n} trial(s) of {args.study}")
    return 0


def _interrupted(args: argparse.Namespace, raw_storage: str | None, e: KeyboardInterrupt) -> str:
    """The one line a Ctrl-C or SIGTERM prints: what became of the run, and how to go on."""
    from harness.run.queue import redact_url

    storage = f" --storage {redact_url(raw_storage)}" if raw_storage else ""
    if args.command == "worker":
        return (f"worker interrupted: its running trial (if any) was marked failed and re-queued; "
                f"join the run again with: python -m harness worker {args.study}{storage}")
    run_dir = getattr(e, "run_dir", None)  # pipeline.RunInterrupted
    if args.command == "study" and run_dir is not None and (run_dir / "spec.json").is_file():
        return (f"interrupted: the running trial (if any) was marked failed and re-queued; finish "
                f"the run with: python -m harness study {args.name} --resume {run_dir}{storage}")
    if args.command == "study":
        return "interrupted before the run was planned; nothing to resume: start the study again."
    return "interrupted."


def _stop(signum: int, frame) -> None:
    """SIGINT and SIGTERM: stop the run through KeyboardInterrupt, so that the running trial is
    given back; a second signal during that short clean-up is ignored."""
    _signals.append(signum)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    raise KeyboardInterrupt


_signals: list[int] = []


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raw_storage = getattr(args, "storage", None)
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    _signals.clear()
    try:
        if hasattr(args, "storage"):  # every command that takes --storage
            args.storage = storage_url(args.storage)
        if args.command == "list":
            return cmd_list(args.kind)
        if args.command == "env":
            from harness.config.spec import resolve_device
            from harness.measure.env import environment

            print(json.dumps(environment(resolve_device(args.device)), indent=2, default=str))
            return 0
        if args.command == "worker":
            return cmd_worker(args)
        if args.command == "compare":
            from harness.analysis import compare

            return compare.main(args)
        if args.command == "report":
            from harness.report import markdown as report

            return report.main(args)
        return cmd_study(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # exit 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM
        print(_interrupted(args, raw_storage, e), file=sys.stderr)
        return 128 + (_signals[0] if _signals else signal.SIGINT)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
