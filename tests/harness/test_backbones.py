"""Backbones as blocks: torchvision's computation, offline weights, and every strategy on each.

Models run on 32 px inputs (ViT on 2x2 patches) so the whole file stays quick on a CPU; only
``resnet_small`` trains.
"""

import copy
import functools

import optuna
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import interpolate_embeddings

from harness.data.core import Split
from harness.errors import UserError
from harness.models.core import HEAD, blocks, build_model
from harness.models.torchvision import (
    TORCHVISION,
    imagenet_file,
    load_backbone_weights,
    torchvision_keys,
)
from harness.registry import MODELS, STRATEGIES
from harness.train.loop import LoopConfig, train
from harness.train.phases import apply_phase
from harness.train.strategy import build_plan

NAMES = MODELS.names()
SIZE = 32
EXPECTED_BLOCKS = {
    "resnet18": ["stem", "layer1", "layer2", "layer3", "layer4", "head"],
    "resnet50": ["stem", "layer1", "layer2", "layer3", "layer4", "head"],
    "mobilenet_v3_small": ["stem", "stage1", "stage2", "stage3", "stage4", "last_conv",
                           "pre_logits", "head"],
    "efficientnet_b0": ["stem", *[f"stage{i}" for i in range(1, 8)], "last_conv", "head"],
    "convnext_tiny": ["stem", "stage1", "stage2", "stage3", "stage4", "norm", "head"],
    "vit_b_16": ["stem", *[f"layer{i}" for i in range(1, 13)], "norm", "head"],
    "resnet_small": ["stem", "layer1", "layer2", "layer3", "head"],
}


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test instead of reaching the network."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _torchvision_model(name, num_classes=5, **kwargs):
    """A random torchvision model whose head and BatchNorm statistics are random too.

    torchvision zero-initialises ViT's head, and fresh statistics are 0 and 1: both would hide a
    head or a buffer that was not carried over.
    """
    if name == "vit_b_16":
        kwargs.setdefault("image_size", SIZE)
    torch.manual_seed(1)
    tv = getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kwargs)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        head = tv.get_submodule({"resnet18": "fc", "resnet50": "fc", "vit_b_16": "heads.head"}
                                .get(name, "classifier")).modules()
        for m in head:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.05)
    return tv.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(name)``: a random torchvision model (5 classes) and its state dict in a file."""

    @functools.cache
    def get(name):
        tv = _torchvision_model(name)
        path = tmp_path_factory.mktemp(name) / "torchvision.pth"
        torch.save(tv.state_dict(), path)
        return tv, path

    return get


def _x(channels=3, size=SIZE, n=2):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(0))


@functools.cache
def _meta_model(name):
    with torch.device("meta"):  # structure only: nothing allocated, instant even for ViT
        return build_model(name, 3, 5, image_size=SIZE)


@pytest.mark.parametrize("name", NAMES)
def test_blocks_run_from_the_stem_to_a_linear_head(name):
    model = _meta_model(name)
    children = [n for n, _ in model.named_children()]
    assert blocks(model) == [n for n in children if n in blocks(model)]  # in the model's order
    assert blocks(model)[0] == children[0] and blocks(model)[-1] == children[-1] == HEAD
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 5
    if name in EXPECTED_BLOCKS:
        assert blocks(model) == EXPECTED_BLOCKS[name]


# torchvision's models compute logits from 3 channels in the test against torchvision below;
# the text model reads token ids (tests/harness/test_text.py runs it)
IMAGE_NAMES = [n for n in NAMES if n != "text_transformer"]


@pytest.mark.parametrize("name, channels", [(n, 1) for n in IMAGE_NAMES] + [
    (n, 3) for n in IMAGE_NAMES if n not in TORCHVISION])
def test_forward_gives_logits_for_each_image(name, channels):
    torch.manual_seed(0)
    model = build_model(name, channels, 5, image_size=SIZE).eval()
    with torch.no_grad():
        out = model(_x(channels))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", TORCHVISION)
def test_every_torchvision_key_maps_to_one_block_key(name):
    keys = torchvision_keys(name)
    with torch.device("meta"):
        tv_keys = getattr(torchvision.models, name)(weights=None).state_dict().keys()
        ours = build_model(name, 3, 1000).state_dict().keys()
    assert keys.keys() == tv_keys and sorted(keys.values()) == sorted(ours)


@pytest.mark.parametrize("name", TORCHVISION)
def test_blocks_compute_what_torchvision_computes_with_its_weights(name, saved):
    tv, path = saved(name)
    model = build_model(name, 3, 5, image_size=SIZE)
    load_backbone_weights(name, model, str(path))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(_x()), tv(_x()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet_small", "resnet18"])  # resnet18: layer keys shared
def test_weights_in_our_block_layout_load_too(name, tmp_path):
    torch.manual_seed(0)
    src = build_model(name, 3, 5).eval()
    torch.save(src.state_dict(), tmp_path / "ours.pth")
    torch.manual_seed(1)
    model = build_model(name, 3, 5)
    load_backbone_weights(name, model, str(tmp_path / "ours.pth"))
    with torch.no_grad():
        assert torch.equal(model.eval()(_x()), src(_x()))


def _to_hub(tmp_path, monkeypatch, tv, name):
    """Put ``tv``'s weights where torchvision would cache ImageNet's, under a fresh TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = imagenet_file(name)
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    return path


