"""Every registered strategy under every execution, tested without editing this file.

Executions: ``eager`` and ``compile:default@aot_eager`` (real dynamo graph capture and AOT
autograd, fast enough for every strategy); inductor, the default compiler, under the ``slow``
mark for the multi-phase strategies where stale graphs would bite.
"""

import fnmatch
import math

import optuna
import pytest
import torch
from lora_example import LoRA  # beside this file (pytest puts its folder on sys.path)

from harness.config.execution import parse_execution
from harness.data.core import Split
from harness.models.core import blocks, build_model
from harness.registry import STRATEGIES
from harness.train.loop import LoopConfig, train
from harness.train.strategy import BN_MODES, build_plan, lr_factor

# the registry, and strategy files that exist to test the contract (a hand-written LoRA whose
# prepare() adds parameters): every check below runs on each of them
CONTRACT_EXAMPLES = {"lora_example": LoRA}
NAMES = STRATEGIES.names() + sorted(CONTRACT_EXAMPLES)


def _strategy(name):
    return CONTRACT_EXAMPLES[name]() if name in CONTRACT_EXAMPLES else STRATEGIES.get(name)()
EPOCHS = 4
FAST_EXECUTIONS = ["eager", "compile:default@aot_eager"]


def _data(n=36, seed=0, size=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    return Split(x, (x.mean(dim=(1, 2, 3)) > 0).long())


def _test_model(name):
    """(model, image size): small_cnn, or the tiny model a strategy names for itself in
    ``test_model`` (VeRA adapts only Linear layers, which small_cnn's backbone lacks)."""
    return getattr(_strategy(name), "test_model", ("small_cnn", 12))


def _model(name):
    model, size = _test_model(name)
    return build_model(model, 1, 2, image_size=size)


def _hp(name, seed=0, **fixed):
    """Hyperparameters drawn from the strategy's own search space, with a learning rate that moves.

    Gradual unfreezing gets one block per epoch, so short runs still go through several phases.
    """
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    hp = _strategy(name).search_space(study.ask())
    if hp["lr"] > 0:
        hp["lr"] = 0.05
    if "unfreeze_every" in hp:
        hp["unfreeze_every"] = 1
    hp.update(fixed)
    return hp


def _expected_trainable(model, phase):
    """Parameter names the phase must train, derived from the Phase's fields alone: every
    parameter of its blocks and every one whose full name matches a pattern, less frozen BN."""
    out = set()
    for block, module in model.named_children():
        for mod_name, mod in module.named_modules():
            is_bn = isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
            for pname, _ in mod.named_parameters(recurse=False):
                full = ".".join(x for x in (block, mod_name, pname) if x)
                if phase.bn_mode == "frozen" and is_bn:
                    continue
                if block in phase.trainable or any(fnmatch.fnmatchcase(full, p) for p in phase.params):
                    out.add(full)
    return out


def _run(name, execution, epochs=EPOCHS, seed=0, data=None, on_step=None, **fixed):
    if parse_execution(execution).compile:
        torch._dynamo.reset()
    torch.manual_seed(seed)
    model = _model(name)
    hp = _hp(name, **fixed)
    model, plan = build_plan(name, _strategy(name), model, hp, epochs)
    snapshots = [{k: v.detach().clone() for k, v in model.state_dict().items()}]
    data = data or _data(size=_test_model(name)[1])
    cfg = LoopConfig(epochs=epochs, batch_size=8, lr=hp["lr"], seed=seed,
                     weight_decay=hp["weight_decay"], execution=parse_execution(execution))
    res = train(model, plan, data, data, cfg,
                on_epoch=lambda rec: snapshots.append(
                    {k: v.detach().clone() for k, v in model.state_dict().items()}),
                on_step=on_step)
    return model, plan, hp, res, snapshots, cfg


@pytest.mark.parametrize("name", NAMES)
def test_search_space_has_lr_and_weight_decay(name):
    hp = _hp(name)
    assert hp["lr"] >= 0 and hp["weight_decay"] >= 0


@pytest.mark.parametrize("name", NAMES)
def test_plan_is_valid_and_bn_mode_is_explicit(name):
    for seed in range(3):
        _, plan = build_plan(name, _strategy(name), _model(name), _hp(name, seed), epochs=10)
        assert all(p.bn_mode in BN_MODES for p in plan.phases)
        assert plan.bn_modes.split(">") == [p.bn_mode for p in plan.phases]


def _check_exact_updates(model, plan, res, snapshots):
    """In each epoch exactly the parameters of that epoch's phase change; buffers follow BN mode."""
    params = {k for k, _ in model.named_parameters()}
    assert [e.phase for e in res.epochs] == [plan.phase_at(e).name for e in range(len(res.epochs))]
    for epoch in range(len(res.epochs)):
        phase = plan.phase_at(epoch)
        expected = _expected_trainable(model, phase)
        if phase.solver == "lbfgs" and epoch != phase.start_epoch:
            expected = set()  # fitted once at the phase's start; its later epochs take no steps
        before, after = snapshots[epoch], snapshots[epoch + 1]
        changed = {k for k in params if not torch.equal(before[k], after[k])}
        assert changed == expected, f"epoch {epoch} phase {phase.name}: changed {sorted(changed ^ expected)}"
        for k in before:
            if k.endswith(("running_mean", "running_var")):
                block = k.split(".")[0]
                moves = phase.bn_mode == "train" and block in phase.trainable
                assert (not torch.equal(before[k], after[k])) == moves, f"epoch {epoch}: {k}"


@pytest.mark.parametrize("execution", FAST_EXECUTIONS)
@pytest.mark.parametrize("name", NAMES)
def test_each_epoch_trains_exactly_what_its_phase_names(name, execution):
    """Frozen parameters bitwise unchanged; every parameter of the phase changed; unfreezing on time."""
    model, plan, _, res, snapshots, _ = _run(name, execution)
    assert len(res.epochs) == EPOCHS and all(math.isfinite(e.train_loss) for e in res.epochs)
    _check_exact_updates(model, plan, res, snapshots)
    assert all(st.timed_recompiles == 0 for st in res.phases.values())


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_lp_ft_fine_tunes_from_either_probe(solver):
    extra = {"C": 1.0} if solver == "lbfgs" else {"probe_lr_scale": 10.0}
    model, plan, _, res, snapshots, _ = _run("lp_ft", "eager", probe_solver=solver, **extra)
    assert [p.name for p in plan.phases] == ["probe", "finetune"]
    assert plan.phases[0].solver == solver
    _check_exact_updates(model, plan, res, snapshots)


def test_gradual_unfreezing_opens_one_block_per_epoch():
    model, plan, _, res, snapshots, _ = _run("progressive_unfreezing", "eager", epochs=5)
    assert [len(p.trainable) for p in plan.phases] == [1, 2, 3, 4, 5]
    assert [p.start_epoch for p in plan.phases] == [0, 1, 2, 3, 4]
    _check_exact_updates(model, plan, res, snapshots)


def _phases(name) -> int:
    model = _model(name)
    return len(build_plan(name, _strategy(name), model, _hp(name), EPOCHS)[1].phases)


# inductor where stale graphs bite (a strategy with several phases), and on the two adapters
# that swap layers in prepare() (peft's LoRA and the hand-written one); a one-phase strategy's
# graph capture is checked under aot_eager above, at a fraction of inductor's compile
INDUCTOR = [n for n in NAMES if n in ("lora", "lora_example") or _phases(n) > 1]


@pytest.mark.slow
@pytest.mark.parametrize("name", INDUCTOR)
def test_inductor_trains_what_each_phase_unfroze(name):
    """The stale-graph trap with the real default compiler: newly unfrozen blocks must train."""
    model, plan, _, res, snapshots, _ = _run(name, "compile", epochs=3)
    _check_exact_updates(model, plan, res, snapshots)
    compiled_phases = [p for p in plan.phases if not p.cache_features]
    assert all(res.phases[p.name].graphs_compiled >= 1 for p in compiled_phases)
    assert all(st.timed_recompiles == 0 for st in res.phases.values())


@pytest.mark.parametrize("name", NAMES)
def test_effective_lr_is_base_times_scale_times_schedule_at_every_step(name):
    seen = []
    model, plan, hp, _res, _, _cfg = _run(name, "eager", on_step=lambda s, opt: seen.append(
        (s, [(g["block"], g["lr"], g["lr_scale"]) for g in opt.param_groups])))
    total = (36 // 8) * EPOCHS
    steps_per_epoch = 36 // 8
    lbfgs_only = all(p.solver == "lbfgs" for p in plan.phases)
    assert bool(seen) != lbfgs_only  # every SGD step was observed; an lbfgs probe takes none
    for step, groups in seen:
        phase = plan.phase_at(step // steps_per_epoch)
        # one group per block that has parameters to train in this phase, in block order
        expected = _expected_trainable(model, phase)
        assert [b for b, _, _ in groups] == [
            b for b in blocks(model) if any(n.split(".")[0] == b for n in expected)]
        if phase.span == "phase":
            first = phase.start_epoch * steps_per_epoch
            span = (plan.end_epoch(phase, EPOCHS) - phase.start_epoch) * steps_per_epoch
            progress = (step - first) / span
        else:
            progress = step / total
        for block, lr, scale in groups:
            assert scale == phase.scale(block)
            assert lr == pytest.approx(
                hp["lr"] * phase.scale(block) * lr_factor(phase.optimizer, progress), rel=1e-12)


def test_discriminative_scales_decay_from_the_head():
    model = build_model("small_cnn", 1, 2)
    plan = STRATEGIES.get("discriminative_lr")().plan(blocks(model), {"lr": 0.1, "lr_decay": 0.5}, 5)
    assert [plan.phases[0].scale(b) for b in blocks(model)] == [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1]


def test_unfreezing_follows_a_schedule_given_as_data():
    model = build_model("small_cnn", 1, 2)
    plan = STRATEGIES.get("progressive_unfreezing")().plan(
        blocks(model), {"lr": 0.1, "schedule": [0, 2, 3]}, epochs=6)
    assert [(p.start_epoch, p.trainable) for p in plan.phases] == [
        (0, ("head",)), (2, ("block3", "head")), (3, tuple(blocks(model)))]


@pytest.mark.parametrize("name", ["full_finetune", "progressive_unfreezing", "lp_ft", "bias_only"])
@pytest.mark.parametrize("execution", ["compile:default@aot_eager",
                                       pytest.param("compile", marks=pytest.mark.slow)])
def test_compiled_and_eager_losses_agree(name, execution):
    """Same seed, same data: the step losses agree within 1e-4 (abs) over every step of 3 epochs."""
    eager = _run(name, "eager", epochs=3)[3].step_losses
    compiled = _run(name, execution, epochs=3)[3].step_losses
    assert len(eager) == len(compiled) > 5
    assert compiled == pytest.approx(eager, abs=1e-4, rel=1e-4)


def test_bf16_autocast_and_channels_last_train_close_to_fp32():
    fp32 = _run("full_finetune", "eager", epochs=2)[3].step_losses
    cl = _run("full_finetune", "eager+channels_last", epochs=2)[3].step_losses
    bf16 = _run("full_finetune", "eager+bf16", epochs=2)[3].step_losses
    assert cl == pytest.approx(fp32, abs=1e-4)
    assert bf16 == pytest.approx(fp32, abs=0.05)  # bf16 keeps 8 bits of mantissa
    assert bf16 != fp32  # autocast really ran in bf16


def test_cached_features_train_the_same_head_as_a_full_forward():
    a = _run("linear_probe", "eager", data=_data(40))
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 2)
    hp = dict(a[2], cache_features=False)
    plan = STRATEGIES.get("linear_probe")().plan(blocks(model), hp, EPOCHS)
    assert not plan.phases[0].cache_features
    res = train(model, plan, _data(40), _data(40), a[5])
    assert res.step_losses == pytest.approx(a[3].step_losses, abs=1e-5)
    assert torch.allclose(model.head.weight, a[0].head.weight, atol=1e-5)
    assert a[3].phases["probe"].feature_cache_s > 0 and res.phases["probe"].feature_cache_s == 0


def test_lbfgs_probe_is_scikit_learns_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    data = _data(60)
    model, _plan, hp, res, _, _ = _run("linear_probe_lbfgs", "eager", data=data)
    feats = model[:-1].eval()(data.x).detach().double().numpy()
    clf = LogisticRegression(C=hp["C"], max_iter=1000).fit(feats, data.y.numpy())
    pred = model.head(torch.as_tensor(feats, dtype=torch.float32)).argmax(1).numpy()
    assert (pred == clf.predict(feats)).all()
    assert res.phases["probe"].solver_s > 0 and not res.step_losses  # no SGD steps at all


def test_stale_graph_guard_raises_when_a_trained_block_gets_no_gradient():
    from collections import OrderedDict

    from torch import nn

    from harness.train.loop import StaleGraphError
    from harness.train.strategy import Phase, Plan

    class Detached(nn.Module):  # a block whose output carries no gradient back to its weights
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x).detach()

    model = nn.Sequential(OrderedDict(body=Detached(), head=nn.Linear(4, 2)))
    data = Split(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    plan = Plan((Phase("ft", 0, ("body", "head"), "train"),))
    with pytest.raises(StaleGraphError, match=r"blocks \['body'\] got no gradient.*'body.lin.weight'"):
        train(model, plan, data, data, LoopConfig(epochs=1, batch_size=8))


def test_fp16_on_cpu_is_a_clear_user_error():
    from harness.errors import UserError

    with pytest.raises(UserError, match="fp16 autocast needs a CUDA device"):
        _run("full_finetune", "eager+fp16")
