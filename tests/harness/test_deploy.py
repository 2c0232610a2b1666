"""Deployment and storage measures: merged adapters compute what the unmerged model does, the
exported program what the merged model does, an adapter stores far fewer bytes than its model,
and every phase's peak memory is split into weights, gradients, optimizer state and the rest."""

import fnmatch

import pytest
import torch

from harness.data.core import Split
from harness.measure.deploy import (
    deployment,
    memory_split,
    merge_adapters,
    safetensors_bytes,
    trained_names,
)
from harness.models.core import build_model
from harness.registry import STRATEGIES
from harness.train.loop import LoopConfig, train
from harness.train.strategy import build_plan

PEFT = ["lora", "dora", "ia3", "loha", "lokr", "vera"]
HP = {"lr": 0.01, "weight_decay": 1e-3, "rank": 4, "alpha": 2.0, "dropout": 0.0, "target": "all"}


def _prepared(name, model="timm:test_vit", size=16, hp=HP):
    torch.manual_seed(0)
    return build_plan(name, STRATEGIES.get(name)(), build_model(model, 1, 3, image_size=size), hp, 2)


@pytest.mark.parametrize("name", PEFT)
def test_merged_adapters_compute_what_the_unmerged_model_does(name):
    model, plan = _prepared(name)
    with torch.no_grad():  # adapters away from their identity start, as after training
        for n, p in model.named_parameters():
            if any(fnmatch.fnmatchcase(n, pat) for pat in plan.phases[0].params):
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    x = torch.randn(8, 1, 16, 16)
    merged = merge_adapters(model).eval()
    assert not any(type(m).__module__.startswith("peft.") for m in merged.modules())
    assert any(type(m).__module__.startswith("peft.") for m in model.modules())  # a copy merged
    with torch.no_grad():
        assert not torch.allclose(model(x), build_model("timm:test_vit", 1, 3, image_size=16)(x))
        torch.testing.assert_close(merged(x), model(x), atol=1e-5, rtol=0)


def _trained(name, model="small_cnn", size=12, hp=HP):
    model, plan = _prepared(name, model, size, hp)
    x = torch.randn(16, 1, size, size)
    data = Split(x, (x.mean(dim=(1, 2, 3)) > 0).long())
    res = train(model, plan, data, data, LoopConfig(epochs=2, batch_size=8, lr=hp["lr"]))
    return model, plan, res, x


def test_deployment_rows_merge_export_round_trip_and_latencies():
    model, plan, _, x = _trained("lora")
    rows = {r["metric"]: r["value"] for r in deployment(model, plan, x)}
    assert rows["merge_max_abs_diff"] <= 1e-5
    assert rows["export_max_abs_diff"] <= 1e-6 and rows["export_s"] > 0
    for n in (1, 64):
        assert rows[f"latency_b{n}_p50_s"] > 0 and rows[f"latency_b{n}_merged_p50_s"] > 0
    assert "deploy_failed" not in rows
    assert model.training  # handed back in the mode it came in


def test_without_deploy_a_final_run_measures_stored_bytes_only():
    """StudySpec.deploy=False (the default): no merge, export or timed passes, which cost a
    second or more per final run on the CPU; the stored bytes are still measured."""
    model, plan, _, x = _trained("lora")
    metrics = {r["metric"] for r in deployment(model, plan, x, serve=False)}
    assert metrics == {"stored_bytes_task", "stored_bytes_model"}


def test_an_adapter_stores_far_fewer_bytes_than_its_model():
    model, plan = _prepared("lora", hp=dict(HP, target="attention_mlp"))
    keep = trained_names(model, plan)
    assert keep and all(".lora_" in k or k.startswith("head.") for k in keep)
    state = model.state_dict()
    task = safetensors_bytes({k: v for k, v in state.items() if k in keep})
    whole = safetensors_bytes(state)
    params = sum(v.numel() * 4 for k, v in state.items() if k in keep)
    # the tensors and a JSON header naming each (~100 bytes a name): a file really written
    assert params <= task < params + 200 * len(keep)
    assert task * 5 < whole
    full, full_plan = _prepared("full_finetune", hp={"lr": 0.01, "weight_decay": 1e-3})
    assert trained_names(full, full_plan) == set(full.state_dict())  # the whole model per task


