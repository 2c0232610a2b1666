"""The claims of eager_vs_compiled, judged on hand-built tables (the study itself compiles for minutes)."""

import pandas as pd
import pytest

from harness.analysis.claims import evaluate_claims
from harness.analysis.results import RunTables
from harness.analysis.tables import measurements_frame
from harness.registry import STUDIES
from harness.run.records import Measurement


def _tables(compiled_acc: float, device: str = "cpu") -> RunTables:
    rows = []
    for execution, acc in (("eager", 0.90), ("compile", compiled_acc)):
        base = Measurement(run_id="r", study="eager_vs_compiled", cell=f"{device}/m/small_cnn/{execution}",
                           stage="final", trial=0, phase="all", strategy="full_finetune",
                           dataset="mnist5k", model="small_cnn", budget="all", device=device,
                           execution=execution, seed=1000, split="test", metric="accuracy",
                           value=acc, unit="fraction", epoch=None, status="ok")
        rows.append(base)
        if execution == "compile":
            rows.append(Measurement(**{**base.__dict__, "stage": "search", "split": "train",
                                       "metric": "compile_steps_s", "value": 12.0, "unit": "s",
                                       "phase": "finetune"}))
    m = measurements_frame(rows)
    trials = pd.DataFrame({"cell": m["cell"].unique(), "execution": ["eager", "compile"]})
    return RunTables(m, trials, pd.DataFrame(), {}, {"name": "eager_vs_compiled"})


def test_the_study_compares_two_models_and_validates():
    spec = STUDIES.get("eager_vs_compiled")().validate()
    assert spec.models == ("small_cnn", "resnet_small") and set(spec.executions) == {"eager", "compile"}


def test_agreement_passes_within_half_a_point_and_fails_beyond():
    ok = evaluate_claims("eager_vs_compiled", _tables(0.902)).set_index("claim")
    assert ok.loc["compiled_matches_eager", "verdict"] == "pass"
    # the GPU speedup is no claim about a CPU run, and does not count against --check
    assert ok.loc["training_speedup_on_gpu", "verdict"] == "not applicable"
    bad = evaluate_claims("eager_vs_compiled", _tables(0.88)).set_index("claim")
    assert bad.loc["compiled_matches_eager", "verdict"] == "fail"
    assert bad.loc["compiled_matches_eager", "effect"] == pytest.approx(2.0)


def test_compile_time_is_the_harness_s_report_not_a_claim():
    """Recording compile time is the harness's job (a test), not a finding of the paper (a claim)."""
    from harness.analysis.tables import execution_comparison

    claims = evaluate_claims("eager_vs_compiled", _tables(0.9))["claim"].tolist()
    assert "compile_time_reported" not in claims
    m = _tables(0.9).measurements
    m = pd.concat([m, m[m["metric"] == "accuracy"].assign(metric="samples_per_s", value=100.0,
                                                            split="train", unit="samples/s")])
    cmp = execution_comparison(m).set_index("execution")
    # the compiled cell's cold compile time: its first search trial's compiling steps
    assert cmp.loc["compile", "cold_compile_s"] == pytest.approx(12.0)
    assert cmp.loc["eager", "cold_compile_s"] == 0.0


def test_speedup_on_a_cuda_run_whose_compiled_cells_all_failed_is_undetermined():
    t = _tables(0.9, device="cuda")
    m = t.measurements
    compiled = m["execution"] == "compile"
    m = m.assign(status=m["status"].where(~compiled, "failed"))
    trials = t.trials.assign(device="cuda", status=["ok", "failed"])
    out = evaluate_claims("eager_vs_compiled", RunTables(m, trials, t.summary, {}, t.spec))
    row = out.set_index("claim").loc["training_speedup_on_gpu"]
    assert row["verdict"] == "undetermined" and "compiled CUDA cells" in row["detail"]
