"""Text tasks: the standard-library corpus, byte tokens, the text transformer, LM pretraining."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from harness.config.spec import PretrainRecipe, StudySpec
from harness.data.core import Split, load_dataset
from harness.data.sources import text
from harness.data.task import load_task
from harness.errors import UserError
from harness.models.core import blocks, build_model
from harness.registry import STRATEGIES
from harness.run.preflight import check_runnable
from harness.train.pretrain import augmented, pretrained_backbone, recipe_key
from harness.train.strategy import build_plan

TINY_LM = PretrainRecipe(model="text_transformer", dataset="pystdlib", classes=(0, 1),
                         objective="lm", optimizer="adamw", epochs=1, batch_size=256, lr=3e-3,
                         weight_decay=0.01)


def test_corpus_is_the_same_on_every_call_and_leaves_tests_out():
    x1, y1 = text.pystdlib()
    x2, y2 = text.pystdlib()
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    files = text.package_files("unittest")
    assert files == sorted(files) and files
    assert not any(p.startswith("test") for f in files for p in f.relative_to(text.stdlib_root()).parts)


def test_byte_tokens_round_trip_any_text_and_a_package():
    s = "def f(x):\n    return 'caf\u00e9 \u2192 \U0001f40d'\n"
    assert text.decode(text.encode(s)) == s
    assert max(text.encode(s)) < text.VOCAB
    source = text.package_text("json")
    assert text.decode(text.encode(source)) == source


def test_pystdlib_is_int64_token_windows_ten_balanced_packages():
    x, y = load_dataset("pystdlib")
    assert x.dtype == torch.int64 and x.shape == (10 * text.PER_CLASS, text.WINDOW)
    assert 0 <= int(x.min()) and int(x.max()) < text.VOCAB
    assert torch.bincount(y).tolist() == [text.PER_CLASS] * 10
    # class 5's first window is the start of http's text
    start = text.encode(text.package_text("http"))[: text.WINDOW]
    assert x[5 * text.PER_CLASS].tolist() == start


def test_edits_change_only_the_order_of_bytes_and_are_balanced():
    x, y = load_dataset("pystdlib_edits")
    originals = np.concatenate([text.windows(text.package_text(p)) for p in text.TARGET_PACKAGES])
    assert x.shape == originals.shape and x.dtype == torch.int64
    assert torch.bincount(y).tolist() == [len(x) // len(text.EDITS)] * len(text.EDITS)
    assert np.array_equal(np.sort(x.numpy(), axis=1), np.sort(originals, axis=1))
    kept = (y == text.EDITS.index("original")).numpy()
    assert np.array_equal(x.numpy()[kept], originals[kept])
    rev = (y == text.EDITS.index("reversed")).numpy()
    assert np.array_equal(x.numpy()[rev], originals[rev][:, ::-1])


def test_text_transformer_follows_the_model_contract():
    model = build_model("text_transformer", 64, 5)
    assert blocks(model) == ["embed", "block0", "block1", "norm", "head"]
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 5
    for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):  # LoRA can wrap these
        assert isinstance(model.block0.get_submodule(name), nn.Linear)
    ids = torch.randint(0, text.VOCAB, (3, text.WINDOW))
    assert model(ids).shape == (3, 5) and model[:-1](ids).shape == (3, model.head.in_features)
    with pytest.raises(ValueError, match="int token ids"):
        model(torch.randn(3, 1, 8, 8))


def test_text_transformer_is_causal_so_a_position_never_reads_its_future():
    model = build_model("text_transformer", 64, 5).eval()
    ids = torch.randint(0, text.VOCAB, (1, 16))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % text.VOCAB
    trunk = model[:-2]
    assert torch.allclose(trunk(ids)[:, :-1], trunk(changed)[:, :-1])


def test_image_only_options_are_refused_on_text_in_one_line():
    with pytest.raises(UserError, match="token sequences"):
        load_task("pystdlib_edits", ood=["rotate:30"])
    spec = StudySpec(name="t", description="", dataset="pystdlib_edits", classes=None,
                     strategies=("linear_probe",), model="text_transformer",
                     executions=("eager+channels_last",))
    with pytest.raises(UserError, match="channels_last") as err:
        check_runnable(spec)
    assert "\n" not in str(err.value)
    task = load_task("pystdlib", (0, 1))
    with pytest.raises(UserError, match="augment"):
        augmented(Split(task.train.x, task.train.y), ("rotate:30",), 1, 0)


def test_lm_pretraining_is_cached_and_the_key_records_the_python_version(monkeypatch):
    first = pretrained_backbone(TINY_LM)
    second = pretrained_backbone(TINY_LM)
    assert not first.cached and second.cached
    assert all(torch.equal(first.state_dict[k], v) for k, v in second.state_dict.items())
    assert 0.2 < first.source_val_accuracy < 1.0  # next-byte accuracy: far above 1/256
    key = recipe_key(TINY_LM)
    assert recipe_key(replace(TINY_LM, objective="classify")) != key
    monkeypatch.setattr(text.pystdlib, "fingerprint", "py9.99")
    assert recipe_key(TINY_LM) != key


def test_random_probe_redraws_every_backbone_weight_and_keeps_the_head():
    torch.manual_seed(0)
    model = build_model("text_transformer", 64, 5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # stands for pretrained weights: none of them is an initial value
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model, plan = build_plan("random_probe", STRATEGIES.get("random_probe")(), model,
                             {"lr": 0.1, "weight_decay": 0.0}, 2)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if not k.startswith("head.")}
    assert plan.phases[0].trainable == ("head",)


def test_a_pretrain_objective_other_than_classify_or_lm_is_one_line_user_error():
    spec = StudySpec(name="t", description="", dataset="pystdlib_edits", classes=None,
                     strategies=("linear_probe",), model="text_transformer", pretrain=TINY_LM)
    spec.validate()
    with pytest.raises(UserError, match="objective must be one of .*'mlm'"):
        replace(spec, pretrain=replace(TINY_LM, objective="mlm")).validate()
