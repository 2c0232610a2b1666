"""timm backbones by name: timm's own parameter groups as blocks, timm's forward unchanged,
weights from local files only, and every classic strategy able to plan on them.

timm's tiny test models (``test_vit``, ``test_resnet``, ``test_convnext``, ``test_efficientnet``)
keep this file fast.
"""

import dataclasses

import optuna
import pytest
import torch
from timm.models import group_parameters

from harness.errors import UserError
from harness.models.core import blocks, build_model
from harness.models.timm import timm_net
from harness.registry import STRATEGIES
from harness.train.strategy import build_plan

FAMILIES = ["timm:test_vit", "timm:test_resnet", "timm:test_convnext", "timm:test_efficientnet"]


def _model(name, in_channels=1, classes=3, size=32, seed=0):
    torch.manual_seed(seed)
    return build_model(name, in_channels, classes, image_size=size)


@pytest.mark.parametrize("name", FAMILIES)
def test_blocks_are_timms_own_parameter_groups(name):
    model = _model(name)
    net = timm_net(model)
    groups = group_parameters(net, net.group_matcher(coarse=False))
    classifier = net.pretrained_cfg["classifier"] + "."
    expected = [sorted(n for n in names if not n.startswith(classifier))
                for _, names in sorted(groups.items())]
    expected = [g for g in expected if g]
    ours = [b for b in blocks(model) if b != "head"]
    assert len(ours) == len(expected) and ours[0] == "stem"
    id_of = {id(p): n for n, p in net.named_parameters()}
    for block, names in zip(ours, expected, strict=True):
        got = sorted(id_of[id(p)] for p in getattr(model, block).parameters())
        assert got == names, block
        # the wrapper's names are timm's names under the block's
        assert {n.split(".", 1)[1] for n, _ in getattr(model, block).named_parameters(
            prefix=block)} == set(names)
    assert model.head is net.get_classifier()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_is_timms_own_in_train_and_eval(name):
    model = _model(name)
    net = timm_net(model)
    x = torch.randn(4, 1, 32, 32)
    for mode in (False, True):
        model.train(mode)
        torch.manual_seed(1)
        ours = model(x)
        torch.manual_seed(1)
        assert torch.equal(ours, net(x)), f"train={mode}"
    model.eval()
    assert torch.equal(model.head(model[:-1](x)), net(x))
    assert not any(m.training for m in net.modules())  # eval reached every timm module


def test_moved_or_converted_parameters_stay_timms_own():
    """``.to("meta")`` (the FLOP counter's copy) and ``.double()`` replace tensors: the forward
    must still see them (a ViT's class token and position embedding sit on timm's root)."""
    import copy

    model = _model("timm:test_vit").double().eval()
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    assert torch.equal(model(x), timm_net(model)(x))
    meta = copy.deepcopy(model).to("meta")
    assert meta(x.to("meta")).device.type == "meta"
    assert timm_net(meta).cls_token is meta.stem.cls_token


def test_a_module_swapped_into_a_block_is_the_one_timm_calls():
    model = _model("timm:test_resnet")
    net = timm_net(model)
    old = model.stem.conv1[0]
    new = torch.nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride,
                          old.padding, bias=False)
    model.stem.conv1[0] = new  # a real Sequential of timm's: set directly
    model.stem.conv1 = torch.nn.Sequential(*model.stem.conv1)  # a root attribute: mirrored
    assert net.conv1 is model.stem.conv1 and net.conv1[0] is new


# the classic strategies and the peft ones (strategies written for one model family, like a
# ViT's prompt tokens, say so with a PlanError of their own)
CLASSIC = ["linear_probe", "linear_probe_lbfgs", "full_finetune", "finetune_adamw", "partial_freeze",
           "progressive_unfreezing", "discriminative_lr", "lp_ft", "ulmfit", "bias_only"]
PEFT = ["lora", "dora", "ia3", "loha", "lokr", "vera"]


