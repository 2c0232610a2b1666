"""One training step per strategy and execution on the CPU: forward, loss, backward, optimizer step.

Each strategy's first phase is applied the way ``harness.train.loop.train`` applies it (``apply_phase``
for ``requires_grad`` and the param groups with their ``lr_scale``, train mode, ``set_bn_mode``,
SGD with Nesterov momentum) to ``small_cnn`` on one fixed batch of 64 CIFAR-shaped images, and
the step is the loop's: the model (or its ``torch.compile`` wrapper) under the execution's
autocast, cross-entropy, ``zero_grad(set_to_none=True)``, backward, ``opt.step()``. A phase on
cached features steps the eager head on the frozen backbone's features, as the loop does
(compiled or not, so only its eager case runs); an L-BFGS phase takes no SGD step and is skipped.
Three warm-up steps run before timing (compilation, allocator), the loop's ``warmup_steps``.
The step repeats the loop's step body, which is inline in ``train``; once that body is split
out (a known debt in ``docs/architecture.md``), this file should call it instead.

Executions: ``eager`` and ``compile`` (inductor, the default compiler). The suite runs with
``--benchmark-disable`` (pyproject's addopts), where each body runs once as a test, and an
inductor compile costs 10-40 s on two shared CPU cores; so without ``--benchmark-enable`` only
``full_finetune`` runs compiled (the smoke test of the compiled step, marked ``slow``), and the
other compiled cases skip. With ``--benchmark-enable`` every case runs: six compiled ones, 15-40 s each here.
A backend switch (``aot_eager`` when disabled) was rejected: the default run would then
exercise a compiler the benchmark never times.

Save a baseline, then fail when a later run's mean step time is more than 10% slower:

    pytest tests/benchmarks/test_steps.py --benchmark-enable --benchmark-autosave
    pytest tests/benchmarks/test_steps.py --benchmark-enable \\
        --benchmark-compare --benchmark-compare-fail=mean:10%

(``--benchmark-compare`` takes the newest saved run of this machine in ``.benchmarks/``, or
``--benchmark-compare=0001`` a given one.) CPU timings need a quiet machine (see
``docs/architecture.md``); on a shared one ``--benchmark-compare-fail=median:10%`` is less
swayed by a few slow rounds than the mean.
"""

import math

import optuna
import pytest
import torch
import torch.nn.functional as F

from harness.config.execution import CompileCounter, parse_execution
from harness.models.core import blocks, build_model
from harness.registry import STRATEGIES
from harness.train.phases import apply_phase, set_bn_mode

EXECUTIONS = ["eager", "compile"]
SMOKE_COMPILED = {"full_finetune"}  # compiled even when benchmarks are disabled
BATCH, CLASSES, WARMUP, LR = 64, 10, 3, 0.01


def _hp(name: str) -> dict:
    """A fixed draw from the strategy's own search space, so every strategy gets valid ones."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return STRATEGIES.get(name)().search_space(study.ask())


def _first_phase_step(name: str, execution: str):
    """The model, its first phase, the trainable parameters and a closure running one step."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, CLASSES)
    hp = _hp(name)
    plan = STRATEGIES.get(name)().plan(blocks(model), hp, 4)
    plan.validate(blocks(model), 4)
    phase = plan.phase_at(0)
    ex = parse_execution(execution)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    groups = apply_phase(model, phase)
    model.train()
    set_bn_mode(model, phase)
    opt = torch.optim.SGD(groups, lr=LR, momentum=0.9, nesterov=True,
                          weight_decay=float(hp.get("weight_decay", 0.0)))
    for group in opt.param_groups:  # the loop sets this before its clock starts; so here
        group["lr"] = LR * group["lr_scale"]
    if phase.cache_features:
        with torch.no_grad(), ex.autocast(x.device):
            x = model[:-1].eval()(x).float()
        fn = model[-1]
    else:
        fn = ex.prepare(model)

    def step() -> torch.Tensor:
        with ex.autocast(x.device):
            loss = F.cross_entropy(fn(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    params = [p for group in groups for p in group["params"]]
    return model, phase, params, step


def _cases():
    """(name, execution) with the ids of stacked parametrize; the inductor smoke case is ``slow``
    (a cold compile, 25-30 s: the quick loop ``-m "not slow"`` leaves it to CI)."""
    for execution in EXECUTIONS:
        for name in STRATEGIES.names():
            smoke = execution == "compile" and name in SMOKE_COMPILED
            yield pytest.param(name, execution, id=f"{name}-{execution}",
                               marks=pytest.mark.slow if smoke else ())


@pytest.mark.parametrize("name, execution", list(_cases()))
def test_one_training_step(benchmark, name, execution):
    compiled = parse_execution(execution).compile
    if compiled and name not in SMOKE_COMPILED and benchmark.disabled:
        pytest.skip("compiled steps other than full_finetune's run only with --benchmark-enable "
                    "(an inductor compile costs 10-40 s)")
    if compiled:
        torch._dynamo.reset()  # this case's graphs are its own
    model, phase, params, step = _first_phase_step(name, execution)
    if phase.solver == "lbfgs":
        pytest.skip("an L-BFGS phase fits its head once and takes no SGD steps")
    if compiled and phase.cache_features:
        pytest.skip("the loop steps a cached-feature phase's head eagerly, compiled or not")
    graphs = CompileCounter()  # process-wide counts: differences only
    start = graphs()
    frozen = {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}
    before = [p.detach().clone() for p in params]
    for _ in range(WARMUP):
        step()
    warm = graphs()
    benchmark.group = f"step-{execution}"
    benchmark.extra_info.update(strategy=name, phase=phase.name, batch=BATCH)
    loss = benchmark(step)
    assert math.isfinite(loss.item())
    assert graphs() == warm, "a graph compiled inside the timed steps"
    assert (warm - start >= 1) if compiled else (warm == start)
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))  # all trained
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in frozen.items())
