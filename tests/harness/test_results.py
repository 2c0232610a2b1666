"""harness.analysis.results: the tables written as CSV (and Parquet with pyarrow), read back unchanged."""

import json
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from harness.analysis import results
from harness.analysis.results import load, write_tables
from harness.analysis.tables import measurements_frame, summarize
from harness.errors import UserError
from harness.run.records import Measurement

needs_pyarrow = pytest.mark.skipif(not results.parquet_available(),
                                   reason="pyarrow is not installed (pip install pyarrow)")


def _rows(acc: float) -> list[Measurement]:
    base = Measurement("r1", "s", "cpu/d/m/shots=10/ft/eager", "final", 0, "all", "ft", "d", "m",
                       "10", "cpu", "eager", 1000, "test", "accuracy", acc, "fraction", None, "ok")
    return [
        base,  # a whole-run value: no epoch
        replace(base, metric="loss", value=0.5, unit="nats", epoch=0, split="val", phase="ft"),
        replace(base, metric="samples_per_s", value=float("nan"), unit="samples/s", budget="all",
                cell="cpu/d/m/shots=all/ft/eager", status="failed"),
        replace(base, metric="lr", value=0.01, unit="1", epoch=1, seed=0, stage="search"),
    ]


def _tables(acc: float = 0.8):
    m = measurements_frame(_rows(acc))
    trials = pd.DataFrame([
        {"run_id": "r1", "cell": "cpu/d/m/shots=10/ft/eager", "stage": "search", "trial": 0,
         "seed": 0, "strategy": "ft", "budget": "10", "status": "ok", "error": "",
         "val_accuracy": 0.7, "test_accuracy": None, "params": json.dumps({"lr": 0.01}),
         "pareto": True, "retry_of": None},
        {"run_id": "r1", "cell": "cpu/d/m/shots=10/ft/eager", "stage": "final", "trial": 0,
         "seed": 1000, "strategy": "ft", "budget": "10", "status": "ok", "error": "",
         "val_accuracy": 0.7, "test_accuracy": acc, "params": json.dumps({"lr": 0.01}),
         "retry_of": 3},
        {"run_id": "r1", "cell": "cpu/d/m/shots=all/ft/eager", "stage": "final", "trial": 1,
         "seed": 1000, "strategy": "ft", "budget": "all", "status": "failed",
         "error": 'ValueError: bad "lr", got 2,\nsee above', "val_accuracy": float("nan"),
         "test_accuracy": None, "params": "{}", "retry_of": None},
    ])
    for col in ("device", "dataset", "model", "execution"):
        trials[col] = {"device": "cpu", "dataset": "d", "model": "m", "execution": "eager"}[col]
    return m, trials, summarize(m, trials)


def _write_run(run_dir, tables, parquet: bool, monkeypatch) -> list:
    with monkeypatch.context() as mp:
        mp.setattr(results, "parquet_available", lambda: parquet)
        paths = write_tables(run_dir, *tables)
    (run_dir / "env.json").write_text(json.dumps({"torch": "2.x"}))
    (run_dir / "spec.json").write_text(json.dumps({"name": "s", "budgets": [10, None]}))
    return paths


def _load(run_dir, parquet: bool, monkeypatch):
    with monkeypatch.context() as mp:
        mp.setattr(results, "parquet_available", lambda: parquet)
        return load(run_dir)


