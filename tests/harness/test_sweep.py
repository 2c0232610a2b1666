import dataclasses

import optuna
import pytest
import torch

from harness.analysis.results import load
from harness.config.spec import StudySpec
from harness.pipeline import run_study
from harness.run.queue import redact_url
from harness.run.sweep import make_pruner, startup_trials


def _spec(**kw):
    base = {"name": "t", "description": "t", "dataset": "digits", "classes": (0, 1, 2), "budgets": (20,),
                "strategies": ("full_finetune",), "epochs": 4, "batch_size": 16, "trials": 3, "seeds": 2}
    return StudySpec(**{**base, **kw})


def test_a_diverged_trial_is_failed_in_optuna_and_never_selected(tmp_path):
    """A probe at lr=1e38 overflows to inf/NaN; Optuna must record FAIL and select another config."""
    spec = _spec(strategies=("linear_probe",), enqueue={"linear_probe": {"lr": 1e38, "weight_decay": 1e-6}})
    run = run_study(spec, out_root=tmp_path, progress=False)
    trials = load(run.run_dir).trials
    diverged = trials[(trials["stage"] == "search") & (trials["param_lr"] == 1e38)]
    assert diverged["status"].tolist() == ["failed"]
    assert "NonFiniteLossError" in diverged["error"].iloc[0]
    assert diverged["val_accuracy"].isna().all()
    url = f"sqlite:///{run.run_dir / 'optuna.db'}"
    name = next(n for n in optuna.get_all_study_names(url) if n.endswith("/linear_probe/eager"))
    study = optuna.load_study(study_name=name, storage=url)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    finals = trials[trials["stage"] == "final"]
    assert len(finals) == 2 and (finals["param_lr"] != 1e38).all()


def test_invalid_hyperparameters_are_a_failed_row_and_the_study_goes_on(tmp_path):
    spec = _spec(enqueue={"full_finetune": {"lr": 0.01, "weight_decay": 0.0}})  # 0 on a log scale
    run = run_study(spec, out_root=tmp_path, progress=False)
    trials = load(run.run_dir).trials
    first = trials.iloc[0]
    assert first["status"] == "failed" and "ValueError in search_space" in first["error"]
    assert (trials["stage"] == "search").sum() == 3 and (trials["stage"] == "final").sum() == 2


def test_tpe_models_results_within_small_budgets():
    assert startup_trials(10) == 3 and startup_trials(3) == 2 and startup_trials(100) == 10


@pytest.mark.parametrize("url, shown", [
    ("postgresql://alice:s3cr%40t@db:5432/optuna", "postgresql://alice:***@db:5432/optuna"),
    ("sqlite:///results/x.db", "sqlite:///results/x.db"),
])
def test_redact_url_hides_passwords(url, shown):
    assert redact_url(url) == shown


def test_execution_is_a_grid_axis_with_its_own_cells(tmp_path):
    spec = _spec(executions=("eager", "eager+channels_last"), trials=1, seeds=1, epochs=2)
    run = run_study(spec, out_root=tmp_path, progress=False)
    s = run.summary
    assert s["cell"].tolist() == ["cpu/digits/small_cnn/shots=20/full_finetune/eager",
                                "cpu/digits/small_cnn/shots=20/full_finetune/eager+channels_last"]
    assert set(load(run.run_dir).measurements["execution"]) == {"eager", "eager+channels_last"}
    assert dataclasses.asdict(spec)["executions"] == ("eager", "eager+channels_last")


def test_a_trial_failing_after_some_epochs_reports_no_accuracy_to_selection():
    from harness.config.spec import TrialConfig
    from harness.data.task import load_task
    from harness.run.trial import TrialContext, run_trial

    def fail_in_epoch_1(rec):
        if rec.epoch == 1:
            raise RuntimeError("disk full")

    cfg = TrialConfig("t", "c", "search", 0, 0, "full_finetune", {"lr": 0.01, "weight_decay": 0.0},
                      "digits", (0, 1, 2), 20, epochs=3, batch_size=16)
    res = run_trial(cfg, TrialContext("r", load_task("digits", (0, 1, 2), 20)), fail_in_epoch_1)
    assert res.status == "failed" and res.error == "RuntimeError: disk full"
    assert res.val_accuracy != res.val_accuracy  # NaN, though epochs 0 and 1 had accuracies
    epochs_logged = {r.epoch for r in res.records if r.metric == "accuracy" and r.split == "val"}
    assert epochs_logged >= {0, 1} and all(r.status == "failed" for r in res.records)


