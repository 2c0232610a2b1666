"""Steady-state training speed of torch.compile against eager, per strategy, with compile time apart.

Each strategy runs one fixed configuration (the same for both executions, so only the
execution differs), re-run with 3 seeds. Every run compiles from a clean dynamo state, so
its compile time is its own; inductor's on-disk cache may still serve later runs, and the
tables show each run's figure. Multi-phase strategies recompile at each phase change (the
parameters that need gradients change): their compile cost is per phase. Ansel et al. 2024
report a 1.41x geometric-mean training speedup on an A100; a small CNN on a CPU is another
regime, and the question here is what this device gives.
"""

from harness.registry import STUDIES
from harness.spec import StudySpec
from studies._mnist_transfer import MNIST_0_4_TO_5_9

FIXED = {"lr": 0.02, "weight_decay": 1e-4}


@STUDIES.register("eager_vs_compiled")
def eager_vs_compiled() -> StudySpec:
    return StudySpec(
        name="eager_vs_compiled",
        description=__doc__.strip().splitlines()[0],
        **MNIST_0_4_TO_5_9,
        strategies=("full_finetune", "progressive_unfreezing", "lp_ft"),
        executions=("eager", "compile"),
        budgets=(None,),
        epochs=4,
        batch_size=64,
        trials=1,  # no search: the enqueued config below is the one measured
        pruner="none",
        seeds=3,
        enqueue={
            "full_finetune": FIXED,
            "progressive_unfreezing": {**FIXED, "unfreeze_every": 1},
            "lp_ft": {**FIXED, "probe_fraction": 0.25, "probe_solver": "sgd", "probe_lr_scale": 10.0},
        },
    )