def test_imagenet_weights_load_from_the_hub_cache_under_the_enums_file_name(tmp_path, monkeypatch):
    name = "mobilenet_v3_small"
    tv = _torchvision_model(name, num_classes=1000)
    path = _to_hub(tmp_path, monkeypatch, tv, name)
    assert path == tmp_path / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    model = build_model(name, 3, 1000)
    load_backbone_weights(name, model, "imagenet")
    with torch.no_grad():
        assert torch.equal(model.eval()(_x()), tv(_x()))


def test_head_for_other_classes_is_not_loaded(tmp_path, monkeypatch):
    name = "mobilenet_v3_small"
    tv = _torchvision_model(name, num_classes=1000)
    _to_hub(tmp_path, monkeypatch, tv, name)
    model = build_model(name, 3, 7)
    fresh_head = {k: v.clone() for k, v in model.head.state_dict().items()}
    load_backbone_weights(name, model, "imagenet")
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in fresh_head.items())
    assert torch.equal(model.pre_logits[0].weight, tv.classifier[0].weight)
    with torch.no_grad():  # everything below the head is torchvision's
        assert torch.equal(model[:-1].eval()(_x()), tv.classifier[:-1](tv.avgpool(
            tv.features(_x())).flatten(1)))


def test_one_channel_model_gets_the_rgb_first_conv_summed(saved):
    tv, path = saved("resnet18")
    model = build_model("resnet18", 1, 5)
    load_backbone_weights("resnet18", model, str(path))
    assert model.stem.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.equal(model.stem.conv1.weight, tv.conv1.weight.sum(1, keepdim=True))
    with torch.no_grad():  # a grey image is an RGB image with three equal channels
        grey = _x(1)
        torch.testing.assert_close(model.eval()(grey), tv(grey.expand(-1, 3, -1, -1)))


def test_vit_position_embedding_is_interpolated_to_the_models_image_size(saved):
    tv, path = saved("vit_b_16")  # 32 px: a 2x2 grid of patches
    model = build_model("vit_b_16", 3, 5, image_size=64)
    load_backbone_weights("vit_b_16", model, str(path))
    expected = interpolate_embeddings(64, 16, tv.state_dict())["encoder.pos_embedding"]
    assert model.stem.pos_embedding.shape == (1, 17, 768)
    assert torch.equal(model.stem.pos_embedding, expected)
    assert torch.equal(model.layer12.mlp[0].weight, tv.encoder.layers[-1].mlp[0].weight)
    with torch.no_grad():
        assert model.eval()(_x(size=64)).shape == (2, 5)


def test_vit_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(UserError, match=r"multiple of 16, but got image_size=28"):
        build_model("vit_b_16", 1, 10, image_size=28)


def test_missing_imagenet_weights_say_where_to_put_them_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as e:
        load_backbone_weights("resnet18", build_model("resnet18", 3, 5), "imagenet")
    msg = str(e.value)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "\n" not in msg and f"not found at {expected}" in msg
    assert "TORCH_HOME" in msg and "weights=PATH" in msg and "nothing is downloaded" in msg


def test_missing_weights_file_and_models_without_imagenet_weights_are_user_errors(tmp_path):
    model = build_model("resnet_small", 3, 5)
    with pytest.raises(UserError, match=r"weights file not found: .*nope\.pth; pass the path"):
        load_backbone_weights("resnet_small", model, str(tmp_path / "nope.pth"))
    with pytest.raises(UserError, match="'resnet_small' has no torchvision ImageNet weights"):
        load_backbone_weights("resnet_small", model, "imagenet")