def test_time_to_target_is_the_training_time_of_the_first_epoch_that_reached_it(tmp_path):
    spec = _spec(trials=1, seeds=1, epochs=4, target_accuracy=0.5)
    run = run_study(spec, out_root=tmp_path, progress=False)
    m = load(run.run_dir).measurements
    one = m[(m["stage"] == "final")]
    val = one[(one["metric"] == "accuracy") & (one["split"] == "val") & one["epoch"].notna()]
    times = one[(one["metric"] == "train_time_s") & one["epoch"].notna()].set_index("epoch")["value"]
    first = val[val["value"] >= 0.5]["epoch"].min()
    got = one[one["metric"] == "time_to_target_s"]["value"].iloc[0]
    assert got == pytest.approx(times[first])


def test_measurement_rows_carry_flops_utilisation_and_per_phase_memory(tmp_path):
    # an SGD probe, so both phases take timed steps (an L-BFGS probe has none: NaN rates)
    hp = {"lr": 0.02, "weight_decay": 1e-4, "probe_fraction": 0.5, "probe_solver": "sgd",
          "probe_lr_scale": 10.0}
    spec = _spec(strategies=("lp_ft",), trials=1, seeds=1, epochs=4, enqueue={"lp_ft": hp})
    m = load(run_study(spec, out_root=tmp_path, progress=False).run_dir).measurements
    final = m[m["stage"] == "final"]
    metrics = set(final["metric"])
    assert {"train_flops_per_sample", "eval_flops_per_sample", "achieved_flops_per_s",
            "utilisation_empirical", "empirical_peak_flops_per_s", "forward_p50_s",
            "backward_p50_s", "optimizer_p50_s", "data_p50_s", "optimizer_state_bytes",
            "peak_cpu_rss", "peak_cpu_rss_increase"} <= metrics
    mem = final[final["metric"] == "peak_cpu_rss"].set_index("phase")["value"]
    assert {"probe", "finetune", "all"} <= set(mem.index)
    assert mem["all"] == max(mem["probe"], mem["finetune"])
    ev = final[(final["metric"] == "samples_per_s") & (final["split"] == "val")].set_index("phase")
    assert set(ev.index) == {"probe", "finetune"} and ev.loc["finetune", "value"] > 0
    assert ev.loc["probe", "value"] != ev.loc["probe", "value"]  # cached: no model evaluation to time
    run_summary = load(next(iter(tmp_path.glob("t/*")))).summary
    inc = final[(final["metric"] == "peak_cpu_rss_increase") & (final["phase"] == "all")]["value"]
    assert run_summary["peak_memory_mib"].iloc[0] == pytest.approx(inc.median() / 2**20)
    util_all = final[(final["metric"] == "utilisation_empirical") & (final["phase"] == "all")]["value"]
    assert run_summary["utilisation"].iloc[0] == pytest.approx(util_all.median())
    util = final[final["metric"] == "utilisation_empirical"]["value"]
    assert ((util > 0) & (util < 1.5)).all()  # a fraction of the matmul peak, not a made-up number


def test_grid_sampler_tries_exactly_the_grid(tmp_path):
    grid = {"full_finetune": {"lr": [0.01, 0.05], "weight_decay": [1e-5, 1e-4]}}
    spec = _spec(sampler="grid", grid=grid, trials=6, seeds=1, epochs=2, pruner="none")
    trials = load(run_study(spec, out_root=tmp_path, progress=False).run_dir).trials
    search = trials[trials["stage"] == "search"]
    # the grid has 4 points: Optuna stops there, whatever the trial budget
    assert sorted(zip(search["param_lr"], search["param_weight_decay"], strict=True)) == [
        (0.01, 1e-5), (0.01, 1e-4), (0.05, 1e-5), (0.05, 1e-4)]


@pytest.mark.parametrize("sampler, pruner", [("random", "hyperband"), ("tpe", "none")])
def test_other_samplers_and_pruners_run_the_same_budget(tmp_path, sampler, pruner):
    spec = _spec(sampler=sampler, pruner=pruner, trials=3, seeds=1, epochs=4)
    s = run_study(spec, out_root=tmp_path, progress=False).summary
    assert (s["trials_ok"] + s["trials_pruned"] == 3).all()
    if pruner == "none":
        assert (s["trials_pruned"] == 0).all()