FORMATS = ["csv", pytest.param("parquet", marks=needs_pyarrow)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_returns_the_measurements_write_tables_wrote_dtypes_nans_and_empty_epochs(
        tmp_path, monkeypatch, fmt):
    tables = _tables()
    paths = _write_run(tmp_path, tables, fmt == "parquet", monkeypatch)
    assert sorted(p.name for p in paths) == sorted(
        f"{n}.{ext}" for n in results.TABLES for ext in (["csv", "parquet"] if fmt == "parquet"
                                                         else ["csv"]))
    run = _load(tmp_path, fmt == "parquet", monkeypatch)
    pd.testing.assert_frame_equal(run.measurements, tables[0])  # exactly, dtypes included
    assert run.measurements["epoch"].dtype == "Int64" and run.measurements["epoch"].isna().sum() == 2
    assert run.measurements["value"].isna().tolist() == [False, False, True, False]
    assert run.env == {"torch": "2.x"} and run.spec["budgets"] == [10, None]


@pytest.mark.parametrize("fmt", FORMATS)
def test_trials_and_summary_keep_budget_labels_texts_and_missing_values(tmp_path, monkeypatch, fmt):
    _, trials, summary = _tables()
    _write_run(tmp_path, _tables(), fmt == "parquet", monkeypatch)
    run = _load(tmp_path, fmt == "parquet", monkeypatch)
    assert run.trials["budget"].tolist() == ["10", "10", "all"]  # labels, never the number 10
    assert run.summary["budget"].tolist() == summary["budget"].tolist()
    assert run.trials["error"].iloc[2] == trials["error"].iloc[2]  # quotes, comma, newline intact
    assert run.trials["error"].iloc[:2].isna().all()  # CSV cannot tell "" from missing; neither do we
    assert run.trials["test_accuracy"].isna().tolist() == [True, False, True]
    assert run.trials["pareto"].iloc[0] is True
    assert run.trials["pareto"].iloc[1:].isna().all()
    pd.testing.assert_series_equal(run.summary["test_acc_mean"], summary["test_acc_mean"])


@needs_pyarrow
def test_parquet_and_csv_give_identical_frames_and_parquet_is_what_is_read(tmp_path, monkeypatch):
    _write_run(tmp_path / "a", _tables(), False, monkeypatch)
    _write_run(tmp_path / "b", _tables(), True, monkeypatch)
    from_csv = load(tmp_path / "a")
    monkeypatch.setattr(results, "_read_csv", lambda *a: pytest.fail("read the CSV"))
    from_parquet = load(tmp_path / "b")
    for name in results.TABLES:
        pd.testing.assert_frame_equal(getattr(from_parquet, name), getattr(from_csv, name))


@needs_pyarrow
def test_a_parquet_file_older_than_its_csv_is_ignored(tmp_path, monkeypatch):
    _write_run(tmp_path, _tables(0.8), True, monkeypatch)
    new = _tables(0.3)
    (tmp_path / "measurements.csv").write_text(new[0].to_csv(index=False))  # e.g. a hand edit
    run = load(tmp_path)
    assert run.measurements["value"].iloc[0] == 0.3


@needs_pyarrow
def test_a_run_whose_csvs_were_deleted_is_read_from_parquet(tmp_path, monkeypatch):
    tables = _tables()
    _write_run(tmp_path, tables, True, monkeypatch)
    for name in results.TABLES:
        (tmp_path / f"{name}.csv").unlink()
    pd.testing.assert_frame_equal(load(tmp_path).measurements, tables[0])


def test_writing_without_pyarrow_removes_a_parquet_file_that_no_longer_matches(tmp_path, monkeypatch):
    for name in results.TABLES:
        (tmp_path / f"{name}.parquet").write_bytes(b"old")
    _write_run(tmp_path, _tables(), False, monkeypatch)
    assert not list(tmp_path.glob("*.parquet"))


def test_harness_tables_load_reads_the_same_run(tmp_path, monkeypatch):
    from harness.analysis.results import load as tables_load

    _write_run(tmp_path, _tables(), results.parquet_available(), monkeypatch)
    pd.testing.assert_frame_equal(tables_load(tmp_path).measurements, load(tmp_path).measurements)
    pd.testing.assert_frame_equal(tables_load(tmp_path).trials, load(tmp_path).trials)


def test_a_path_that_is_no_run_folder_is_a_one_line_user_error(tmp_path):
    for path in (tmp_path / "nope", tmp_path):
        with pytest.raises(UserError, match="is not a run folder: it holds no measurements.csv") as e:
            load(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_run_folder_missing_a_table_names_it_in_one_line(tmp_path, monkeypatch):
    _write_run(tmp_path, _tables(), False, monkeypatch)
    (tmp_path / "trials.csv").unlink()
    with pytest.raises(UserError, match=r"lacks trials\.csv; .* --resume") as e:
        load(tmp_path)
    assert "\n" not in str(e.value)


def _snapshot(run_dir) -> dict:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


@pytest.mark.parametrize("parquet", [False, pytest.param(True, marks=needs_pyarrow)])
@pytest.mark.parametrize("fail_in", ["fsync", "replace"])
def test_an_interrupted_write_leaves_every_old_file_whole_and_no_temp_file(
        tmp_path, monkeypatch, parquet, fail_in):
    _write_run(tmp_path, _tables(0.8), parquet, monkeypatch)
    before = _snapshot(tmp_path)

    def killed(*args):
        raise KeyboardInterrupt  # what a Ctrl-C or a dying process raises mid-write

    with monkeypatch.context() as mp:
        mp.setattr(results, "parquet_available", lambda: parquet)
        mp.setattr(os, fail_in, killed)  # fsync: the temp file half done; replace: done, not moved
        with pytest.raises(KeyboardInterrupt):
            write_tables(tmp_path, *_tables(0.3))
    assert _snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert _load(tmp_path, parquet, monkeypatch).measurements["value"].iloc[0] == 0.8


@needs_pyarrow
def test_a_run_killed_between_the_csv_and_the_parquet_write_reads_the_new_csv(tmp_path, monkeypatch):
    _write_run(tmp_path, _tables(0.8), True, monkeypatch)
    real = os.replace

    def parquet_fails(src, dst):
        if str(dst).endswith(".parquet"):
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(os, "replace", parquet_fails)
    with pytest.raises(OSError, match="disk full"):
        write_tables(tmp_path, *_tables(0.3))
    monkeypatch.undo()
    assert load(tmp_path).measurements["value"].iloc[0] == 0.3  # not the stale Parquet's 0.8
    assert np.isclose(pd.read_parquet(tmp_path / "measurements.parquet")["value"].iloc[0], 0.8)
