"""Logistic regression on frozen features with L-BFGS: the probe of Kornblith et al. 2019 and Kumar et al. 2022.

scikit-learn's L2-regularised multinomial logistic regression is fitted once on the backbone's
cached features; its regularisation strength ``C`` is what Optuna searches.
"""

from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, Strategy


@STRATEGIES.register("linear_probe_lbfgs")
class LinearProbeLBFGS(Strategy):
    description = "scikit-learn L-BFGS logistic regression on cached frozen features; C searched"

    def search_space(self, trial):
        return {
            # a wide L2 sweep, as Kornblith et al. 2019 (45 values over 1e-6..1e5)
            "C": trial.suggest_float("C", 1e-6, 1e5, log=True),
            # unused by the solver, kept so every strategy shares the loop's hyperparameters
            "lr": 0.0,
            "weight_decay": 0.0,
        }

    def plan(self, blocks, hp, epochs):
        return Plan((Phase("probe", 0, trainable=(blocks[-1],), bn_mode="eval", cache_features=True,
                           solver="lbfgs", solver_options={"C": hp["C"]}),))
