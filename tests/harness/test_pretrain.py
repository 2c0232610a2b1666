import json

import pytest
import torch

from harness.pretrain import cache_dir, pretrained_backbone, recipe_key
from harness.spec import PretrainRecipe

RECIPE = PretrainRecipe(dataset="digits", classes=(0, 1, 2, 3, 4), epochs=2, batch_size=32)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_second_call_reuses_the_checkpoint(fresh_cache):
    first = pretrained_backbone(RECIPE)
    second = pretrained_backbone(RECIPE)
    assert not first.cached and second.cached
    assert first.path == second.path == cache_dir() / "pretrained" / f"{recipe_key(RECIPE)}.pt"
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    assert second.source_val_accuracy == first.source_val_accuracy > 0.5


@pytest.mark.parametrize("field, value", [
    ("model", "other"), ("dataset", "mnist5k"), ("classes", (0, 1, 2)), ("epochs", 3),
    ("batch_size", 16), ("lr", 0.01), ("weight_decay", 0.0), ("seed", 1),
])
def test_key_changes_with_every_recipe_field(field, value):
    import dataclasses

    assert {f.name for f in dataclasses.fields(PretrainRecipe)} >= {field}
    assert recipe_key(RECIPE) != recipe_key(dataclasses.replace(RECIPE, **{field: value}))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage", "drop_meta"])
def test_a_corrupt_checkpoint_is_detected_and_rebuilt(fresh_cache, damage):
    first = pretrained_backbone(RECIPE)
    path, meta = first.path, first.path.with_suffix(".json")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        meta.unlink()
    again = pretrained_backbone(RECIPE)
    assert not again.cached  # rebuilt, not loaded
    assert all(torch.equal(first.state_dict[k], again.state_dict[k]) for k in first.state_dict)
    assert json.loads(meta.read_text())["sha256"]
    assert pretrained_backbone(RECIPE).cached  # and the rebuilt file is sound


def test_checkpoints_load_with_weights_only(fresh_cache):
    first = pretrained_backbone(RECIPE)
    state = torch.load(first.path, weights_only=True)
    assert set(state) == set(first.state_dict)
