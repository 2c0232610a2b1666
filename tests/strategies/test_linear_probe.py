import torch

from harness.config.spec import TrialConfig
from harness.data.task import load_task
from harness.run.trial import TrialContext, build_trial_model, run_trial


def test_linear_probe_leaves_the_pretrained_backbone_bitwise_unchanged():
    task = load_task("digits", classes=[5, 6, 7, 8, 9], shots=20)
    torch.manual_seed(123)
    source = build_trial_model(
        TrialConfig("s", "c", "search", 0, 0, "linear_probe", {}, "digits"),
        TrialContext("r", load_task("digits", classes=[0, 1, 2, 3, 4])),
    )
    pretrained = {k: v.clone() for k, v in source.state_dict().items()}
    cfg = TrialConfig("s", "c", "final", 0, 7, "linear_probe", {"lr": 0.1, "weight_decay": 1e-4},
                      "digits", (5, 6, 7, 8, 9), 20, epochs=3, batch_size=16)
    ctx = TrialContext("r", task, pretrained)

    model = build_trial_model(cfg, ctx)
    head_before = model.head.weight.detach().clone()
    from harness.models.core import blocks
    from harness.registry import STRATEGIES
    from harness.train.loop import LoopConfig, train

    plan = STRATEGIES.get("linear_probe")().plan(blocks(model), cfg.hp, cfg.epochs)
    train(model, plan, task.train, task.val, LoopConfig(epochs=3, batch_size=16, lr=0.1))
    state = model.state_dict()
    for k, v in pretrained.items():
        if not k.startswith("head."):
            assert torch.equal(state[k], v), f"backbone tensor {k} changed"
    assert not torch.equal(model.head.weight, head_before)

    result = run_trial(cfg, ctx)  # the whole trial path too
    assert result.status == "ok" and result.bn_mode == "eval" and result.test_accuracy is not None
