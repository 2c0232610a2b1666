"""The text_finetune study: its spec, and a tiny run end to end with its claim evaluated."""

from dataclasses import replace

import pytest

from harness.config.spec import load_study
from harness.data.sources.text import PACKAGES, TARGET_PACKAGES
from harness.pipeline import run_study
from harness.run.preflight import check_runnable
from studies.text_finetune import LM_RECIPE


def test_study_pretrains_a_language_model_on_other_text_than_its_target_task():
    spec = check_runnable(load_study("text_finetune"))
    assert spec.pretrain.objective == "lm" and spec.dataset == "pystdlib_edits"
    assert {"linear_probe_lbfgs", "random_probe_lbfgs", "ulmfit", "progressive_unfreezing"} <= set(spec.strategies)
    source = {PACKAGES[c] for c in spec.pretrain.classes}
    assert source and not source & set(TARGET_PACKAGES)  # no target text in pretraining


@pytest.mark.slow
def test_tiny_run_ends_with_the_transfer_claim_decided(tmp_path):
    spec = replace(load_study("text_finetune"), pretrain=replace(LM_RECIPE, epochs=1, batch_size=256),
                   strategies=("linear_probe_lbfgs", "random_probe_lbfgs", "ulmfit"), budgets=(10,),
                   epochs=2, trials=1, seeds=2, val_per_class=10)
    run = run_study(spec, tmp_path, progress=False)
    t = run.claims.set_index("claim").loc["pretrained_probe_beats_random_probe"]
    assert t["verdict"] in {"pass", "fail", "undetermined"}
    finals = (run.run_dir / "trials.csv").read_text()
    assert "random_probe_lbfgs" in finals and "ulmfit" in finals
    # no forgetting rows: a language model's next-token head is not kept to measure it under
    m = run.run_dir / "measurements.csv"
    assert ",source," not in m.read_text()
