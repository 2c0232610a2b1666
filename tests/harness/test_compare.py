import argparse
import json

import numpy as np
import pandas as pd
import pytest

from harness.analysis.compare import add_parser, compare_runs, fingerprint, main
from harness.analysis.results import load
from harness.analysis.tables import measurements_frame, summarize, write_csv
from harness.config.spec import StudySpec
from harness.pipeline import run_study
from harness.run.records import Measurement

ENV = {  # the shape of a real env.json (harness.measure.env.environment plus run fields)
    "python": "3.11.7", "hostname": "vm", "git_commit": "a3d943d",
    "versions": {"torch": "2.14.1", "numpy": "2.4.6", "pandas": "3.1.1"},
    "device": "cpu", "device_name": "AMD EPYC", "cpu_model": "AMD EPYC", "cpu_count": 2,
    "torch_threads": 2, "loadavg": [1.1, 1.3, 1.5], "env_vars": {"OPENBLAS_CORETYPE": "Haswell"},
    "cuda_version": "13.0", "run_id": "", "storage": "sqlite:///x.db", "final_seeds": [1000, 1001],
}
CELL = "cpu/digits/small_cnn/shots=20/{}/eager"
THROUGHPUT = ("samples_per_s", "all", "train", "samples/s")
ACCURACY = ("accuracy", "all", "test", "fraction")
MEMORY = ("peak_cpu_rss_increase", "all", "train", "bytes")
STEP = ("step_p50_s", "all", "train", "s")


def _noisy(mean, n=5, rel=0.01, seed=0):
    return mean * (1 + rel * np.random.default_rng(seed).standard_normal(n))


def _run(root, run_id, values, *, env=None, strategy="full_finetune", study="t"):
    """Write a finished run's five files; ``values``: {(metric, phase, split, unit): per-seed values}."""
    run_dir = root / study / run_id
    rows, trials = [], []
    for (metric, phase, split, unit), vs in values.items():
        for i, v in enumerate(vs):
            rows.append(Measurement(run_id, study, CELL.format(strategy), "final", i, phase, strategy,
                                    "digits", "small_cnn", "20", "cpu", "eager", 1000 + i, split,
                                    metric, float(v), unit, None, "ok"))
    n = max(map(len, values.values()))
    # rows a comparison must ignore: a search trial and a per-epoch value, both far off
    rows.append(Measurement(run_id, study, CELL.format(strategy), "search", 0, "all", strategy, "digits",
                            "small_cnn", "20", "cpu", "eager", 0, "train", "samples_per_s", 1.0,
                            "samples/s", None, "ok"))
    rows.append(Measurement(run_id, study, CELL.format(strategy), "final", 0, "finetune", strategy,
                            "digits", "small_cnn", "20", "cpu", "eager", 1000, "train", "train_time_s",
                            1e6, "s", 0, "ok"))
    for i in range(n):
        trials.append({"run_id": run_id, "study": study, "cell": CELL.format(strategy), "stage": "final",
                       "trial": i, "seed": 1000 + i, "strategy": strategy, "budget": "20",
                       "dataset": "digits", "model": "small_cnn", "device": "cpu", "execution": "eager",
                       "status": "ok", "error": "", "bn_mode": "train", "val_accuracy": 0.9,
                       "test_accuracy": 0.9, "seconds": 1.0, "params": "{}", "worker": "vm:1",
                       "retry_of": ""})
    m, t = measurements_frame(rows), pd.DataFrame(trials)
    write_csv(run_dir / "measurements.csv", m)
    write_csv(run_dir / "trials.csv", t)
    write_csv(run_dir / "summary.csv", summarize(m, t))
    (run_dir / "env.json").write_text(json.dumps({**ENV, **(env or {}), "run_id": run_id}))
    (run_dir / "spec.json").write_text(json.dumps({"name": study, "dataset": "digits"}))
    return run_dir


