"""The peft_vs_full study: its spec, its Pareto figures on hand-built tables, and a tiny run."""

import dataclasses

import pandas as pd
import pytest
from _claim_tables import run_tables, runs

from harness.analysis.results import load
from harness.config.spec import load_study
from harness.registry import STRATEGIES
from harness.report.figures._pareto import cost_and_accuracy, on_front
from harness.report.plots import FIGURES, NoData

COSTS = {"linear_probe": (0.80, 1e6, 400.0), "full_finetune": (0.95, 9e6, 6e5),
         "lora_r2": (0.90, 5e6, 5e4), "bias_only": (0.85, 6e6, 6e4)}  # acc, memory, stored


def test_study_compares_the_peft_methods_with_the_classic_ones_on_the_vit():
    spec = load_study("peft_vs_full")
    assert spec.model_axis == ("vit_tiny", "timm:test_vit:patch_size=7")  # ours and timm's
    assert spec.pretrain.optimizer == "adamw"
    assert {"linear_probe", "finetune_adamw", "bias_only", "lora_r2", "lora_r8", "dora", "ia3",
            "adapter", "vpt"} == set(spec.strategies)
    assert all(s in STRATEGIES.names() for s in spec.strategies)
    assert len(spec.budgets) >= 2


def _tables(with_costs=True):
    t = run_tables(*[runs(s, [acc, acc + 0.01], model="vit_tiny") for s, (acc, _, _) in COSTS.items()])
    if not with_costs:
        return t
    m = t.measurements
    test = m[m["split"] == "test"]
    # where trials record them: memory on the train split, stored bytes on the deploy split
    extra = [test.assign(metric=metric, split=split, unit="bytes",
                         value=[COSTS[s][i] for s in test["strategy"]])
             for i, metric, split in ((1, "peak_cpu_rss_increase", "train"),
                                      (2, "stored_bytes_task", "deploy"))]
    return dataclasses.replace(t, measurements=pd.concat([m, *extra], ignore_index=True))


def test_pareto_front_keeps_the_cells_no_other_beats_on_both_axes():
    df, metric = cost_and_accuracy(_tables().measurements, ["stored_bytes_task"])
    assert metric == "stored_bytes_task"
    front = set(df.loc[on_front(df), "strategy"])
    # bias_only stores more than lora_r2 and is less accurate: dominated
    assert front == {"linear_probe", "lora_r2", "full_finetune"}
    assert df.set_index("strategy").loc["lora_r2", "acc"] == pytest.approx(0.905)


@pytest.mark.parametrize("name", ["accuracy_vs_memory", "accuracy_vs_stored_bytes"])
def test_figures_draw_with_costs_and_say_why_without(name):
    draw = FIGURES.get(name).draw
    fig = draw(_tables())
    assert len(fig.axes) == 1 and len(fig.axes[0].collections) >= len(COSTS)
    with pytest.raises(NoData, match="no final run recorded"):
        draw(_tables(with_costs=False))


@pytest.mark.slow
def test_tiny_run_of_three_strategies_writes_tables_forgetting_and_the_memory_figure(tmp_path):
    """The real pipeline, shrunk: 8x8 digits, one pretraining epoch, one trial, two seeds, on
    the harness's ViT and timm's (4-pixel patches for 8 pixels)."""
    from harness.pipeline import run_study

    spec = load_study("peft_vs_full")
    spec = dataclasses.replace(spec, dataset="digits", seeds=2, epochs=1, trials=1, budgets=(10,),
                               models=("vit_tiny", "timm:test_vit:patch_size=4"),
                               min_steps=None, strategies=("linear_probe", "lora_r2", "adapter"),
                               pretrain=dataclasses.replace(spec.pretrain, dataset="digits",
                                                            epochs=1))
    run = run_study(spec, out_root=tmp_path, progress=False, figures=True)
    tables = load(run.run_dir)
    final = tables.trials[tables.trials["stage"] == "final"]
    assert (final["status"] == "ok").all() and len(final) == 12
    assert final["source_accuracy"].between(0, 1).all()
    # the probe leaves the body as pretrained: its source accuracy is the same for every seed
    probe = final[final["strategy"] == "linear_probe"]
    assert (probe.groupby("model")["source_accuracy"].nunique() == 1).all()
    # adapters (hooked into timm's own blocks on the timm ViT) trained on both backbones
    adapter = final[final["strategy"] == "adapter"].set_index(["model", "seed"])["source_accuracy"]
    assert set(adapter.index.get_level_values("model")) == set(spec.models)
    assert (run.run_dir / "plots" / "accuracy_vs_memory.png").is_file()
