"""The lp_ft_ood study (Kumar et al. 2022): its spec, feature distortion rows, and its claims."""

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from harness.analysis.claims import evaluate_claims
from harness.analysis.results import load
from harness.config.spec import load_study, spec_from_dict
from harness.data.core import Split
from harness.models.core import build_model, replace_head
from harness.run.preflight import check_runnable
from harness.run.trial import feature_distortion
from harness.train.pretrain import recipe_key
from studies.lp_ft_ood import LP, LPFT, claims, two_layer_simulation


def test_study_validates_with_its_data_and_pretrains_on_rotations():
    spec = check_runnable(load_study("lp_ft_ood"))
    assert set(spec.strategies) == {LP, "full_finetune", LPFT}
    assert spec.ood and all(name.startswith("rotate:") for name in spec.ood)
    assert spec.pretrain.augment == ("rotate:45",)
    # augmentation is part of the cache key: an unaugmented backbone is never reused
    assert recipe_key(spec.pretrain) != recipe_key(dataclasses.replace(spec.pretrain, augment=()))
    # a worker reads the spec back from the run's JSON manifest: same backbone
    again = spec_from_dict(json.loads(json.dumps(spec.to_dict())))
    assert recipe_key(again.pretrain) == recipe_key(spec.pretrain)


def test_two_layer_network_shows_the_papers_mechanism_fast():
    """Kumar et al.'s Sec. 3 on the two-layer linear network v^T B x: a test, not a claim, since
    it reads nothing of a run (as a claim it passed on any tables, even none)."""
    t0 = time.perf_counter()
    r = two_layer_simulation()
    assert time.perf_counter() - t0 < 1.0
    ratio, lpft_ratio = r["ft_ood"] / r["lp_ood"], r["lpft_ood"] / r["lp_ood"]
    # FT from a random head fits ID exactly, yet its OOD error is > 10x LP's in every draw
    assert (r["ft_id"] < 1e-12).all() and (r["lpft_id"] < 1e-12).all()
    assert (r["lp_id"] > r["ft_id"]).all() and (ratio > 10).all()
    assert (np.abs(np.log(lpft_ratio)) < np.log(1.5)).all()  # LP-FT keeps LP's OOD error
    assert (r["ft_change_ood"] < 1e-9).all()  # B moves only inside the ID subspace
    assert (r["lpft_change"] < r["ft_change"] / 5).all()


def test_the_two_layer_network_is_no_claim():
    assert "two_layer_linear_theory" not in [c.name for c in claims()]


def test_two_layer_simulation_is_deterministic():
    a, b = two_layer_simulation(draws=2, steps=50), two_layer_simulation(draws=2, steps=50)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_feature_distortion_is_zero_for_the_pretrained_backbone_and_relative():
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 3)
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}
    replace_head(model, 2)  # a new head does not change the features
    split = Split(torch.randn(20, 1, 12, 12), torch.zeros(20, dtype=torch.long))
    assert feature_distortion(model, pretrained, {"test": split}) == {"test": 0.0}
    with torch.no_grad():
        model.block3[0].weight.mul_(2.0)  # the top block's filters change
    moved = feature_distortion(model, pretrained, {"test": split})["test"]
    assert moved > 0
    assert model.training  # the caller's mode is restored


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from harness.pipeline import run_study

    spec = load_study("lp_ft_ood")
    spec = dataclasses.replace(spec, trials=1, seeds=2, epochs=2, budgets=(5,),
                               pretrain=dataclasses.replace(spec.pretrain, epochs=1))
    run = run_study(spec, out_root=tmp_path_factory.mktemp("runs"), progress=False)
    return spec, load(run.run_dir)


@pytest.mark.slow
def test_final_runs_record_feature_distortion_on_test_and_every_ood_set(tiny_run):
    spec, tables = tiny_run
    m = tables.measurements
    rows = m[m["metric"] == "feature_distortion"]
    assert set(rows["stage"]) == {"final"} and set(rows["unit"]) == {"fraction"}
    want = {"test", *(f"ood:{name}" for name in spec.ood)}
    for strategy in spec.strategies:
        mine = rows[rows["strategy"] == strategy]
        assert set(mine["split"]) == want and len(mine) == 2 * len(want), strategy
    # a probe never touches the backbone; fine-tuning does
    assert (rows[rows["strategy"] == LP]["value"] == 0).all()
    assert (rows[rows["strategy"] == "full_finetune"]["value"] > 0).all()


@pytest.mark.slow
def test_claims_evaluate_on_a_tiny_run(tiny_run):
    _, tables = tiny_run
    out = evaluate_claims("lp_ft_ood", tables).set_index("claim")
    assert list(out.index) == [c.name for c in claims()]
    assert set(out["verdict"]) <= {"pass", "fail", "undetermined"}
    # every check ran: an exception would be an undetermined verdict naming its type
    assert not out["detail"].str.contains("Error:").any(), out["detail"].to_dict()
    assert out["effect"].notna().all()