def _cli(*argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return main(parser.parse_args(["compare", *map(str, argv)]))


def _rows(tmp_path, base, cand, **kw):
    b = _run(tmp_path, "20260101-000000-aaaa", base, **kw)
    c = _run(tmp_path, "20260102-000000-bbbb", cand, **kw)
    return compare_runs(load(b), load(c)).set_index("metric")


def test_a_20_percent_throughput_drop_over_5_seeds_is_a_regression_and_exits_1(tmp_path, capsys):
    base = _noisy(1000.0, seed=1)
    b = _run(tmp_path, "20260101-000000-aaaa", {THROUGHPUT: base})
    c = _run(tmp_path, "20260102-000000-bbbb", {THROUGHPUT: _noisy(800.0, seed=2)})
    assert _cli(b, c, "--out", tmp_path / "cmp.csv") == 1
    row = pd.read_csv(tmp_path / "cmp.csv").iloc[0]
    assert row["verdict"] == "regression" and row["ci_method"] == "welch"
    assert row["baseline"] == pytest.approx(base.mean())  # the search row and epoch rows left out
    assert -22 < row["change"] < -18 and row["ci_high"] < 0 and row["ci_low"] < row["change"]
    out = capsys.readouterr().out
    assert "| regression |" in out and "Welch's t-interval" in out and "1 regression(s)" in out


def test_one_percent_jitter_the_reruns_show_as_noise_is_within_noise_and_exits_0(tmp_path):
    b = _run(tmp_path, "20260101-000000-aaaa", {THROUGHPUT: _noisy(1000.0, seed=1)})
    c = _run(tmp_path, "20260102-000000-bbbb", {THROUGHPUT: _noisy(990.0, seed=6)})
    assert _cli(b, c, "--out", tmp_path / "cmp.csv") == 0
    # even past a 0.5% threshold: the re-runs scatter by 1%, so the CI spans zero
    assert _cli(b, c, "--threshold", "samples_per_s=0.5%", "--out", tmp_path / "cmp.csv") == 0
    row = pd.read_csv(tmp_path / "cmp.csv").iloc[0]
    assert row["verdict"] == "within noise" and row["change"] < -0.5 and row["ci_low"] < 0 < row["ci_high"]


def test_a_change_past_the_threshold_whose_ci_spans_zero_is_within_noise(tmp_path):
    rows = _rows(tmp_path, {THROUGHPUT: [1000, 1300, 700, 1100, 900]},
                 {THROUGHPUT: [900, 1200, 600, 1000, 850]})  # -9%, but the seeds scatter by 20%
    assert rows.loc["samples_per_s", "change"] < -5
    assert rows.loc["samples_per_s", "verdict"] == "within noise"


def test_directions_higher_accuracy_and_lower_memory_and_step_time_are_better(tmp_path):
    rows = _rows(tmp_path, {ACCURACY: [0.90, 0.91, 0.90], MEMORY: _noisy(100e6, 3), STEP: _noisy(0.01, 3)},
                 {ACCURACY: [0.95, 0.96, 0.95], MEMORY: _noisy(150e6, 3, seed=4), STEP: _noisy(0.008, 3)})
    assert rows.loc["accuracy", "change"] == pytest.approx(5.0)  # in points
    assert rows.loc["accuracy", "change_unit"] == "pt" and rows.loc["accuracy", "verdict"] == "improvement"
    assert rows.loc["peak_cpu_rss_increase", "verdict"] == "regression"
    assert rows.loc["step_p50_s", "verdict"] == "improvement"
    assert rows["verdict"].iloc[0] == "regression"  # regressions are listed first
    worse = _rows(tmp_path / "w", {ACCURACY: [0.95, 0.96, 0.95], MEMORY: _noisy(150e6, 3)},
                  {ACCURACY: [0.90, 0.91, 0.90], MEMORY: _noisy(100e6, 3, seed=4)})
    assert worse.loc["accuracy", "verdict"] == "regression"
    assert worse.loc["peak_cpu_rss_increase", "verdict"] == "improvement"


def test_threshold_option_changes_the_verdict(tmp_path):
    b = _run(tmp_path, "20260101-000000-aaaa", {THROUGHPUT: _noisy(1000.0, seed=1), ACCURACY: [0.9] * 5})
    c = _run(tmp_path, "20260102-000000-bbbb", {THROUGHPUT: _noisy(800.0, seed=2), ACCURACY: [0.88] * 5})
    assert _cli(b, c, "--out", tmp_path / "a.csv") == 1
    assert set(pd.read_csv(tmp_path / "a.csv")["verdict"]) == {"regression"}  # accuracy: -2 pt, exact
    assert _cli(b, c, "--threshold", "samples_per_s=25%", "--threshold", "accuracy=3pt",
                "--out", tmp_path / "b.csv") == 0
    cmp = pd.read_csv(tmp_path / "b.csv").set_index("metric")
    assert set(cmp["verdict"]) == {"within noise"}
    assert cmp.loc["samples_per_s", "threshold"] == 25 and cmp.loc["accuracy", "threshold"] == 3


def test_one_rerun_per_side_has_no_ci_and_is_judged_by_threshold_labelled(tmp_path, capsys):
    b = _run(tmp_path, "20260101-000000-aaaa", {THROUGHPUT: [1000.0]})
    c = _run(tmp_path, "20260102-000000-bbbb", {THROUGHPUT: [800.0]})
    assert _cli(b, c, "--out", tmp_path / "cmp.csv") == 1
    row = pd.read_csv(tmp_path / "cmp.csv").iloc[0]
    assert row["verdict"] == "regression" and row["ci_method"].startswith("none (n=1)")
    assert "n/a (none (n=1): threshold only)" in capsys.readouterr().out


def test_environment_differences_are_listed_before_the_table(tmp_path, capsys):
    b = _run(tmp_path, "20260101-000000-aaaa", {THROUGHPUT: _noisy(1000.0)})
    busy = ("loadavg_1m", "all", "train", "1")
    c = _run(tmp_path, "20260102-000000-bbbb", {THROUGHPUT: _noisy(1000.0), busy: [6.0] * 5},
             env={"versions": {**ENV["versions"], "torch": "2.15.0"}, "torch_threads": 4,
                  "env_vars": {"OPENBLAS_CORETYPE": "Haswell", "OMP_NUM_THREADS": "1"},
                  "loadavg": [3.0, 2.0, 1.0]})
    assert _cli(b, c) == 0
    out = capsys.readouterr().out
    assert "versions.torch: 2.14.1 -> 2.15.0" in out and "torch_threads: 2 -> 4" in out
    assert "env_vars.OMP_NUM_THREADS: None -> 1" in out
    listed = out.split("environment differences")[1].split("| verdict")[0]
    assert "run_id" not in listed and "loadavg" not in listed  # differ in every pair of runs
    assert out.index("versions.torch") < out.index("| verdict")
    assert "fingerprints differ" in out
    assert "candidate's machine was busy (1-min load 6.0 on 2 CPUs)" in out
    assert "baseline's machine was busy" not in out


def test_save_baseline_files_a_run_by_fingerprint_and_latest_finds_the_newest(tmp_path, capsys):
    old = _run(tmp_path / "runs", "20260101-000000-aaaa", {THROUGHPUT: _noisy(2000.0)})
    new = _run(tmp_path / "runs", "20260102-000000-bbbb", {THROUGHPUT: _noisy(1000.0, seed=1)})
    cand = _run(tmp_path / "runs", "20260103-000000-cccc", {THROUGHPUT: _noisy(1000.0, seed=2)})
    root = tmp_path / "baselines"
    for run in (new, old):
        assert _cli("--save-baseline", run, "--baselines", root) == 0
    fp = fingerprint(ENV)
    assert fp.startswith("amd-epyc-torch2.14.1-") and fp == fingerprint({**ENV, "git_commit": "x"})
    assert fp != fingerprint({**ENV, "torch_threads": 4})
    saved = root / fp / "t" / "20260102-000000-bbbb"
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        ["measurements.csv", "trials.csv", "summary.csv", "env.json", "spec.json"])
    assert (saved / "measurements.csv").read_bytes() == (new / "measurements.csv").read_bytes()
    capsys.readouterr()
    assert _cli("latest", cand, "--baselines", root) == 0  # the older, faster one would regress
    assert f"baseline:  {saved}" in capsys.readouterr().out


