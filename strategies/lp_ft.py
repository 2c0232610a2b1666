"""LP-FT (Kumar et al. 2022): a linear probe first, then full fine-tuning from the probed head.

Starting fine-tuning from a good head keeps the early, large gradients of a random head from
distorting the pretrained features. The probe runs on cached features, with SGD or with
scikit-learn's L-BFGS logistic regression (``probe_solver``); its learning rate is the
fine-tuning rate times ``probe_lr_scale``. Fine-tuning runs its own cosine schedule from the
full learning rate, as in the paper, rather than continuing the probe's.
"""

from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, Strategy, optimizer_from, sgd_space


@STRATEGIES.register("lp_ft")
class LPFT(Strategy):
    description = "linear probe on cached features, then full fine-tuning from the probed head"

    def search_space(self, trial):
        hp = {
            **sgd_space(trial, lr=(1e-4, 0.1)),
            "probe_fraction": trial.suggest_float("probe_fraction", 0.2, 0.5),
            "probe_solver": trial.suggest_categorical("probe_solver", ["sgd", "lbfgs"]),
        }
        if hp["probe_solver"] == "lbfgs":
            hp["C"] = trial.suggest_float("C", 1e-3, 1e2, log=True)
        else:
            hp["probe_lr_scale"] = trial.suggest_float("probe_lr_scale", 1.0, 100.0, log=True)
        return hp

    def plan(self, blocks, hp, epochs):
        head = blocks[-1]
        probe_epochs = min(max(1, round(float(hp.get("probe_fraction", 0.3)) * epochs)), epochs - 1)
        solver = hp.get("probe_solver", "sgd")
        probe = Phase("probe", 0, trainable=(head,), bn_mode="eval", cache_features=True,
                      solver=solver, solver_options={"C": hp.get("C", 1.0)},
                      lr_scale={head: float(hp.get("probe_lr_scale", 10.0))},
                      optimizer=optimizer_from(hp))
        finetune = Phase("finetune", probe_epochs, trainable=tuple(blocks), bn_mode="train",
                         span="phase", optimizer=optimizer_from(hp))
        return Plan((probe, finetune))
