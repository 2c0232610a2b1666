import multiprocessing

import pytest
import torch

from harness.data.core import Split
from harness.data.feed import EpochBatches, TrainFeed
from harness.data.task import load_task
from harness.errors import UserError
from harness.models.core import blocks, build_model
from harness.train.evaluation import evaluate
from harness.train.loop import LoopConfig, train
from harness.train.strategy import Phase, Plan


def _problem(n=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return Split(x, (x.mean(dim=(1, 2, 3)) > 0).long())


def _run(loader, workers, plan_kind="probe_then_ft", on_epoch=None):
    """Train a fresh seeded model; a cached-feature probe epoch, then fine-tuning."""
    data = _problem()
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 2)
    if plan_kind == "lbfgs":
        probe = Phase("probe", 0, ("head",), "eval", cache_features=True, solver="lbfgs")
    else:
        probe = Phase("probe", 0, ("head",), "eval", cache_features=True)
    plan = Plan((probe, Phase("ft", 1, tuple(blocks(model)), "train")))
    cfg = LoopConfig(epochs=3, batch_size=16, lr=0.05, seed=3, loader=loader, loader_workers=workers)
    return train(model, plan, data, data, cfg, on_epoch), model


@pytest.fixture(scope="module")
def resident():
    return _run("resident", 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_draws_the_resident_batches_step_for_step(resident, workers):
    loaded, _ = _run("dataloader", workers)
    want, got = resident[0].step_losses, loaded.step_losses
    assert len(got) == len(want) == 3 * 4  # 70 examples, batch 16: the partial batch is dropped
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert [e.val_accuracy for e in loaded.epochs] == [e.val_accuracy for e in resident[0].epochs]
    assert len(loaded.phases["ft"].data_s) == 8 and all(d >= 0 for d in loaded.phases["ft"].data_s)


def test_an_lbfgs_epoch_draws_no_batches_and_keeps_the_two_paths_in_step():
    # the L-BFGS epoch takes no steps, yet both paths draw its permutation: later epochs agree
    want, got = _run("resident", 0, "lbfgs")[0], _run("dataloader", 0, "lbfgs")[0]
    assert got.step_losses == pytest.approx(want.step_losses, rel=1e-6, abs=1e-6)
    assert len(got.step_losses) == 8


def test_dataloader_workers_are_stopped_when_training_ends():
    before = set(multiprocessing.active_children())
    during = []
    _run("dataloader", 2, on_epoch=lambda rec: during.append(set(multiprocessing.active_children())))
    # the cached-feature epoch 0 loads nothing; the fine-tuning epochs run two persistent workers
    assert [len(d - before) for d in during] == [0, 2, 2]
    assert set(multiprocessing.active_children()) <= before


def test_epoch_batches_are_consecutive_full_slices_of_the_permutation():
    sampler = EpochBatches(batch_size=4, steps=2)
    sampler.perm = torch.tensor([9, 3, 0, 7, 1, 2, 8, 4, 6, 5])
    assert [b.tolist() for b in sampler] == [[9, 3, 0, 7], [1, 2, 8, 4]] and len(sampler) == 2


def test_feed_yields_the_same_batches_on_both_paths():
    data = _problem(n=10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    a = list(TrainFeed(data.x, data.y, 3, 3, "cpu", "resident").epoch(perm))
    b = list(TrainFeed(data.x, data.y, 3, 3, "cpu", "dataloader", 0).epoch(perm))
    assert len(a) == len(b) == 3
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))


def test_a_dataloader_task_keeps_cpu_tensors_and_evaluates_on_the_model_device():
    task = load_task("digits", (0, 1, 2), 10, loader="dataloader", ood=("noise:0.1",))
    assert task.train.x.device.type == "cpu" and task.device == "cpu"
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 3).to(task.device)
    assert evaluate(model, task.test) == evaluate(model, load_task("digits", (0, 1, 2), 10).test)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_dataloader_splits_are_pinned_and_losses_match():
    task = load_task("digits", (0, 1, 2), 20, "cuda", loader="dataloader")
    assert task.train.x.is_pinned() and task.device == "cuda"
    results = []
    for loader in ("resident", "dataloader"):
        torch.manual_seed(0)
        model = build_model("small_cnn", 1, 3).cuda()
        plan = Plan((Phase("ft", 0, tuple(blocks(model)), "train"),))
        cfg = LoopConfig(epochs=2, batch_size=16, loader=loader, loader_workers=2)
        results.append(train(model, plan, task.train, task.val, cfg).step_losses)
    assert results[1] == pytest.approx(results[0], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"loader": "stream"}, "loader must be one of \\('resident', 'dataloader'\\), but got 'stream'"),
    ({"loader_workers": -1}, "loader_workers must be an integer >= 0, but got -1"),
])
def test_bad_loader_settings_say_what_was_wrong(kwargs, match):
    data = _problem(n=16)
    model = build_model("small_cnn", 1, 2)
    plan = Plan((Phase("ft", 0, tuple(blocks(model)), "train"),))
    with pytest.raises(UserError, match=match):
        train(model, plan, data, data, LoopConfig(epochs=1, batch_size=8, **kwargs))


def test_load_task_rejects_an_unknown_loader():
    with pytest.raises(UserError, match="but got 'memmap'"):
        load_task("digits", (0, 1, 2), loader="memmap")