def test_memory_split_adds_up_to_each_phases_peak():
    model, plan, res, _ = _trained("lora")
    by = {(r["metric"], r.get("phase")): r["value"] for r in memory_split(model, plan, res)}
    parts = ["weights", "gradients", "optimizer", "rest"]
    assert all((f"memory_{p}_bytes", "lora") in by for p in parts)
    assert sum(by[f"memory_{p}_bytes", "lora"] for p in parts) == res.phases["lora"].memory.peak_bytes
    assert 0 < by["memory_gradients_bytes", "lora"] < by["memory_weights_bytes", "lora"]
    # AdamW: two moments per trained value, and a step count per tensor
    extra = by["memory_optimizer_bytes", "lora"] - 2 * by["memory_gradients_bytes", "lora"]
    assert 0 <= extra <= 8 * sum(1 for _ in model.parameters())
    assert 0 < by["trainable_share", None] < 0.5


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A one-trial LoRA study with ``deploy=True``: its loaded run tables."""
    from harness.analysis.results import load
    from harness.config.spec import StudySpec
    from harness.pipeline import run_study

    spec = StudySpec(name="t", description="t", dataset="digits", classes=(0, 1), budgets=(10,),
                     strategies=("lora",), epochs=1, batch_size=8, trials=1, seeds=1,
                     enqueue={"lora": dict(HP, optimizer="adamw")}, deploy=True)
    return load(run_study(spec, out_root=tmp_path_factory.mktemp("deploy"), progress=False).run_dir)


def test_final_runs_carry_deployment_rows_and_search_trials_only_the_memory_split(deployed):
    m = deployed.measurements
    final, search = m[m["stage"] == "final"], m[m["stage"] == "search"]
    for metric in ("stored_bytes_task", "stored_bytes_model", "merge_max_abs_diff",
                   "export_max_abs_diff", "latency_b1_p50_s", "latency_b64_merged_p50_s",
                   "memory_rest_bytes", "trainable_share"):
        assert metric in set(final["metric"]), metric
    assert "stored_bytes_task" not in set(search["metric"])
    assert "memory_optimizer_bytes" in set(search["metric"])
    stored = final.set_index("metric")["value"]
    assert stored["stored_bytes_task"] < stored["stored_bytes_model"]
    # what is stored and served is on the deploy split, training memory on train
    split = final.drop_duplicates("metric").set_index("metric")["split"]
    assert split["stored_bytes_task"] == split["latency_b1_merged_p50_s"] == "deploy"
    assert split["memory_rest_bytes"] == split["trainable_share"] == "train"


def test_the_summary_report_and_compare_carry_the_deployment_measures(deployed):
    from harness.analysis.compare import compare_runs
    from harness.report.markdown import summary_view

    run = deployed
    s = run.summary.iloc[0]
    assert 0 < s["trainable_share"] < 0.5 and 0 < s["stored_task_mib"] < 1
    assert s["latency_b1_ms"] > 0 and s["latency_b64_merged_ms"] > 0
    view = summary_view(run.summary, run.trials)
    assert {"trainable %", "stored MiB/task", "ms b1 merged"} <= set(view.columns)
    # a run without the measures keeps its old columns
    assert "stored MiB/task" not in summary_view(run.summary.assign(stored_task_mib=float("nan")))
    rows = compare_runs(run, run).set_index("metric")
    assert rows.loc["stored_bytes_task", "verdict"] == "within noise"
    assert {"latency_b1_merged_p50_s", "memory_rest_bytes"} <= set(rows.index)
