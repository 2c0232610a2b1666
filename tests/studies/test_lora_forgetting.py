"""Forgetting (source accuracy after fine-tuning) and the lora_forgetting study (Biderman et al.
2024): the measure itself, its rows and column, the claims, and a tiny end-to-end run."""

import dataclasses

import pandas as pd
import pytest
import torch

from harness.analysis.claims import evaluate_claims
from harness.analysis.results import RunTables, load
from harness.analysis.tables import measurements_frame
from harness.config.spec import load_study
from harness.data.core import Split
from harness.models.core import build_model, replace_head
from harness.run.records import Measurement, TrialRow
from harness.run.trial import source_accuracy
from harness.train.evaluation import evaluate
from studies.lora_forgetting import claims


def _source():
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(40, 1, 12, 12, generator=g), torch.randint(0, 3, (40,), generator=g))


def test_source_accuracy_reads_the_body_through_the_pretrained_head():
    torch.manual_seed(0)
    pretrained_model = build_model("vit_tiny", 1, 3, image_size=12).eval()
    pretrained = {k: v.clone() for k, v in pretrained_model.state_dict().items()}
    expected = evaluate(pretrained_model, _source())[0]
    model = replace_head(build_model("vit_tiny", 1, 3, image_size=12), 2)  # a target head
    model.load_state_dict({k: v for k, v in pretrained.items() if not k.startswith("head.")},
                          strict=False)
    # an untouched body (a probe) scores exactly the pretrained accuracy, the target head aside
    assert source_accuracy(model, pretrained, _source()) == expected
    assert model.head.out_features == 2 and model.training  # the model is left as it was
    with torch.no_grad():  # fine-tuning moved the body: the source task is scored on the new one
        for p in model.block1.parameters():
            p.add_(torch.randn_like(p))
    moved = source_accuracy(model, pretrained, _source())
    body = torch.nn.Sequential(model[:-1], torch.nn.Linear(64, 3)).eval()
    body[1].load_state_dict({"weight": pretrained["head.weight"], "bias": pretrained["head.bias"]})
    assert moved == evaluate(body, _source())[0]


def test_source_accuracy_is_a_trials_column_only_where_measured():
    base = {"run_id": "r", "study": "s", "cell": "c", "stage": "final", "trial": 0,
            "strategy": "lora", "budget": "all", "dataset": "mnist5k", "model": "vit_tiny",
            "device": "cpu", "execution": "eager", "status": "ok", "seed": 1000}
    with_it = TrialRow(**base, source_accuracy=0.9).to_dict()
    assert with_it["source_accuracy"] == 0.9
    assert TrialRow.from_dict(with_it).source_accuracy == 0.9
    assert "source_accuracy" not in TrialRow(**base).to_dict()


def _tables(ft_test, lora_test, ft_source, lora_source):
    rows, records = [], []
    for strategy, tests, sources in (("full_finetune", ft_test, ft_source),
                                     ("lora", lora_test, lora_source)):
        cell = f"cpu/mnist5k/vit_tiny/shots=all/{strategy}/eager"
        for i, (t, s) in enumerate(zip(tests, sources, strict=True)):
            rows.append({"cell": cell, "stage": "final", "trial": i, "seed": 1000 + i,
                         "strategy": strategy, "budget": "all", "status": "ok", "error": "",
                         "val_accuracy": t, "test_accuracy": t, "source_accuracy": s})
            m = Measurement("r", "lora_forgetting", cell, "final", i, "all", strategy, "mnist5k",
                            "vit_tiny", "all", "cpu", "eager", 1000 + i, "test", "accuracy", t,
                            "fraction", None, "ok")
            records += [m, dataclasses.replace(m, split="source", value=s),
                        dataclasses.replace(m, metric="examples", value=500.0, unit="count"),
                        dataclasses.replace(m, metric="examples", split="source", value=500.0,
                                            unit="count")]
    return RunTables(measurements_frame(records), pd.DataFrame(rows), pd.DataFrame(), {},
                     {"dataset": "mnist5k", "classes": [5, 6, 7, 8, 9]})


def _verdicts(*args):
    out = evaluate_claims("lora_forgetting", _tables(*args)).set_index("claim")
    return out["verdict"].to_dict()


def test_claims_pass_when_full_learns_more_and_lora_forgets_less():
    v = _verdicts([0.97, 0.975, 0.97], [0.90, 0.905, 0.90], [0.40, 0.42, 0.41], [0.80, 0.81, 0.80])
    assert v == {"full_finetuning_learns_more": "pass", "lora_forgets_less": "pass"}


def test_claims_fail_when_lora_learns_as_much_and_forgets_as_much():
    v = _verdicts([0.95, 0.955, 0.95], [0.95, 0.955, 0.95], [0.60, 0.61, 0.60], [0.60, 0.61, 0.60])
    assert v == {"full_finetuning_learns_more": "fail", "lora_forgets_less": "fail"}


def test_claims_are_undetermined_with_one_seed():
    v = _verdicts([0.97], [0.90], [0.40], [0.80])
    assert set(v.values()) == {"undetermined"}


def test_study_compares_full_finetuning_and_lora_on_the_pretrained_vit():
    spec = load_study("lora_forgetting")
    assert spec.strategies == ("full_finetune", "lora") and spec.model == "vit_tiny"
    assert spec.pretrain.model == "vit_tiny" and spec.pretrain.optimizer == "adamw"
    assert set(spec.pretrain.classes).isdisjoint(spec.classes)
    assert [c.name for c in claims()] == ["full_finetuning_learns_more", "lora_forgets_less"]


@pytest.mark.slow
def test_tiny_run_records_forgetting_for_every_final_run(tmp_path):
    """The real pipeline, shrunk: 8x8 digits, one pretraining epoch, one trial, two seeds."""
    from harness.pipeline import run_study

    spec = load_study("lora_forgetting")
    spec = dataclasses.replace(spec, dataset="digits", seeds=2, epochs=1, trials=1,
                               pretrain=dataclasses.replace(spec.pretrain, dataset="digits",
                                                            epochs=1))
    tables = load(run_study(spec, out_root=tmp_path, progress=False).run_dir)
    final = tables.trials[tables.trials["stage"] == "final"]
    assert (final["status"] == "ok").all() and len(final) == 4
    assert final["source_accuracy"].between(0, 1).all()
    assert tables.trials.loc[tables.trials["stage"] == "search", "source_accuracy"].isna().all()
    m = tables.measurements
    src = m[(m["metric"] == "accuracy") & (m["split"] == "source")]
    assert len(src) == 4 and set(src["stage"]) == {"final"}
    result = evaluate_claims("lora_forgetting", tables)
    assert list(result["claim"]) == [c.name for c in claims()]
    assert result["effect"].notna().all()


def test_compare_flags_more_forgetting_as_a_regression():
    from harness.analysis.compare import compare_runs

    base = _tables([0.97, 0.975, 0.97], [0.90, 0.905, 0.90], [0.60, 0.61, 0.60], [0.80, 0.81, 0.80])
    worse = _tables([0.97, 0.975, 0.97], [0.90, 0.905, 0.90], [0.40, 0.41, 0.40], [0.80, 0.81, 0.80])
    out = compare_runs(base, worse).set_index(["strategy", "split"])
    assert out.loc[("full_finetune", "source"), "verdict"] == "regression"
    assert out.loc[("full_finetune", "source"), "change"] == pytest.approx(-20.0)
    assert out.loc[("lora", "source"), "verdict"] == "within noise"
    assert out.loc[("full_finetune", "test"), "verdict"] == "within noise"