def test_random_sampler_repeats_its_search_with_the_same_seed(tmp_path):
    spec = _spec(sampler="random", trials=2, seeds=1, epochs=1, pruner="none")
    a = load(run_study(spec, out_root=tmp_path / "a", progress=False).run_dir).trials
    b = load(run_study(spec, out_root=tmp_path / "b", progress=False).run_dir).trials
    assert a["params"].tolist() == b["params"].tolist()


def test_an_unavailable_device_is_a_skipped_cell_with_its_reason(tmp_path):
    spec = _spec(devices=("cpu", "cuda:7"), trials=1, seeds=1, epochs=1)
    run = run_study(spec, out_root=tmp_path, progress=False)
    trials = load(run.run_dir).trials
    skipped = trials[trials["status"] == "skipped"]
    assert skipped["cell"].tolist() == ["cuda:7/digits/small_cnn/shots=20/full_finetune/eager"]
    assert "not available" in skipped["error"].iloc[0] or "does not exist" in skipped["error"].iloc[0]
    s = run.summary.set_index("cell")
    assert s.loc["cpu/digits/small_cnn/shots=20/full_finetune/eager", "n_seeds"] == 1
    assert s.loc["cuda:7/digits/small_cnn/shots=20/full_finetune/eager", "skipped"]
    assert "skipped: " in (run.run_dir / "report.md").read_text()


def test_a_study_whose_every_device_is_missing_exits_2_before_writing(run_cli, tmp_path):
    res = run_cli("study", "finetune_vs_probe", "--devices", "cuda:7", "--out", str(tmp_path))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "cuda:7" in res.stderr and not any(tmp_path.iterdir())


def test_multi_objective_marks_the_pareto_front_of_accuracy_and_throughput(tmp_path):
    spec = _spec(strategies=("full_finetune", "linear_probe"), objectives=("accuracy", "throughput"),
                 trials=4, seeds=1, epochs=2)
    run = run_study(spec, out_root=tmp_path, progress=False)
    trials = load(run.run_dir).trials
    search = trials[trials["stage"] == "search"]
    url = f"sqlite:///{run.run_dir / 'optuna.db'}"
    for cell, g in search.groupby("cell"):
        study = optuna.load_study(study_name=next(n for n in optuna.get_all_study_names(url)
                                                  if n.endswith(cell)), storage=url)
        assert len(study.directions) == 2
        front = {t.number for t in study.best_trials}
        assert set(g[g["pareto"].astype(bool)]["trial"]) == front
        # no point off the front dominates one on it
        vals = {t.number: t.values for t in study.trials if t.values}
        for n in front:
            assert not any(v[0] >= vals[n][0] and v[1] >= vals[n][1] and v != vals[n]
                           for v in vals.values())
    assert run.summary["pareto"].any()


def test_pareto_front_of_the_summary():
    import pandas as pd

    from harness.analysis.tables import pareto_front

    df = pd.DataFrame({"acc": [0.9, 0.8, 0.7, 0.95, float("nan")], "sps": [10, 20, 5, 1, 100],
                       "device": "cpu", "budget": "10"})
    assert pareto_front(df, ["acc", "sps"], by=["device", "budget"]).tolist() == [
        True, True, False, True, False]


class _MemoryHog(torch.nn.Module):
    """A backbone whose forward asks the allocator for 4 EiB: a real out-of-memory error."""

    def forward(self, x):
        if x.device.type == "meta":  # FLOP counting runs on a meta copy, where nothing allocates
            return x.new_empty(x.shape[0], 4)
        return x.new_empty(2**62, dtype=torch.uint8)


def _memory_hog(in_channels: int, num_classes: int):
    from collections import OrderedDict

    return torch.nn.Sequential(OrderedDict(body=torch.nn.Sequential(torch.nn.Flatten(), _MemoryHog()),
                                           head=torch.nn.Linear(4, num_classes)))


def test_an_out_of_memory_trial_is_a_failed_row_and_the_study_goes_on(tmp_path, monkeypatch):
    from harness.registry import MODELS

    MODELS.names()  # discover the registered models first
    monkeypatch.setitem(MODELS._entries, "memory_hog", _memory_hog)
    spec = _spec(models=("memory_hog", "small_cnn"), trials=2, seeds=1, epochs=1)
    run = run_study(spec, out_root=tmp_path, progress=False)
    trials = load(run.run_dir).trials
    hog = trials[(trials["model"] == "memory_hog") & (trials["stage"] == "search")]
    assert (hog["status"] == "failed").all() and len(hog) == 2
    assert hog["error"].str.contains("allocate").all()
    hog_final = trials[(trials["model"] == "memory_hog") & (trials["stage"] == "final")]
    assert hog_final["error"].tolist() == ["no search trial of the cell completed"]
    ok = trials[trials["model"] == "small_cnn"]
    assert (ok["status"] == "ok").all() and len(ok) == 3


