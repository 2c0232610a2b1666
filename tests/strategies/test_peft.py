"""The peft strategies (lora, dora, ia3, loha, lokr, vera): which layers they adapt, that a fresh
adapter leaves the model's function unchanged, and that a dead adapter stops the run.

That each trains exactly its own parameters is checked registry-wide in test_every_strategy.py.
"""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from harness.data.core import Split
from harness.models.core import build_model
from harness.registry import STRATEGIES
from harness.train.loop import LoopConfig, StaleGraphError, train
from harness.train.strategy import PlanError, build_plan

PEFT = ["lora", "dora", "ia3", "loha", "lokr", "vera"]
HP = {"lr": 0.01, "weight_decay": 1e-3, "rank": 4, "alpha": 2.0, "dropout": 0.0}


def _vit(seed=0):
    torch.manual_seed(seed)
    return build_model("timm:test_vit", 1, 3, image_size=16)


def _adapted(model):
    """Names of the modules peft swapped in (they keep the base layer as ``base_layer``)."""
    return sorted(n for n, m in model.named_modules() if hasattr(m, "base_layer"))


@pytest.mark.parametrize("name", PEFT)
def test_a_fresh_adapter_leaves_the_function_unchanged(name):
    """LoRA's B, VeRA's lambda_b, LoKr's and LoHa's second factor start at zero, DoRA's magnitude
    at the weight's norm, (IA)^3's scales at one: training starts from the pretrained model."""
    model = _vit().eval()
    x = torch.randn(4, 1, 16, 16)
    before = model(x)
    model, _ = build_plan(name, STRATEGIES.get(name)(), model, dict(HP, target="all"), 4)
    assert _adapted(model)
    torch.testing.assert_close(model.eval()(x), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", PEFT)
def test_attention_mlp_adapts_exactly_timms_qkv_proj_fc1_fc2(name):
    model, plan = build_plan(name, STRATEGIES.get(name)(), _vit(),
                             dict(HP, target="attention_mlp"), 4)
    got = _adapted(model)
    expected = sorted(f"block{b + 1}.blocks.{b}.{layer}" for b in range(6)
                      for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    assert got == expected  # never the patch embedding's Conv2d 'proj', never the head
    assert isinstance(model.head, nn.Linear)
    assert plan.phases[0].trainable == ("head",)


def test_vera_on_a_backbone_without_linear_layers_is_a_plan_error():
    with pytest.raises(PlanError, match=r"'vera': target 'all' selects no layer.*Linear.*Conv2d"):
        build_plan("vera", STRATEGIES.get("vera")(), build_model("small_cnn", 1, 2), HP, 4)


def test_an_unknown_target_is_a_plan_error():
    with pytest.raises(PlanError, match="target must be one of"):
        build_plan("lora", STRATEGIES.get("lora")(), _vit(), dict(HP, target=" , "), 4)
    with pytest.raises(PlanError, match="selects no layer"):
        build_plan("lora", STRATEGIES.get("lora")(), _vit(), dict(HP, target="*.nothing"), 4)


class _Attention(nn.Module):
    """Tokens through torch's nn.MultiheadAttention, which calls out_proj's weight directly."""

    def __init__(self, dim=8):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0].mean(1)


def _mha_model():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(body=_Attention(), head=nn.Linear(8, 2)))


def _train(model, name, hp):
    model, plan = build_plan(name, STRATEGIES.get(name)(), model, hp, 1)
    data = Split(torch.randn(16, 5, 8), torch.randint(0, 2, (16,)))
    return train(model, plan, data, data, LoopConfig(epochs=1, batch_size=8, lr=hp["lr"]))


def test_lora_on_multihead_attentions_out_proj_is_dead_and_stops_the_run():
    """The known trap: a LoRA on nn.MultiheadAttention.out_proj never runs; the loop's gradient
    check names it instead of training nothing."""
    with pytest.raises(StaleGraphError, match=r"'lora'.*no gradient.*out_proj\.lora_A"):
        _train(_mha_model(), "lora", dict(HP, target="*.out_proj"))


def test_lora_wraps_the_whole_multihead_attention_by_default_and_it_trains():
    model = _mha_model()
    res = _train(model, "lora", dict(HP, target="all"))
    # peft's MultiheadAttention LoRA (it wraps out_proj inside itself), not out_proj alone
    assert [n for n in _adapted(model) if ".base_layer." not in n] == ["body.attn"]
    assert len(res.epochs) == 1
