import hashlib
import json

import pytest
import torch

from harness.config.spec import PretrainRecipe
from harness.paths import cache_dir
from harness.train.pretrain import pretrained_backbone, recipe_key

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
    ("batch_size", 16), ("lr", 0.01), ("weight_decay", 0.0), ("seed", 1), ("augment", ("rotate:45",)),
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


class _Opens:
    """Unpickled with full trust, this object opens (creates) ``path``: code in a checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "harness.train.pretrain"]


def _matching_digest(path, meta):
    """Record ``path``'s digest in ``meta``, as someone who wrote both files would."""
    info = json.loads(meta.read_text())
    meta.write_text(json.dumps({**info, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))


def test_a_checkpoint_holding_code_is_refused_for_safety_in_one_line_and_rebuilt(fresh_cache,
                                                                                caplog):
    first = pretrained_backbone(RECIPE)
    path, meta, marker = first.path, first.path.with_suffix(".json"), fresh_cache / "ran"
    torch.save({**first.state_dict, "extra": _Opens(marker)}, path)
    _matching_digest(path, meta)
    caplog.set_level("WARNING", logger="harness.train.pretrain")
    again = pretrained_backbone(RECIPE)
    assert not again.cached and not marker.exists()
    assert _warnings(caplog) == [
        f"pretrained checkpoint {path} was refused for safety: it holds code or objects that are "
        + "not tensors (the pickle names io.open); rebuilding it"]
    assert pretrained_backbone(RECIPE).cached  # the rebuilt file holds tensors only


def test_an_unreadable_checkpoint_is_one_line_without_advice_to_load_it_anyway(fresh_cache, caplog):
    first = pretrained_backbone(RECIPE)
    path, meta = first.path, first.path.with_suffix(".json")
    path.write_bytes(b"not a checkpoint")
    _matching_digest(path, meta)
    caplog.set_level("WARNING", logger="harness.train.pretrain")
    assert not pretrained_backbone(RECIPE).cached
    [warning] = _warnings(caplog)
    assert warning == (f"pretrained checkpoint {path} is unusable (UnpicklingError: Unsupported "
                       "operand 110); rebuilding it")


def test_recipes_without_augmentation_keep_their_old_key():
    import hashlib
    from dataclasses import asdict

    # fields added since (augment, optimizer, objective) leave the key alone at their defaults
    new = ("augment", "optimizer", "objective")
    old_fields = {k: v for k, v in asdict(RECIPE).items() if k not in new}
    blob = json.dumps({**old_fields, "format": 1}, sort_keys=True)
    assert recipe_key(RECIPE) == hashlib.sha256(blob.encode()).hexdigest()[:20]
    # a TOML list hashes like the tuple
    assert recipe_key(RECIPE.__class__(augment=["rotate:45"])) == recipe_key(
        RECIPE.__class__(augment=("rotate:45",)))


def test_rotation_augmentation_draws_a_fresh_angle_per_example_and_copy():
    from harness.data.core import Split
    from harness.data.ood import ood_split
    from harness.train.pretrain import augmented

    x = torch.randn(6, 1, 10, 10)
    split = Split(x, torch.arange(6))
    out = augmented(split, ("rotate:45",), copies=3, seed=0)
    assert out.x.shape == (18, 1, 10, 10) and out.y.tolist() == list(range(6)) * 3
    assert not torch.allclose(out.x[:6], out.x[6:12])  # each copy is a new draw
    assert torch.equal(out.x, augmented(split, ("rotate:45",), copies=3, seed=0).x)  # seeded
    assert torch.allclose(augmented(split, ("rotate:0",), 1, 0).x, x, atol=1e-5)
    # with one fixed angle, the per-image rotation is the OOD set's rotation
    from harness.train.pretrain import _rotate_each

    same = _rotate_each(x, torch.full((6,), 30.0))
    assert torch.allclose(same, ood_split("rotate:30", split, range(6)).x, atol=1e-5)


@pytest.mark.parametrize("augment", [("flip",), ("rotate:x",), ("rotate:-5",), "rotate:45"])
def test_a_bad_augmentation_is_a_user_error_naming_what_is_accepted(augment):
    from harness.config.spec import parse_augment
    from harness.errors import UserError

    with pytest.raises(UserError, match="rotate"):
        parse_augment(augment)


def test_augmented_pretraining_trains_one_pass_over_fresh_draws(fresh_cache):
    import dataclasses

    pre = pretrained_backbone(dataclasses.replace(RECIPE, augment=("rotate:30",)))
    plain = pretrained_backbone(RECIPE)
    assert pre.path != plain.path and not pre.cached
    assert any(not torch.equal(pre.state_dict[k], plain.state_dict[k]) for k in pre.state_dict)
    assert pre.source_val_accuracy > 0.5
