"""The harness's own ViT: the model contract, shapes, what LoRA/peft can wrap, its pretraining
recipe, and every classic strategy training on it."""

import dataclasses
import hashlib
import json

import pytest
import torch
from torch import nn

from harness.config.spec import PretrainRecipe
from harness.data.core import Split
from harness.models.core import blocks, build_model, replace_head
from harness.models.vit import Attention, Block
from harness.registry import STRATEGIES
from harness.train.loop import LoopConfig, train
from harness.train.pretrain import CACHE_FORMAT, recipe_key
from harness.train.strategy import build_plan

CLASSIC = ("linear_probe", "linear_probe_lbfgs", "full_finetune", "finetune_adamw",
           "progressive_unfreezing", "discriminative_lr", "lp_ft", "bias_only", "partial_freeze",
           "ulmfit")


def test_vit_tiny_is_the_model_contract_with_explicit_blocks():
    model = build_model("vit_tiny", 1, 5, image_size=28)
    assert blocks(model) == ["stem", "block1", "block2", "block3", "block4", "norm", "head"]
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 5
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 5)
    # its own Linear layers, under timm's names, so LoRA / peft / adapters can wrap them
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {"block1.attn.qkv", "block1.attn.proj", "block1.mlp.fc1", "block4.mlp.fc2"} <= names
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 250_000


def test_image_size_sets_the_tokens_and_other_sizes_are_refused():
    small = build_model("vit_tiny", 3, 2, image_size=12)
    assert small.stem.pos_embed.shape[1] == 1 + (12 // 4) ** 2  # 4-pixel patches at 12 px
    assert small(torch.randn(2, 3, 12, 12)).shape == (2, 2)
    with pytest.raises(AssertionError, match="another image size"):
        small(torch.randn(2, 3, 16, 16))


def test_attention_matches_a_reference_softmax_attention():
    torch.manual_seed(0)
    attn = Attention(16, 4)
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    ref = attn.proj((w @ v).transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(attn(x), ref, atol=1e-6)


def test_the_class_token_alone_reaches_the_head():
    """Extra tokens after the class token (visual prompts) act only through attention: the
    final norm reads token 0."""
    torch.manual_seed(0)
    model = build_model("vit_tiny", 1, 2, image_size=12)
    tokens = model.stem(torch.randn(2, 1, 12, 12))
    h = tokens
    for b in ("block1", "block2", "block3", "block4"):
        h = getattr(model, b)(h)
    changed = h.clone()
    changed[:, 1:] = 0
    assert torch.equal(model.norm(h), model.norm(changed))
    assert isinstance(model.block1, Block)


def test_an_adamw_recipe_has_its_own_key_and_sgd_recipes_keep_theirs():
    sgd = PretrainRecipe()
    assert recipe_key(sgd) == recipe_key(dataclasses.replace(sgd, optimizer="sgd"))
    assert recipe_key(sgd) != recipe_key(dataclasses.replace(sgd, optimizer="adamw"))
    # the key of a recipe from before the field: a hash without it (a CNN's cache stays valid)
    fields = dataclasses.asdict(sgd)
    del fields["augment"], fields["optimizer"], fields["objective"]  # all at their defaults
    blob = json.dumps({**fields, "format": CACHE_FORMAT}, sort_keys=True)
    assert recipe_key(sgd) == hashlib.sha256(blob.encode()).hexdigest()[:20]


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 12, 12, generator=g)
    return Split(x, (x.mean(dim=(1, 2, 3)) > 0).long())


HP = {"lr": 0.01, "weight_decay": 1e-4, "lr_decay": 0.7, "warmup": 0.1, "C": 1.0,
      "unfreeze_every": 1, "probe_fraction": 0.3, "probe_solver": "sgd", "probe_lr_scale": 10.0,
      "frozen_blocks": 2, "n_frozen": 2, "trainable_top": 2}


@pytest.mark.parametrize("name", CLASSIC)
def test_every_classic_strategy_trains_the_vit(name):
    """Probes, fine-tuning, unfreezing, discriminative rates, LP-FT, BitFit: they address blocks
    and name patterns, so a transformer's blocks train as a CNN's do."""
    torch.manual_seed(0)
    model = replace_head(build_model("vit_tiny", 1, 3, image_size=12), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hp = dict(HP)
    strategy = STRATEGIES.get(name)()
    import optuna

    drawn = strategy.search_space(optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    hp = {**drawn, **{k: v for k, v in hp.items() if k in drawn or k in ("lr", "weight_decay")}}
    model, plan = build_plan(name, strategy, model, hp, 3)
    res = train(model, plan, _data(), _data(), LoopConfig(epochs=3, batch_size=8, lr=hp["lr"],
                                                          weight_decay=hp["weight_decay"]))
    assert len(res.epochs) == 3
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert "head.weight" in moved
    if name in ("full_finetune", "finetune_adamw", "discriminative_lr", "lp_ft"):
        assert "stem.pos_embed" in moved and "block1.attn.qkv.weight" in moved
    elif name == "bias_only":
        assert "block1.attn.qkv.bias" in moved and "block1.attn.qkv.weight" not in moved
    elif name.startswith("linear_probe"):
        assert moved == {"head.weight", "head.bias"}


def test_the_vit_pretrains_at_its_tasks_image_size_and_loads_back_from_the_cache(
        tmp_path, monkeypatch):
    from harness.train.pretrain import pretrained_backbone

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    recipe = PretrainRecipe(model="vit_tiny", dataset="digits", classes=(0, 1, 2), epochs=1,
                            batch_size=32, lr=2e-3, weight_decay=0.05, optimizer="adamw")
    first = pretrained_backbone(recipe)  # 8x8 digits: 4-pixel patches, 4 tokens and the class token
    second = pretrained_backbone(recipe)
    assert not first.cached and second.cached
    assert first.state_dict["stem.pos_embed"].shape == (1, 5, 64)
    assert torch.equal(second.state_dict["stem.pos_embed"], first.state_dict["stem.pos_embed"])
