"""VeRA (Kopiczko et al. 2024) through ``peft``: one pair of frozen random low-rank matrices
shared by every adapted layer, and two trained scaling vectors per layer (``vera_lambda_b``,
``vera_lambda_d``). peft's VeRA wraps ``nn.Linear`` only: on a backbone without Linear layers
(the harness's CNNs) it is a PlanError naming the problem, never a run that trains nothing."""

from torch import nn

from harness.registry import STRATEGIES
from strategies._peft import PeftStrategy, peft_space


@STRATEGIES.register("vera")
class VeRA(PeftStrategy):
    description = "peft VeRA: shared frozen random projections, trained scaling vectors, new head"
    method, prefix = "vera", "vera_lambda_"
    types = (nn.Linear,)
    test_model = ("timm:test_vit", 16)  # the registry-wide tests need Linear layers to adapt

    def search_space(self, trial):
        hp = peft_space(trial, ranks=(64, 256))  # its rank costs no trained parameters
        del hp["alpha"]  # no alpha: the lambdas scale the update
        return hp

    def inject(self, config, model):
        # peft's inject_adapter_in_model refuses VeRA (its projections live on the tuner): the
        # tuner injects into ``model`` in place, and each layer keeps the shared projections
        from peft.tuners.vera import VeraModel

        VeraModel(model, config, "default")
        return model

    def config(self, hp, targets):
        from peft import VeraConfig

        return VeraConfig(r=int(hp.get("rank", 256)), target_modules=targets,
                          vera_dropout=float(hp.get("dropout", 0.0)), projection_prng_key=0,
                          save_projection=True)