def test_a_worker_pinned_to_a_device_serves_only_cells_of_its_kind():
    from harness.run.queue import Cell, _serves

    def cell(device):
        return Cell(device, "digits", "small_cnn", 20, "full_finetune", "eager")

    assert _serves(cell("cuda"), "cuda:1") and _serves(cell("cuda:1"), "cuda:1")
    assert not _serves(cell("cuda:0"), "cuda:1") and not _serves(cell("cpu"), "cuda:1")
    assert _serves(cell("cpu"), None) and not _serves(Cell("cpu", "d", "m", 1, "s", "e", "no"), None)


def test_weights_from_a_file_start_every_trial_with_a_fresh_head(tmp_path):
    from harness.config.spec import TrialConfig
    from harness.data.task import load_task
    from harness.models.core import build_model
    from harness.models.torchvision import backbone_weights
    from harness.run.trial import TrialContext, build_trial_model

    torch.manual_seed(5)
    saved = build_model("resnet_small", 1, 10).state_dict()
    torch.save(saved, tmp_path / "w.pt")
    task = load_task("digits", (0, 1, 2), 20)
    state = backbone_weights("resnet_small", str(tmp_path / "w.pt"), task.input_shape)
    cfg = TrialConfig("t", "c", "search", 0, 0, "full_finetune", {}, "digits", (0, 1, 2), 20,
                      model="resnet_small")
    model = build_trial_model(cfg, TrialContext("r", task, state))
    got = model.state_dict()
    for k, v in saved.items():
        if not k.startswith("head."):
            assert torch.equal(got[k], v), k
    assert got["head.weight"].shape == (3, saved["head.weight"].shape[1])

    spec = _spec(model="resnet_small", weights=str(tmp_path / "w.pt"), trials=1, seeds=1, epochs=1)
    trials = load(run_study(spec, out_root=tmp_path / "runs", progress=False).run_dir).trials
    assert (trials["status"] == "ok").all()


def test_the_dataloader_path_and_ood_sets_in_a_study(tmp_path):
    spec = _spec(loader="dataloader", loader_workers=0, ood=("rotate:30", "noise:0.5"),
                 trials=1, seeds=2, epochs=2)
    run = run_study(spec, out_root=tmp_path, progress=False)
    tables = load(run.run_dir)
    final = tables.trials[tables.trials["stage"] == "final"]
    assert final["ood_accuracy:rotate:30"].between(0, 1).all()
    assert final["ood_accuracy:noise:0.5"].between(0, 1).all()
    m = tables.measurements
    assert set(m[m["split"].str.startswith("ood:")]["stage"]) == {"final"}


def test_no_two_search_trials_draw_the_same_start_up_point(tmp_path):
    """Each trial's sampler is seeded by (sampler_seed, trial number), so the random start-up
    trials differ from each other and repeat exactly in another run."""
    spec = _spec(trials=4, seeds=1, epochs=1)
    params = []
    for out in ("a", "b"):
        t = load(run_study(spec, out_root=tmp_path / out, progress=False).run_dir).trials
        params.append(t[t["stage"] == "search"]["params"].tolist())
    assert len(set(params[0])) == 4 and params[0] == params[1]


def test_edge_of_range_is_flagged_per_trial_and_for_the_cells_best_config():
    from harness.run.sweep import edge_of_range

    lr = optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)
    k = optuna.distributions.IntDistribution(1, 4)
    assert edge_of_range({"lr": 0.9, "k": 2}, {"lr": lr, "k": k}) == "lr=0.9 top of [0.001, 1] log"
    assert edge_of_range({"lr": 0.03, "k": 1}, {"lr": lr, "k": k}) == "k=1 bottom of [1, 4]"
    assert edge_of_range({"lr": 0.03, "k": 2}, {"lr": lr, "k": k}) == ""  # 0.03: mid-range on log
    # an edge the strategy names as its limit ("no decay" at weight decay's bottom) is no flag;
    # the other edge still is
    wd = optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True)
    limits = {"weight_decay": "bottom"}
    assert edge_of_range({"weight_decay": 1.1e-6}, {"weight_decay": wd}, limits=limits) == ""
    assert edge_of_range({"weight_decay": 1.1e-6}, {"weight_decay": wd}) != ""
    assert edge_of_range({"weight_decay": 9e-3}, {"weight_decay": wd}, limits=limits) == (
        "weight_decay=0.009 top of [1e-06, 0.01] log")


