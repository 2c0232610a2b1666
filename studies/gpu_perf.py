"""Training-step throughput, memory and compile time: models x strategies x {eager, compile} x {fp32, bf16}.

The run a team schedules nightly and compares against a baseline run: every cell trains one
fixed configuration (no search: ``trials=1`` and the enqueued hyperparameters below), re-run
with 3 seeds so each speed has repeated measurements, on generated CIFAR-shaped data
(``synthetic_cifar``: 3 x 32 x 32, 10 classes; no files) from random initialisation. Accuracy
here means nothing; ``samples_per_s``, ``step_p50_s``, the forward / backward / optimizer split,
``peak_*`` memory, ``graphs_compiled``, ``compile_steps_s`` and ``timed_recompiles`` are the
point.

Strategies, chosen for the different training steps they run, not for accuracy:

- ``full_finetune``: the whole backward pass and an optimizer step over every parameter, with
  BatchNorm updating its statistics: the reference step.
- ``partial_freeze`` (top 2 blocks train): the backward pass stops below the trained blocks and
  the frozen BatchNorm runs in eval mode; how much a frozen backbone saves, and the path where
  autograd's pruning and dynamo's ``requires_grad`` guards matter.

``linear_probe`` is left out: it caches the frozen features, and its steps run the eager head
alone, so eager and compiled would time the same single linear layer and say nothing about the
model. ``bias_only`` (backward through every layer, no weight gradients) is a third step shape
worth timing on a GPU; it is not in the default grid because every strategy adds a cold
inductor compile per model and precision (~15-30 s each on 2 CPU cores).

Sized for 2 CPU cores: ``small_cnn`` and ``resnet_small`` (CIFAR ResNet-8), 32 shots per class
= 320 training images, batches of 32, 2 epochs: 20 steps per run, the last 17 timed after the
loop's 3 warm-up steps; 16 cells of 4 runs (the one search trial, which compiles cold, and 3
seeded re-runs). ``mobilenet_v3_small`` was measured and left out: one cold inductor compile
of its training step took 3-4 minutes on the 2 shared cores here. On a GPU, run the
torchvision backbones (random init; on 32 px images, so this times the step, not an ImageNet
workload):

    python -m harness study gpu_perf --devices cuda \\
        --models resnet18,resnet50,mobilenet_v3_small,efficientnet_b0,convnext_tiny

and compare it with the baseline run of the same device. ``--executions`` narrows the grid
(e.g. ``compile,compile+bf16``); ``--seeds 5`` tightens the spread.
"""

from harness.config.spec import StudySpec
from harness.registry import STUDIES

FIXED = {"lr": 0.02, "weight_decay": 1e-4}  # the same for every cell: only the step differs


@STUDIES.register("gpu_perf")
def gpu_perf() -> StudySpec:
    return StudySpec(
        name="gpu_perf",
        description=__doc__.strip().splitlines()[0],
        dataset="synthetic_cifar",
        classes=tuple(range(10)),
        model="small_cnn",
        models=("small_cnn", "resnet_small"),
        pretrain=None,  # random init: speed does not depend on the weights
        strategies=("full_finetune", "partial_freeze"),
        executions=("eager", "eager+bf16", "compile", "compile+bf16"),
        budgets=(32,),  # 320 training images: 10 steps of 32 per epoch
        epochs=2,
        batch_size=32,
        trials=1,  # no search: the enqueued config below is the one measured
        pruner="none",
        seeds=3,  # repeated measurements per cell, for the comparison with a baseline
        enqueue={
            "full_finetune": FIXED,
            "partial_freeze": {**FIXED, "train_top_k": 2},
        },
    )
