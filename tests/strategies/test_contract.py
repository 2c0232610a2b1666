"""Strategy contract v2: a strategy may change the model and the optimizer, never silently."""

import math
from itertools import pairwise

import pytest
import torch
from lora_example import LoRA  # beside this file (pytest puts its folder on sys.path)

from harness.data.core import Split
from harness.models.core import build_model
from harness.train.loop import LoopConfig, StaleGraphError, train
from harness.train.strategy import (
    Optimizer,
    Phase,
    Plan,
    PlanError,
    Strategy,
    build_plan,
    lr_factor,
)


def _data(n=36):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 12, 12, generator=g)
    return Split(x, (x.mean(dim=(1, 2, 3)) > 0).long())


def _train(strategy, hp=None, epochs=3, name="lora_example"):
    hp = {"lr": 0.05, "weight_decay": 1e-4, "rank": 2, **(hp or {})}
    torch.manual_seed(0)
    model, plan = build_plan(name, strategy, build_model("small_cnn", 1, 2), hp, epochs)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    res = train(model, plan, _data(), _data(), LoopConfig(epochs=epochs, batch_size=8, lr=hp["lr"],
                                                          weight_decay=hp["weight_decay"]))
    return model, plan, before, res


def test_lora_written_as_one_file_trains_exactly_its_adapters_and_the_head():
    model, _plan, before, res = _train(LoRA())
    params = dict(model.named_parameters())
    changed = {k for k in params if not torch.equal(before[k], params[k].detach())}
    adapters = {k for k in params if ".lora_A." in k or ".lora_B." in k}
    assert len(adapters) == 8  # an A and a B on each of the backbone's four convolutions
    assert changed == adapters | {"head.weight", "head.bias"}
    # the wrapped convolutions and every BatchNorm buffer stay bitwise as they were
    for k, v in model.state_dict().items():
        if k not in changed:
            assert torch.equal(before[k], v), k
    assert all(math.isfinite(e.train_loss) for e in res.epochs)


def test_lora_starts_from_the_unwrapped_models_outputs():
    torch.manual_seed(0)
    plain = build_model("small_cnn", 1, 2).eval()
    torch.manual_seed(0)
    wrapped = LoRA().prepare(build_model("small_cnn", 1, 2), {"rank": 2}).eval()
    x = _data().x
    assert torch.equal(plain(x), wrapped(x))  # B starts at zero


class _Mistyped(LoRA):
    patterns = ("*.lora_a.*", "*.lora_B.*")  # lower-case a: matches nothing


def test_a_pattern_that_matches_no_parameter_fails_loudly_naming_strategy_phase_and_pattern():
    with pytest.raises(PlanError) as e:
        _train(_Mistyped(), name="lora_typo")
    msg = str(e.value)
    assert "\n" not in msg
    assert "strategy 'lora_typo'" in msg and "phase 'lora'" in msg and "'*.lora_a.*'" in msg


class _Dead(LoRA):
    use_adapter = False  # the adapters exist and are selected, but the forward never calls them


def test_an_adapter_the_forward_never_calls_is_an_error_not_a_silent_probe():
    with pytest.raises(StaleGraphError, match=r"strategy 'lora_dead' phase 'lora'.*lora_A"):
        _train(_Dead(), name="lora_dead")


def test_the_suffix_selector_of_the_first_contract_is_gone():
    """The trap the issue found: LoRA names given where only block suffixes were understood."""
    with pytest.raises(TypeError):
        Phase("p", 0, ("head",), param_suffixes={"stem": ("lora_A",)})


