import math

import pytest
import torch
import torch.nn.functional as F

from harness.data.core import Split
from harness.measure.memory import release_free_memory
from harness.models.core import blocks, build_model
from harness.train.loop import LoopConfig, NonFiniteLossError, cosine, train
from harness.train.phases import apply_phase
from harness.train.strategy import Optimizer, Phase, Plan


def _tiny_problem(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return Split(x, y)


def _reference_losses(model, data, cfg):
    """A hand-written loop: what loop.train promises to do, written out without the harness."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=Optimizer().momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    n, bs = len(data), min(cfg.batch_size, len(data))
    total, step, losses = (n // bs) * cfg.epochs, 0, []
    for _ in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(n // bs):
            idx = perm[i * bs:(i + 1) * bs]
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
    return losses


def _probe_then_finetune():
    """64 tiny examples, a fresh seeded model, and a plan: head only in epoch 0, everything after."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 2)
    plan = Plan((Phase("probe", 0, ("head",), "eval"), Phase("ft", 1, tuple(blocks(model)), "train")))
    return _tiny_problem(n=64), model, plan


def test_loop_reproduces_a_hand_written_reference_loop():
    data = _tiny_problem()
    cfg = LoopConfig(epochs=4, batch_size=16, lr=0.05, weight_decay=1e-4, seed=3)
    torch.manual_seed(0)
    ref_model = build_model("small_cnn", 1, 2)
    model = build_model("small_cnn", 1, 2)
    model.load_state_dict(ref_model.state_dict())
    expected = _reference_losses(ref_model, data, cfg)
    plan = Plan((Phase("finetune", 0, tuple(blocks(model)), "train"),))
    got = train(model, plan, data, data, cfg).step_losses
    assert len(got) == len(expected) == 4 * 2  # 40 samples, batch 16: the partial batch is dropped
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert expected[0] != pytest.approx(expected[-1])  # it really trained


def test_frozen_blocks_and_their_batchnorm_buffers_stay_bitwise_unchanged():
    data = _tiny_problem()
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = Plan((Phase("probe", 0, ("head",), "eval"),))
    train(model, plan, data, data, LoopConfig(epochs=2, batch_size=8, lr=0.1))
    after = model.state_dict()
    for k, v in before.items():
        if k.startswith("head."):
            assert not torch.equal(v, after[k]), k
        else:
            assert torch.equal(v, after[k]), k


def test_lr_scale_multiplies_the_scheduled_lr_of_its_group():
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 2)
    phase = Phase("ft", 0, ("block3", "head"), "train", lr_scale={"block3": 0.25})
    groups = {g["block"]: g for g in apply_phase(model, phase)}
    assert set(groups) == {"block3", "head"}
    assert groups["block3"]["lr_scale"] == 0.25 and groups["head"]["lr_scale"] == 1.0
    assert not any(p.requires_grad for p in model.stem.parameters())


def test_non_finite_loss_stops_the_run_with_a_clear_error():
    clean = _tiny_problem()
    x = clean.x.clone()
    x[5, 0, 0, 0] = float("nan")  # one corrupt pixel poisons BatchNorm and then every weight
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 2)
    plan = Plan((Phase("ft", 0, tuple(blocks(model)), "train"),))
    with pytest.raises(NonFiniteLossError, match="training loss became nan in epoch 0"):
        train(model, plan, Split(x, clean.y), clean, LoopConfig(epochs=3, batch_size=8))


def test_throughput_excludes_warmup_steps_per_phase():
    data, model, plan = _probe_then_finetune()
    res = train(model, plan, data, data, LoopConfig(epochs=3, batch_size=8, warmup_steps=2))
    assert res.throughput["probe"].timed_steps == 8 - 2
    assert res.throughput["ft"].timed_steps == 16 - 2
    assert res.throughput["all"].timed_steps == 6 + 14 and res.throughput["all"].warmup_steps == 4
    assert [e.phase for e in res.epochs] == ["probe", "ft", "ft"]


def test_cosine_goes_from_one_to_zero():
    assert cosine(0) == 1 and cosine(1) == pytest.approx(0) and cosine(0.5) == pytest.approx(0.5)




def test_step_parts_add_up_to_the_step_and_optimizer_state_is_the_momentum():
    data, model, plan = _probe_then_finetune()
    res = train(model, plan, data, data, LoopConfig(epochs=2, batch_size=8))
    for name, st in res.phases.items():
        parts = [f + b + o for f, b, o in zip(st.forward_s, st.backward_s, st.optimizer_s, strict=True)]
        assert all(0 < p <= s * 1.001 for p, s in zip(parts, st.step_seconds, strict=True)), name
        assert all(d >= 0 for d in st.data_s)
    head_bytes = sum(p.numel() * 4 for p in model.head.parameters())
    all_bytes = sum(p.numel() * 4 for p in model.parameters())
    # SGD with momentum keeps one buffer per trained parameter, for this phase's parameters only
    assert res.phases["probe"].optimizer_state_bytes == head_bytes
    assert res.phases["ft"].optimizer_state_bytes == all_bytes
    assert res.phases["probe"].train_flops_per_sample < res.phases["ft"].train_flops_per_sample


def test_each_phase_has_its_own_peak_memory_and_epochs_carry_training_time():
    data, model, plan = _probe_then_finetune()
    res = train(model, plan, data, data, LoopConfig(epochs=3, batch_size=8))
    assert all(st.memory.peak_bytes > 0 for st in res.phases.values())
    times = [e.train_seconds for e in res.epochs]
    assert times == sorted(times) and times[0] > 0
    steps = sum(sum(st.step_seconds) for st in res.phases.values())
    assert times[-1] == pytest.approx(steps)  # no feature caching here: the steps are the time


def test_phase_peaks_are_reset_between_phases():
    """A 256 MiB allocation during the first phase shows in its peak and not in the next one's."""
    data, model, plan = _probe_then_finetune()

    def allocate_in_epoch_0(rec):
        if rec.epoch == 0:
            big = torch.ones(2**26)  # 256 MiB, touched, then freed
            del big

    # as run_trial does: memory freed by earlier tests must not hand the allocation resident pages
    release_free_memory()
    res = train(model, plan, data, data, LoopConfig(epochs=2, batch_size=8), on_epoch=allocate_in_epoch_0)
    probe, ft = res.phases["probe"].memory, res.phases["ft"].memory
    assert probe.increase_bytes >= 0.9 * 2**28
    assert ft.increase_bytes < 0.5 * 2**28
