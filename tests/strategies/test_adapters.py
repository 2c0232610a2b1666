"""The harness's own transformer strategies: Houlsby adapters, visual prompt tuning, LayerNorm
tuning. The registry-wide tests (test_every_strategy.py) check that each trains exactly its
parameters on vit_tiny; these check what each does to the model."""

import copy

import pytest
import torch
from torch import nn

from harness.models.core import build_model
from harness.registry import STRATEGIES
from harness.train.strategy import PlanError, build_plan

HP = {"lr": 0.01, "weight_decay": 1e-4}


def _vit():
    torch.manual_seed(0)
    return build_model("vit_tiny", 1, 2, image_size=12)


def _x():
    return torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))


def test_adapters_start_as_the_identity_and_keep_every_pretrained_name():
    model = _vit().eval()
    names, before = set(model.state_dict()), model(_x())
    adapted, plan = build_plan("adapter", STRATEGIES.get("adapter")(), model, {**HP, "bottleneck": 8}, 2)
    assert torch.equal(adapted(_x()), before)  # zero-initialised up-projection
    new = set(adapted.state_dict()) - names
    assert names <= set(adapted.state_dict())
    # one adapter after attention and one after the MLP of each of the 4 blocks
    assert {n.rsplit(".", 2)[0] for n in new} == {f"block{i}.{s}.adapter" for i in range(1, 5)
                                                    for s in ("attn", "mlp")}
    assert adapted.block1.attn.adapter.down.out_features == 8
    assert plan.phases[0].trainable == ("head",) and plan.phases[0].params == ("*.adapter.*",)


def test_a_trained_adapter_changes_the_output_and_a_copy_runs_its_own():
    model, _ = build_plan("adapter", STRATEGIES.get("adapter")(), _vit().eval(), HP, 2)
    before = model(_x())
    with torch.no_grad():
        # random, not constant: a shift equal across features is what LayerNorm removes
        model.block2.mlp.adapter.up.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(0))
    after = model(_x())
    assert not torch.allclose(after, before)
    twin = copy.deepcopy(model)  # the FLOP counter copies the model
    with torch.no_grad():
        twin.block2.mlp.adapter.up.weight.zero_()
    assert torch.equal(model(_x()), after) and torch.allclose(twin(_x()), before, atol=1e-6)


@pytest.mark.parametrize("depth, n_prompts", [("shallow", 1), ("deep", 4)])
def test_vpt_adds_prompt_tokens_after_the_class_token(depth, n_prompts):
    model = _vit().eval()
    hp = {**HP, "prompt_tokens": 3, "vpt_depth": depth}
    model, _ = build_plan("vpt", STRATEGIES.get("vpt")(), model, hp, 2)
    seen = []
    model.block3.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    out = model(_x())
    assert out.shape == (4, 2)
    assert seen[0].shape[1] == 1 + 3 + 9  # class token, 3 prompts, 9 patches of 4 px
    prompts = [n for n, _ in model.named_parameters() if n.endswith("vpt_prompt")]
    assert len(prompts) == n_prompts
    if depth == "deep":  # block 3's input carries block 3's own prompts, not block 2's outputs
        assert torch.equal(seen[0][:, 1:4], model.block3.vpt_prompt.expand(4, -1, -1))
    loss = out.sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if n.endswith("vpt_prompt"))


def test_vpt_rejects_a_bad_depth_and_zero_prompts():
    with pytest.raises(PlanError, match="vpt_depth must be one of"):
        build_plan("vpt", STRATEGIES.get("vpt")(), _vit(), {**HP, "vpt_depth": "middle"}, 2)
    with pytest.raises(PlanError, match="prompt_tokens must be at least 1"):
        build_plan("vpt", STRATEGIES.get("vpt")(), _vit(), {**HP, "prompt_tokens": 0}, 2)


