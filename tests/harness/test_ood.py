import pytest
import torch

from harness.config.spec import TrialConfig
from harness.data.ood import check_ood, parse_ood
from harness.data.task import load_task
from harness.errors import UserError
from harness.run.trial import TrialContext, run_trial

CLASSES = (5, 6, 7, 8, 9)
SHIFTS = ("rotate:30", "rotate:90", "rotate:0", "noise:0", "noise:0.5", "contrast:0.5",
          "contrast:1", "blur:1", "blur:0")


@pytest.fixture(scope="module")
def task():
    return load_task("mnist5k", CLASSES, shots=10, ood=(*SHIFTS, "digits", "mnist5k"))


@pytest.mark.parametrize("name", SHIFTS)
def test_shifts_keep_the_test_split_shape_and_labels(task, name):
    split = task.ood[name]
    assert split.x.shape == task.test.x.shape and split.x.dtype == torch.float32
    assert torch.equal(split.y, task.test.y)


@pytest.mark.parametrize("name", ["rotate:0", "noise:0", "contrast:1", "blur:0"])
def test_a_zero_shift_is_the_test_split(task, name):
    # grid sampling at the pixel centres is exact up to float rounding
    assert torch.allclose(task.ood[name].x, task.test.x, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["rotate:30", "noise:0.5", "contrast:0.5", "blur:1"])
def test_a_real_shift_changes_the_images(task, name):
    assert (task.ood[name].x - task.test.x).abs().mean() > 0.05


def test_rotate_90_is_a_counter_clockwise_quarter_turn(task):
    quarter = torch.rot90(task.test.x, 1, dims=(2, 3))
    assert torch.allclose(task.ood["rotate:90"].x, quarter, atol=1e-4, rtol=0)


def test_contrast_scales_each_images_deviation_from_its_mean(task):
    x, shifted = task.test.x, task.ood["contrast:0.5"].x
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(shifted - mean, 0.5 * (x - mean), atol=1e-5)


def test_noise_is_seeded_and_has_the_asked_std(task):
    again = load_task("mnist5k", CLASSES, shots=10, ood=("noise:0.5",))
    assert torch.equal(again.ood["noise:0.5"].x, task.ood["noise:0.5"].x)
    assert float((task.ood["noise:0.5"].x - task.test.x).std()) == pytest.approx(0.5, rel=0.02)


def test_the_task_own_dataset_as_ood_set_is_its_test_split(task):
    # same split indices, same relabelling: the dataset path picks exactly the test examples
    assert torch.equal(task.ood["mnist5k"].x, task.test.x)
    assert torch.equal(task.ood["mnist5k"].y, task.test.y)


def test_digits_as_a_domain_shift_of_mnist_has_its_test_split_resized_and_relabelled(task):
    split = task.ood["digits"]
    digits_task = load_task("digits", CLASSES)
    assert split.x.shape == (len(digits_task.test), 1, 28, 28)
    assert torch.equal(split.y, digits_task.test.y)  # same classes, relabelled 0..4 the same way
    assert torch.bincount(split.y).tolist() == torch.bincount(digits_task.test.y).tolist()
    assert abs(float(split.x.mean())) < 0.2 and 0.7 < float(split.x.std()) < 1.3


def test_ood_sets_follow_the_split_seed():
    a = load_task("digits", (0, 1, 2), ood=("digits",), split_seed=1)
    assert torch.equal(a.ood["digits"].x, a.test.x)


@pytest.mark.parametrize("names, match", [
    (("bogus",), "unknown OOD set 'bogus'; use a dataset"),
    (("rotate",), "'rotate' needs a finite number"),
    (("rotate:abc",), "blur:SIGMA, contrast:FACTOR, noise:STD, rotate:DEG"),
    (("rotate:nan",), "needs a finite number"),
    (("noise:-1",), "noise >= 0"),
    (("contrast:-0.5",), "'contrast:-0.5'"),
    (("blur:-1",), "'blur:-1'"),
    (("noise:1", "noise:1"), "names \\['noise:1'\\] more than once"),
    ("rotate:30", "must be a list of names"),
])
def test_bad_ood_names_say_what_is_accepted(names, match):
    with pytest.raises(UserError, match=match) as err:
        load_task("digits", (0, 1, 2), ood=names)
    assert "\n" not in str(err.value)


def test_parse_ood_reads_shifts_and_datasets():
    assert parse_ood("noise:0.5") == ("noise", 0.5)
    assert parse_ood("rotate:-15") == ("rotate", -15.0)
    assert parse_ood("digits") == ("digits", None)
    check_ood(("digits", "blur:2"))  # no error


def _cfg(stage, **kw):
    return TrialConfig("t", "c", stage, 0, 1000 if stage == "final" else 0, "full_finetune",
                       {"lr": 0.05, "weight_decay": 0.0}, "digits", (0, 1, 2), 10, epochs=1,
                       batch_size=10, **kw)


@pytest.fixture(scope="module")
def trial_ctx():
    return TrialContext("r", load_task("digits", (0, 1, 2), 10, ood=("rotate:30", "noise:1")))


def test_a_final_trial_records_accuracy_on_every_ood_set(trial_ctx):
    res = run_trial(_cfg("final", ood=("rotate:30", "noise:1")), trial_ctx)
    assert res.status == "ok", res.error
    rows = {r.split: r for r in res.records if r.split.startswith("ood:") and r.metric == "accuracy"}
    assert set(rows) == {"ood:rotate:30", "ood:noise:1"}
    assert all(r.metric == "accuracy" and r.unit == "fraction" and 0 <= r.value <= 1
               for r in rows.values())
    assert res.ood_accuracy == {k.removeprefix("ood:"): r.value for k, r in rows.items()}


def test_a_search_trial_never_touches_test_or_ood(trial_ctx):
    res = run_trial(_cfg("search", ood=("rotate:30", "noise:1")), trial_ctx)
    assert res.status == "ok", res.error
    assert not [r for r in res.records if r.split == "test" or r.split.startswith("ood:")]
    assert res.ood_accuracy == {} and res.test_accuracy is None


def test_a_final_trial_asking_for_an_ood_set_its_task_lacks_fails_with_the_reason(trial_ctx):
    res = run_trial(_cfg("final", ood=("blur:1",)), trial_ctx)
    assert res.status == "failed" and "OOD sets ['blur:1'] that its task lacks" in res.error