@pytest.mark.parametrize("schedule", ["cosine", "warmup_cosine", "constant", "slanted_triangular"])
def test_schedules_have_their_shapes(schedule):
    opt = Optimizer(schedule=schedule, warmup=0.2, cut_frac=0.1, ratio=32.0)
    f = [lr_factor(opt, p / 100) for p in range(101)]
    if schedule == "cosine":
        assert f[0] == 1.0 and f[100] == pytest.approx(0.0, abs=1e-12) and f[50] == pytest.approx(0.5)
    elif schedule == "constant":
        assert set(f) == {1.0}
    elif schedule == "warmup_cosine":
        assert f[0] == 0.0 and f[10] == pytest.approx(0.5) and f[20] == pytest.approx(1.0)
        assert all(a <= b for a, b in pairwise(f[:21]))  # rises during warm-up
        assert all(a >= b for a, b in pairwise(f[20:]))  # then only falls
    else:  # Howard & Ruder 2018, eq. 3: from peak/ratio up to the peak at cut_frac, then down
        assert f[0] == pytest.approx(1 / 32) and f[10] == pytest.approx(1.0)
        assert f[100] == pytest.approx(1 / 32) and max(f) == f[10]


def test_adamw_is_data_of_the_plan_and_its_state_is_measured():
    class AdamWFull(Strategy):
        def plan(self, blocks, hp, epochs):
            return Plan((Phase("ft", 0, tuple(blocks), "train",
                               optimizer=Optimizer("adamw", "warmup_cosine", warmup=0.1)),))

    seen = []

    def spy(step, opt):
        seen.append(type(opt).__name__)

    torch.manual_seed(0)
    model, plan = build_plan("adamw_full", AdamWFull(), build_model("small_cnn", 1, 2),
                             {"lr": 1e-3}, 2)
    res = train(model, plan, _data(), _data(), LoopConfig(epochs=2, batch_size=8, lr=1e-3),
                on_step=spy)
    assert set(seen) == {"AdamW"}
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # two moments per parameter (and a step counter each): at least twice the weights
    assert res.phases["ft"].optimizer_state_bytes >= 2 * param_bytes
    assert res.epochs[0].lr < 1e-3  # the first epoch's first step is inside the warm-up


def test_a_bad_optimizer_or_schedule_is_a_plan_error():
    for opt in (Optimizer("adam"), Optimizer(schedule="linear"), Optimizer(warmup=1.0)):
        plan = Plan((Phase("p", 0, ("head",), "eval", optimizer=opt),))
        with pytest.raises(PlanError):
            plan.validate(["stem", "head"], 2)


def _space(name):
    import optuna

    from harness.registry import STRATEGIES

    trial = optuna.create_study().ask()
    STRATEGIES.get(name)().search_space(trial)
    return trial.distributions


@pytest.mark.parametrize("name", ["full_finetune", "finetune_adamw", "linear_probe", "ulmfit"])
def test_weight_decays_bottom_edge_is_no_decay_in_effect(name):
    """A strategy's ``limits`` say weight decay's bottom is the "off" end of its range, so a best
    config there is not flagged. True only while the decay it applies is negligible: the largest
    lr times the smallest decay, over the longest run the shipped studies train (a few thousand
    steps), shrinks the weights by under 1%; a range whose bottom is 1e-4 fails here."""
    from harness.registry import STRATEGIES

    space = _space(name)
    assert STRATEGIES.get(name).limits.get("weight_decay") == "bottom"
    lr, wd = space["lr"].high, space["weight_decay"].low
    assert lr * wd * 3000 < 1e-2  # < 1% shrinkage at the highest lr, in the worst case


def test_a_run_at_weight_decays_bottom_trains_as_one_without_decay():
    """The same seed with weight_decay 1e-6 and 0 ends at the same losses (to 1e-4 relative),
    where 1e-2 (the range's top) visibly differs: the bottom edge is "off", not a guess."""
    strategy = type("FT", (Strategy,), {"plan": lambda self, blocks, hp, epochs: Plan((
        Phase("ft", 0, trainable=tuple(blocks)),))})()
    losses = {wd: _train(strategy, {"weight_decay": wd}, epochs=12, name="ft")[3].step_losses
              for wd in (0.0, 1e-6, 1e-2)}
    assert losses[1e-6] == pytest.approx(losses[0.0], rel=1e-4)
    assert losses[1e-2] != pytest.approx(losses[0.0], rel=1e-3)