@pytest.mark.parametrize("file, key, value", [
    ("spec.json", "name", "../../../escaped"), ("spec.json", "name", "ABS"),
    ("env.json", "run_id", "../../escaped"), ("env.json", "run_id", ".."),
])
def test_save_baseline_refuses_a_study_name_or_run_id_that_is_not_one_folder(
        tmp_path, capsys, file, key, value):
    """Both come from the run's own files: edited, they must not steer the copy elsewhere."""
    run = _run(tmp_path / "runs", "20260101-000000-aaaa", {THROUGHPUT: _noisy(1000.0)})
    value = str(tmp_path / "escaped") if value == "ABS" else value
    data = json.loads((run / file).read_text())
    (run / file).write_text(json.dumps({**data, key: value}))
    before = sorted(tmp_path.rglob("*"))
    assert _cli("--save-baseline", run, "--baselines", tmp_path / "a" / "b" / "baselines") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the {'study name' if key == 'name' else 'run_id'} in " in err
    assert f"must be a single folder name, but got {value!r}" in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, inside --baselines or out


def test_a_torch_version_with_a_slash_still_files_the_baseline_inside_baselines(tmp_path):
    run = _run(tmp_path / "runs", "20260101-000000-aaaa", {THROUGHPUT: _noisy(1000.0)},
               env={"versions": {**ENV["versions"], "torch": "/../../../escaped"}})
    root = tmp_path / "baselines"
    assert _cli("--save-baseline", run, "--baselines", root) == 0
    [saved] = root.rglob("env.json")
    assert saved.parents[3] == root  # <fingerprint>/<study>/<run_id>/env.json, one folder each
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("case", ["missing folder", "no common rows", "bad threshold", "unknown metric",
                                  "threshold unit", "no baseline saved", "baseline alone"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    b = _run(tmp_path, "20260101-000000-aaaa", {THROUGHPUT: _noisy(1000.0)})
    c = _run(tmp_path, "20260102-000000-bbbb", {THROUGHPUT: _noisy(1000.0)})
    other = _run(tmp_path, "20260103-000000-cccc", {THROUGHPUT: _noisy(1000.0)}, strategy="linear_probe")
    argv = {"missing folder": [tmp_path / "nope", c], "no common rows": [b, other],
            "bad threshold": [b, c, "--threshold", "samples_per_s=3"],
            "unknown metric": [b, c, "--threshold", "speed=3%"],
            "threshold unit": [b, c, "--threshold", "accuracy=1%"],
            "no baseline saved": ["latest", c, "--baselines", tmp_path / "empty"],
            "baseline alone": [b]}[case]
    assert _cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.fixture
def one_thread():
    """Two OpenMP threads per process on a shared 2-core machine make steps far slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_two_real_runs_of_a_tiny_study_compare_without_crashing(tmp_path, capsys, one_thread):
    spec = StudySpec(name="t", description="t", dataset="digits", classes=(0, 1, 2), budgets=(20,),
                     strategies=("full_finetune",), epochs=2, batch_size=16, trials=1, seeds=3)
    a, b = (run_study(spec, out_root=tmp_path, progress=False).run_dir for _ in range(2))
    assert _cli(a, b, "--out", tmp_path / "cmp.csv") in (0, 1)
    cmp = pd.read_csv(tmp_path / "cmp.csv")
    matched = set(zip(cmp["metric"], cmp["phase"], cmp["split"]))
    assert {("accuracy", "all", "test"), ("samples_per_s", "all", "train"), ("step_p50_s", "all", "train"),
            ("train_time_s", "all", "train"), ("peak_cpu_rss_increase", "all", "train")} <= matched
    assert ("samples_per_s", "val") in {(m, s) for m, _, s in matched}
    assert (cmp["n_baseline"] == 3).all() and (cmp["n_candidate"] == 3).all()
    assert "| verdict |" in capsys.readouterr().out