def test_ln_tuning_selects_exactly_the_layernorms():
    model, plan = build_plan("ln_tuning", STRATEGIES.get("ln_tuning")(), _vit(), HP, 2)
    import fnmatch

    chosen = {n for n, _ in model.named_parameters()
              if any(fnmatch.fnmatchcase(n, p) for p in plan.phases[0].params)}
    norms = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)
             for p, _ in mod.named_parameters(recurse=False)}
    assert chosen == norms and len(norms) == 2 * (2 * 4 + 1)


@pytest.mark.parametrize("name", ["adapter", "vpt", "ln_tuning"])
def test_transformer_strategies_refuse_a_cnn_in_one_clear_line(name):
    with pytest.raises(PlanError, match=rf"strategy '{name}' applies to .*vit_tiny") as err:
        build_plan(name, STRATEGIES.get(name)(), build_model("small_cnn", 1, 2), HP, 2)
    assert "\n" not in str(err.value)


def _timm_vit(name="timm:test_vit:patch_size=4"):
    torch.manual_seed(0)
    return build_model(name, 1, 2, image_size=12).eval()


def test_adapters_and_ln_tuning_run_inside_a_timm_vit():
    """timm's blocks sit one level down (``block1.blocks.0``) and timm's forward calls them: the
    adapters start as the identity there and change the output once trained."""
    model = _timm_vit()
    before = model(_x())
    adapted, _ = build_plan("adapter", STRATEGIES.get("adapter")(), model, {**HP, "bottleneck": 8}, 2)
    assert torch.equal(adapted(_x()), before)
    new = {n.rsplit(".", 2)[0] for n, _ in adapted.named_parameters() if ".adapter." in n}
    assert new == {f"block{i + 1}.blocks.{i}.{s}.adapter" for i in range(6) for s in ("attn", "mlp")}
    with torch.no_grad():
        adapted.get_submodule("block4.blocks.3.mlp.adapter").up.weight.normal_(0.0, 0.1)
    assert not torch.allclose(adapted(_x()), before)
    model, plan = build_plan("ln_tuning", STRATEGIES.get("ln_tuning")(), _timm_vit(), HP, 2)
    import fnmatch

    chosen = {n for n, _ in model.named_parameters()
              if any(fnmatch.fnmatchcase(n, p) for p in plan.phases[0].params)}
    assert len(chosen) == 2 * (2 * 6 + 1)  # norm1, norm2 of 6 blocks and the final norm


@pytest.mark.parametrize("name, prefix", [("timm:test_vit:patch_size=4", 1),
                                          ("timm:test_vit:patch_size=4:reg_tokens=2", 3)])
def test_vpt_puts_prompts_after_a_timm_vits_prefix_tokens(name, prefix):
    model = _timm_vit(name)
    hp = {**HP, "prompt_tokens": 3, "vpt_depth": "deep"}
    model, _ = build_plan("vpt", STRATEGIES.get("vpt")(), model, hp, 2)
    third = model.get_submodule("block3.blocks.2")
    seen = []
    third.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    out = model(_x())
    assert seen[0].shape[1] == prefix + 3 + 9  # class (and register) tokens, prompts, patches
    assert torch.equal(seen[0][:, prefix:prefix + 3], third.vpt_prompt.expand(4, -1, -1))
    out.sum().backward()
    prompts = {n: p for n, p in model.named_parameters() if n.endswith("vpt_prompt")}
    assert len(prompts) == 6 and all(p.grad.abs().sum() > 0 for p in prompts.values())


def test_vpt_refuses_a_timm_vit_that_pools_over_all_tokens():
    with pytest.raises(PlanError, match=r"pools 'avg' over all tokens, prompts included") as err:
        build_plan("vpt", STRATEGIES.get("vpt")(), _timm_vit("timm:test_vit:patch_size=4:global_pool=avg"),
                   {**HP, "prompt_tokens": 2, "vpt_depth": "shallow"}, 2)
    assert "\n" not in str(err.value)