@pytest.mark.parametrize("content, message", [
    (nn.Linear(2, 2), ("was refused for safety: it holds code or objects that are not tensors "
                       r"\(the pickle names torch.nn.modules.linear.Linear\)")),
    ({"epoch": 3}, r"is not a state dict \(names -> tensors\): found 'epoch': int"),
    (b"not a checkpoint", (r"is not a file written by torch.save \(UnpicklingError: "
                           r"Unsupported operand 110\)\.$")),
    ("resnet_small", "does not fit model 'mobilenet_v3_small': keys .* missing .* unexpected"),
])
def test_a_file_that_is_not_matching_weights_is_a_one_line_user_error(tmp_path, content, message):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        torch.save(build_model(content, 3, 5).state_dict(), path)
    else:
        torch.save(content, path)
    with pytest.raises(UserError, match=message) as e:
        load_backbone_weights("mobilenet_v3_small", build_model("mobilenet_v3_small", 3, 5), path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


class _Opens:
    """Unpickled with full trust, this object opens (creates) ``path``: code in a weights file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _malicious(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "w.pth"
    torch.save({"stem.0.weight": torch.zeros(1), "extra": _Opens(marker)}, path)
    return path, marker


def test_a_pickle_holding_code_is_refused_for_safety_in_plain_words(tmp_path):
    path, marker = _malicious(tmp_path)
    with pytest.raises(UserError) as e:
        load_backbone_weights("resnet_small", build_model("resnet_small", 3, 5), path)
    msg = str(e.value)
    assert msg == (f"weights file {path} was refused for safety: it holds code or objects that are "
                   "not tensors (the pickle names io.open); the harness loads only tensors: save "
                   "model.state_dict() with torch.save and pass that file.")
    assert "weights_only" not in msg and "trust" not in msg  # no advice to load it anyway
    assert not marker.exists()


@pytest.mark.parametrize("protocol, message", [
    (2, (r"was refused for safety: it holds code or objects that are not tensors \(the pickle "
         r"names io.open\)")),
    (5, r"is not a file written by torch.save \(UnpicklingError: Unsupported operand 149\)\.$"),
])
def test_a_plain_pickle_holding_code_is_refused_without_advice_to_load_it(tmp_path, recwarn,
                                                                           protocol, message):
    import pickle

    marker, path = tmp_path / "ran", tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"w": _Opens(marker)}, protocol=protocol))
    with pytest.raises(UserError, match=message) as e:
        load_backbone_weights("resnet_small", build_model("resnet_small", 3, 5), path)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists() and not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_a_study_with_such_weights_exits_2_with_one_line(tmp_path, capsys):
    from harness.cli import main

    path, marker = _malicious(tmp_path)
    f = tmp_path / "s.toml"
    f.write_text(f'dataset = "digits"\nstrategies = ["linear_probe"]\nmodel = "resnet_small"\n'
                 f'weights = "{path}"\n')
    assert main(["study", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "was refused for safety" in err, err
    assert "weights_only" not in err and not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("strategy", STRATEGIES.names())
@pytest.mark.parametrize("name", NAMES)
def test_every_strategy_plans_on_every_backbone(name, strategy):
    """Valid plans whose phases find parameters to train in every block they name. A strategy
    made for one family (it names its own ``test_model``: adapters and prompts for
    transformers, VeRA for Linear layers) may refuse another with a one-line PlanError, never
    with anything else; every other strategy plans on every backbone."""
    from harness.train.strategy import PlanError

    own_family = hasattr(STRATEGIES.get(strategy), "test_model")
    for seed in range(3):
        model = copy.deepcopy(_meta_model(name))  # prepare() changes the model: a fresh copy
        hp = STRATEGIES.get(strategy)().search_space(
            optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask())
        try:
            model, plan = build_plan(strategy, STRATEGIES.get(strategy)(), model, hp, 10)
        except PlanError as e:
            if not own_family:
                raise
            assert "\n" not in str(e) and strategy in str(e)
            return
        for phase in plan.phases:
            # every block it names trains, and so does every block holding a parameter that
            # one of its patterns selects (BitFit's biases): nothing else
            selected = [b for b in blocks(model) if any(
                phase.selects(b, f"{b}.{n}") for n, _ in getattr(model, b).named_parameters())]
            assert [g["block"] for g in apply_phase(model, phase)] == selected
            assert set(phase.trainable) <= set(selected)


def test_resnet_small_takes_a_real_training_step():
    torch.manual_seed(0)
    model = build_model("resnet_small", 1, 2)
    before = {k: v.clone() for k, v in model.named_parameters()}
    x = _x(1, size=28, n=16)
    data = Split(x, (x.mean(dim=(1, 2, 3)) > 0).long())
    plan = STRATEGIES.get("full_finetune")().plan(blocks(model), {}, 1)
    res = train(model, plan, data, data, LoopConfig(epochs=1, batch_size=8, lr=0.05))
    assert len(res.step_losses) == 2 and all(torch.isfinite(torch.tensor(res.step_losses)))
    assert all(not torch.equal(before[k], p) for k, p in model.named_parameters())
