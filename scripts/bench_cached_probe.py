"""Linear probe on cached features vs a forward pass through the frozen backbone every step.

Prints wall time, test accuracy and the speed ratio of each probe at 20 epochs on the
finetune_vs_probe transfer task (MNIST 0-4 -> 5-9, all labels), same seed and hyperparameters.
Goal (issue 3): cached at least 10x faster, accuracy within 1 point.

    python scripts/bench_cached_probe.py [--epochs 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.config.spec import TrialConfig
from harness.data.task import load_task
from harness.models.core import blocks
from harness.registry import STRATEGIES, STUDIES
from harness.run.trial import TrialContext, build_trial_model
from harness.train.evaluation import evaluate
from harness.train.loop import LoopConfig, train
from harness.train.pretrain import pretrained_backbone


def run(task, pre, strategy, hp, epochs, seed):
    cfg = TrialConfig("bench", "c", "final", 0, seed, strategy, hp, "mnist5k", epochs=epochs)
    model = build_trial_model(cfg, TrialContext("bench", task, pre.state_dict))
    plan = STRATEGIES.get(strategy)().plan(blocks(model), hp, epochs)
    t0 = time.perf_counter()
    train(model, plan, task.train, task.val,
          LoopConfig(epochs=epochs, batch_size=64, lr=hp["lr"], weight_decay=hp["weight_decay"], seed=seed))
    seconds = time.perf_counter() - t0
    return seconds, evaluate(model, task.test)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    spec = STUDIES.get("finetune_vs_probe")()
    pre = pretrained_backbone(spec.pretrain)
    task = load_task(spec.dataset, spec.classes)
    hp = {"lr": 0.1, "weight_decay": 1e-4}
    variants = {
        "per-step forward (SGD)": ("linear_probe", {**hp, "cache_features": False}),
        "cached features (SGD)": ("linear_probe", {**hp, "cache_features": True}),
        "cached features (L-BFGS, C=1)": ("linear_probe_lbfgs", {"lr": 0.0, "weight_decay": 0.0, "C": 1.0}),
    }
    results = {}
    for name, (strategy, params) in variants.items():
        runs = [run(task, pre, strategy, params, args.epochs, seed) for seed in range(args.repeats)]
        results[name] = (statistics.median(s for s, _ in runs), statistics.mean(a for _, a in runs))
    base_s, base_acc = results["per-step forward (SGD)"]
    print(f"linear probe, {args.epochs} epochs, {len(task.train)} training images, "
          f"median of {args.repeats} runs, torch threads {torch.get_num_threads()}")
    for name, (s, acc) in results.items():
        print(f"{name:<32} {s:7.2f} s  test acc {100 * acc:5.1f}%  "
              f"speed ratio {base_s / s:6.1f}x  acc diff {100 * (acc - base_acc):+5.2f} pt")


if __name__ == "__main__":
    main()