@pytest.mark.parametrize("name", CLASSIC + PEFT)
def test_every_strategy_builds_a_plan_on_a_timm_vit(name):
    strategy = STRATEGIES.get(name)()
    hp = strategy.search_space(optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    model, plan = build_plan(name, strategy, _model("timm:test_vit"), hp, epochs=10)
    assert plan.phases and all(set(p.trainable) <= set(blocks(model)) for p in plan.phases)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_round_trip_in_timms_key_layout(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    from harness.models.torchvision import load_backbone_weights

    torch.manual_seed(7)
    src = timm.create_model("test_resnet", pretrained=False, num_classes=3, in_chans=1).eval()
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = _model("timm:test_resnet", seed=0)
    assert not torch.equal(model.head.weight, src.fc.weight)
    load_backbone_weights("timm:test_resnet", model, str(path))
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model.eval()(x), src(x))


def test_rgb_weights_fit_a_one_channel_model_and_another_head(tmp_path):
    import timm
    from safetensors.torch import save_file

    from harness.models.torchvision import load_backbone_weights

    src = timm.create_model("test_vit", pretrained=False, num_classes=7, img_size=32)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = _model("timm:test_vit", in_channels=1, classes=3)
    head = model.head.weight.detach().clone()
    load_backbone_weights("timm:test_vit", model, str(path))
    proj = src.patch_embed.proj.weight
    assert torch.allclose(model.stem.patch_embed.proj.weight, proj.sum(1, keepdim=True))
    assert torch.equal(model.block1.get_submodule("blocks.0.attn.qkv").weight, src.blocks[0].attn.qkv.weight)
    assert torch.equal(model.head.weight, head)  # 7 classes in the file: our head stays fresh


def test_weights_of_another_model_are_a_user_error(tmp_path):
    from harness.models.torchvision import load_backbone_weights

    path = tmp_path / "w.pth"
    torch.save(build_model("small_cnn", 1, 3).state_dict(), path)
    with pytest.raises(UserError, match="does not fit timm model 'test_resnet'"):
        load_backbone_weights("timm:test_resnet", _model("timm:test_resnet"), str(path))
    with pytest.raises(UserError, match="local file"):
        load_backbone_weights("timm:test_resnet", _model("timm:test_resnet"), "imagenet")


def test_an_unknown_timm_name_is_one_line_saying_how_to_list_names():
    from harness.config.spec import check_model_name

    with pytest.raises(UserError) as e:
        build_model("timm:vit_tinny_patch16_224", 3, 10)
    text = str(e.value)
    assert "\n" not in text and "timm.list_models" in text and "vit_tiny_patch16_224" in text
    with pytest.raises(UserError, match="unknown timm model ''"):
        check_model_name("timm:")
    check_model_name("timm:resnet18")  # known: no error


def test_a_timm_model_that_cannot_take_the_studys_inputs_is_one_line_before_any_run():
    """test_vit's 16-pixel patch does not divide MNIST's 28 pixels: preflight says so in one
    line (timm's own assertion would surface inside the first trial); a ResNet takes them."""
    from harness.config.spec import StudySpec
    from harness.run.preflight import check_runnable

    spec = StudySpec(name="t", description="t", dataset="mnist5k", classes=(0, 1),
                     budgets=(10,), strategies=("linear_probe",), model="timm:test_vit")
    with pytest.raises(UserError, match=r"'timm:test_vit' cannot take this study's \[1, 28, 28\] "
                                        r"inputs \(Input height \(28\) should be divisible.*"
                                        r"e\.g\. timm:test_vit:patch_size=7"):
        check_runnable(spec)
    # sized for the task by an argument in the name: 28 / 7 = 4 patches a side
    assert check_runnable(dataclasses.replace(spec, model="timm:test_vit:patch_size=7"))
    assert check_runnable(dataclasses.replace(spec, model="timm:test_resnet")).model == "timm:test_resnet"


def test_arguments_in_a_timm_name_size_the_model_and_survive_a_weights_file(tmp_path):
    """``timm:test_vit:patch_size=7:depth=2`` is timm's ``create_model("test_vit",
    patch_size=7, depth=2)``; weights saved from it load back into the same name."""
    from safetensors.torch import save_file

    from harness.models.torchvision import load_backbone_weights

    name = "timm:test_vit:patch_size=7:depth=2"
    model = _model(name, size=28)
    net = timm_net(model)
    assert net.patch_embed.patch_size == (7, 7) and len(net.blocks) == 2
    assert blocks(model) == ["stem", "block1", "block2", "head"]  # the final norm is in block2
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    other = _model(name, size=28, seed=1)
    load_backbone_weights(name, other, str(path))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(other.eval()(x), model.eval()(x))


@pytest.mark.parametrize("name, message", [
    ("timm:test_vit:patch_size", r"'patch_size' in 'timm:test_vit:patch_size' is not key=value"),
    ("timm:test_vit:num_classes=3", r"'num_classes' .* is set by the harness"),
    ("timm:test_vit:img_size=32", r"'img_size' .* is set by the harness"),
    ("timm:test_vit:depth=2:depth=3", r"'depth' appears twice"),
    ("timm:test_vit:act_layer=a/b", r"act_layer='a/b' .* is not a number, true/false/none or a plain word"),
    ("timm:test_vit:no_such_arg=1", r"'test_vit' does not take the arguments \{'no_such_arg': 1\}"),
])
def test_a_bad_argument_in_a_timm_name_is_one_line(name, message):
    with pytest.raises(UserError, match=message) as e:
        build_model(name, 1, 3, image_size=28)
    assert "\n" not in str(e.value)


def test_timm_argument_values_are_numbers_flags_or_words():
    from harness.config.spec import parse_timm_name

    assert parse_timm_name("timm:test_vit:patch_size=7:drop_path_rate=0.1:class_token=false:"
                           "global_pool=avg:init_values=none") == (
        "test_vit", {"patch_size": 7, "drop_path_rate": 0.1, "class_token": False,
                     "global_pool": "avg", "init_values": None})
    assert parse_timm_name("timm:resnet18") == ("resnet18", {})