def test_a_run_flags_a_best_config_at_the_edge_and_records_what_selected_it(tmp_path):
    """One trial, enqueued at the top of the probe's lr range: trials.csv, summary.csv and the
    report flag it; the validation labels (val_per_class) and the steps (min_steps) are recorded."""
    spec = _spec(strategies=("linear_probe_lbfgs",), trials=1, seeds=1, epochs=2, budgets=(5,),
                 val_per_class=7, min_steps=20, enqueue={"linear_probe_lbfgs": {"C": 9e4}})
    run = run_study(spec, out_root=tmp_path, progress=False)
    tables = load(run.run_dir)
    search = tables.trials[tables.trials["stage"] == "search"]
    flag = "C=9e+04 top of [1e-06, 100000] log"
    assert search["edge_of_range"].tolist() == [flag]
    assert tables.summary["edge_of_range"].tolist() == [flag]
    assert tables.summary["val_labels"].tolist() == [21]  # 7 per class, 3 classes
    assert flag in (run.run_dir / "report.md").read_text()
    m = tables.measurements
    epochs = m[(m["metric"] == "loss") & (m["split"] == "train") & m["epoch"].notna()
               & (m["stage"] == "search")]["epoch"]
    # 15 examples, batch 15: one step an epoch, so 20 steps take 20 epochs (not the study's 2)
    assert epochs.max() == 19


def _judged(pruner: str, earlier: list[float], value: float, epochs: int = 8) -> bool:
    """Whether the study's pruner stops a trial reporting ``value`` at epoch 2 (a quarter of 8)
    after trials that reported ``earlier`` there and finished."""
    study = optuna.create_study(direction="maximize",
                                pruner=make_pruner(_spec(pruner=pruner, epochs=epochs, trials=9)))
    for v in earlier:
        t = study.ask()
        for step in (1, 2):
            t.report(v, step)
            t.should_prune()  # successive halving records a rung only when asked
        study.tell(t, v)
    t = study.ask()
    t.report(value, 1)
    t.report(value, 2)
    return t.should_prune()


def test_each_pruner_stops_what_it_says_it_stops():
    earlier = [0.1, 0.2, 0.3, 0.4, 0.5]
    # above the median of earlier trials but not in their best third
    assert not _judged("median", earlier, 0.35)
    assert _judged("percentile", earlier, 0.35)
    assert not _judged("percentile", earlier, 0.45)
    assert _judged("sha", earlier, 0.35) and not _judged("sha", earlier, 0.45)
    assert not _judged("none", earlier, 0.0)
    # before the warm-up's start-up trials (a third of 9) have finished, nothing is stopped
    assert not _judged("percentile", earlier[:2], 0.0) and not _judged("median", earlier[:2], 0.0)
    # the first trials at a successive-halving rung go on only as the best there so far
    assert _judged("sha", [0.5], 0.4) and not _judged("sha", [0.5], 0.6)


def test_an_edge_best_is_no_flag_when_an_interior_trial_matches_it_within_validation_noise():
    """text_finetune's probe: 41.6% at the top of C's range, 41.2% inside it, on 250 validation
    examples (standard error 3.1 points): a flat top, so no flag. An interior trial 5 points below
    leaves the flag, as does a cell whose every trial sits at an edge."""
    import pandas as pd

    from harness.analysis.tables import _best_edge

    top = "C=9.84e+04 top of [1e-06, 100000] log"

    def trials(*rows):
        return pd.DataFrame(rows, columns=["trial", "val_accuracy", "edge_of_range"])

    assert _best_edge(trials((0, 0.416, top), (1, 0.412, None), (2, 0.348, None)), 250) == ""
    assert _best_edge(trials((0, 0.416, top), (1, 0.364, ""), (2, 0.348, None)), 250) == top
    assert _best_edge(trials((0, 0.416, top), (1, 0.408, "C=5.08e+04 top of ...")), 250) == top
    # the same gap on 5,000 validation examples (standard error 0.7 points) is a real difference
    assert _best_edge(trials((0, 0.416, top), (1, 0.400, None)), 5000) == top
    assert _best_edge(trials((0, 0.416, None), (1, 0.400, top)), 250) == ""  # best is inside
