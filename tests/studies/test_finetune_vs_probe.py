"""The main job end to end: tiny budgets in every run, the real default under the ``slow`` mark."""

import json

import optuna
import pandas as pd
import pytest

from harness.analysis.results import load
from harness.analysis.tables import SUMMARY_COLUMNS
from harness.run.records import COLUMNS

FIGURES_ON = {"HARNESS_FIGURES": "1"}  # the main job as users run it: figures drawn


def _only_run(out):
    runs = list((out / "finetune_vs_probe").iterdir())
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, run_cli_module):
    out = tmp_path_factory.mktemp("runs")
    res = run_cli_module("study", "finetune_vs_probe", "--trials", "2", "--seeds", "2",
                         "--epochs", "2", "--out", str(out), "--quiet", timeout=None,
                         env=FIGURES_ON)
    assert res.returncode == 0, res.stderr
    return _only_run(out), res


def test_run_writes_every_file(tiny_run):
    run_dir, res = tiny_run
    for name in ("measurements.csv", "trials.csv", "summary.csv", "env.json", "spec.json",
                 "report.md", "optuna.db", "plots/accuracy_vs_throughput.png",
                 "plots/learning_curves.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert not list(run_dir.rglob("*.tmp"))  # no half-written leftovers
    assert "test acc % (95% CI)" in res.stdout and str(run_dir) in res.stdout


def test_tidy_table_has_the_documented_columns_and_one_value_per_row(tiny_run):
    run_dir, _ = tiny_run
    m = pd.read_csv(run_dir / "measurements.csv")
    assert tuple(m.columns) == COLUMNS
    assert m["value"].dtype == float
    assert set(m["stage"]) == {"pretrain", "search", "final"}
    assert set(m["strategy"]) == {"pretrain", "linear_probe_lbfgs", "full_finetune"}


def test_test_split_is_measured_only_by_the_final_reruns(tiny_run):
    run_dir, _ = tiny_run
    m = load(run_dir).measurements
    test_rows = m[(m["split"] == "test") & (m["metric"] == "accuracy")]
    assert set(test_rows["stage"]) == {"final"}
    # 3 budgets x 2 strategies x 2 seeds
    assert len(test_rows) == 12 and test_rows["seed"].nunique() == 2
    assert 0 not in set(test_rows["seed"])  # the search seed is never re-used for the reported runs


def test_same_search_budget_for_every_cell_and_best_config_rerun(tiny_run):
    run_dir, _ = tiny_run
    run = load(run_dir)
    search = run.trials[run.trials["stage"] == "search"]
    assert search.groupby("cell").size().tolist() == [2] * 6
    for cell, g in run.trials.groupby("cell"):
        s = g[(g["stage"] == "search") & (g["status"] == "ok")]
        best = s.loc[s["val_accuracy"].idxmax(), "params"]
        assert set(g[g["stage"] == "final"]["params"]) == {best}, cell


def test_summary_ci_matches_the_final_test_accuracies(tiny_run):
    from scipy import stats

    run = load(tiny_run[0])
    assert tuple(run.summary.columns) == SUMMARY_COLUMNS
    row = run.summary.iloc[-1]
    acc = run.trials[(run.trials["cell"] == row["cell"]) & (run.trials["stage"] == "final")]["test_accuracy"]
    lo, hi = stats.t.interval(0.95, len(acc) - 1, loc=acc.mean(), scale=stats.sem(acc))
    assert row["test_acc_mean"] == pytest.approx(acc.mean())
    assert (row["test_acc_low"], row["test_acc_high"]) == pytest.approx((lo, hi))


def test_env_records_versions_commit_and_seeds(tiny_run):
    env = json.loads((tiny_run[0] / "env.json").read_text())
    assert env["versions"]["torch"] and env["git_commit"] and env["final_seeds"] == [1000, 1001]
    assert env["storage"].startswith("sqlite:///")


def test_optuna_storage_is_readable_by_optuna(tiny_run):
    run_dir, _ = tiny_run
    url = f"sqlite:///{run_dir / 'optuna.db'}"
    names = optuna.get_all_study_names(url)
    # the run's manifest, and a search and a final study per cell (3 budgets x 2 strategies)
    searches = [n for n in names if n.endswith("/eager+channels_last")]
    assert len(names) == 13 and len(searches) == 6
    assert sum(n.endswith("/final") for n in names) == 6
    ft = next(n for n in searches if "/full_finetune/" in n)
    study = optuna.load_study(study_name=ft, storage=url)
    assert len(study.trials) == 2 and study.best_trial.user_attrs["hp"]["lr"] > 0


def test_second_run_reuses_the_pretrained_backbone(tiny_run, run_cli_module, tmp_path):
    # the probe only: the backbone is loaded all the same, and nothing is fine-tuned
    res = run_cli_module("study", "finetune_vs_probe", "--trials", "1", "--seeds", "1",
                         "--epochs", "1", "--strategies", "linear_probe_lbfgs",
                         "--out", str(tmp_path), "--quiet", "--no-figures", timeout=None,
                         env=FIGURES_ON)
    assert res.returncode == 0, res.stderr
    m = load(_only_run(tmp_path)).measurements
    assert m[m["metric"] == "loaded_from_cache"]["value"].tolist() == [1.0]
    report = (_only_run(tmp_path) / "report.md").read_text()
    assert "loaded from cache" in report
    # --no-figures wins over HARNESS_FIGURES=1: tables and reports, no figures
    assert "Figures not drawn" in report and not (_only_run(tmp_path) / "plots").is_dir()
    assert "tables, report.md and report.html in" in res.stdout


@pytest.mark.slow
def test_default_budget_runs_end_to_end(run_cli_module, tmp_path):
    """The README's main command with the study's own default budget (~3.3 min on a quiet machine;
    no time limit, so a busy one makes it slow, never wrong)."""
    res = run_cli_module("study", "finetune_vs_probe", "--out", str(tmp_path), "--quiet",
                         timeout=None, env=FIGURES_ON)
    assert res.returncode == 0, res.stderr
    s = load(_only_run(tmp_path)).summary
    assert (s["n_seeds"] == 5).all() and (s["trials_failed"] == 0).all()
    assert ((s["trials_ok"] + s["trials_pruned"]) == 10).all()
    everything = s[s["budget"] == "all"].set_index("strategy")["test_acc_mean"]
    assert everything["full_finetune"] > 0.9  # the pretrained backbone transfers
