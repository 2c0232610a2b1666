"""Pretraining on the source task, cached on disk by a hash of its recipe.

The source task is part of the study, so backbones are trained here rather than downloaded. A
checkpoint is ``<cache>/pretrained/<key>.pt`` with ``<key>.json`` beside it holding the recipe,
the source validation accuracy and the checkpoint's SHA-256. The JSON is written last, so a
checkpoint without it is incomplete; a checkpoint whose digest, format or weights do not match is
corrupt. Either way it is rebuilt. Checkpoints load with ``weights_only=True``.

A recipe's ``augment`` (``("rotate:45",)``) makes pretraining cover a shift: the source training
split is drawn once per epoch, each example rotated by its own angle uniform in [-45, 45] degrees
(seeded by the recipe's seed), and the loop trains one shuffled pass over the copies, so every
example is seen ``epochs`` times, each time at a fresh angle. Validation stays unaugmented.

The cache lives in ``$HARNESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/finetune-harness``, else
``~/.cache/finetune-harness``."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness._io import atomic_write_bytes, atomic_write_text
from harness.config.spec import PretrainRecipe, parse_augment, parse_dataset
from harness.data.core import Split
from harness.data.task import load_task
from harness.errors import UserError
from harness.models.core import blocks, build_model
from harness.models.torchvision import load_error, refusal
from harness.paths import cache_dir
from harness.registry import DATASETS
from harness.train.lm import train_language_model
from harness.train.loop import LoopConfig, train
from harness.train.strategy import Optimizer, Phase, Plan

log = logging.getLogger(__name__)


CACHE_FORMAT = 1  # bump when the checkpoint layout or the pretraining code changes its result




def recipe_key(recipe: PretrainRecipe) -> str:
    """The cache key: a hash of the recipe and of the checkpoint format."""
    fields = asdict(recipe)
    if not fields["augment"]:
        del fields["augment"]  # recipes from before the field keep their key (and checkpoint)
    else:
        fields["augment"] = list(fields["augment"])  # a TOML list and a tuple hash alike
    if fields["optimizer"] == "sgd":
        del fields["optimizer"]  # likewise
    if fields["objective"] == "classify":
        del fields["objective"]  # recipes from before the field keep their key
    fingerprint = getattr(DATASETS.get(parse_dataset(recipe.dataset)[0]), "fingerprint", None)
    if fingerprint is not None:  # text read from the interpreter: its version is in the key
        fields["data"] = fingerprint
    blob = json.dumps({**fields, "format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]



def augmented(split: Split, augment, copies: int, seed: int) -> Split:
    """``copies`` randomly augmented copies of ``split``, concatenated (on the split's device).

    ``rotate:DEG``: each example of each copy is rotated by its own angle, uniform in
    [-DEG, DEG] degrees, with the border extended (as :mod:`harness.data.shifts.rotate` does).
    """
    if not split.x.is_floating_point():
        raise UserError(f"pretrain augment {list(augment)} transforms images, but the source "
                        f"task holds token sequences ({split.x.dtype}); leave augment empty.")
    kinds = parse_augment(augment)
    g = torch.Generator().manual_seed(seed)
    xs = []
    for _ in range(copies):
        x = split.x.cpu()
        for kind, value in kinds:
            if kind == "rotate":
                x = _rotate_each(x, (2 * torch.rand(len(x), generator=g) - 1) * value)
        xs.append(x)
    return Split(torch.cat(xs).to(split.x.device), split.y.repeat(copies))


def _rotate_each(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    # harness.data.shifts.rotate with one angle per image
    h, w = x.shape[-2:]
    rad = torch.deg2rad(degrees.to(x.dtype))
    c, s = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(c)
    theta = torch.stack([torch.stack([c, -s * h / w, zero], 1),
                         torch.stack([s * w / h, c, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class Pretrained:
    recipe: PretrainRecipe
    state_dict: dict[str, torch.Tensor]
    source_val_accuracy: float
    cached: bool  # True when loaded from the cache, False when trained by this call
    seconds: float  # pretraining wall time (of the run that built the checkpoint)
    path: Path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_cached(recipe: PretrainRecipe, ckpt: Path, meta: Path) -> Pretrained | None:
    """The cached checkpoint, or None (with a warning) when it is missing, incomplete or corrupt."""
    if not ckpt.exists():
        return None
    try:
        info = json.loads(meta.read_text())
        if info["sha256"] != _sha256(ckpt):
            raise ValueError("checksum mismatch")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        task_classes = len(recipe.classes)
        build_model(recipe.model, int(info["in_channels"]), task_classes,
                    image_size=info.get("image_size")).load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - any defect of the file means: rebuild it
        # one line, and never torch's advice to load a refused file with weights_only=False
        if why := refusal(e):
            log.warning("pretrained checkpoint %s was refused for safety: %s; rebuilding it",
                        ckpt, why)
        else:
            log.warning("pretrained checkpoint %s is unusable (%s); rebuilding it", ckpt,
                        load_error(e))
        return None
    return Pretrained(recipe, state, float(info["source_val_accuracy"]), True, float(info["seconds"]), ckpt)


def pretrained_backbone(recipe: PretrainRecipe, device: str | torch.device = "cpu") -> Pretrained:
    """The backbone pretrained by ``recipe``: from the cache when present and sound, else trained now."""
    root = cache_dir() / "pretrained"
    ckpt, meta = root / f"{recipe_key(recipe)}.pt", root / f"{recipe_key(recipe)}.json"
    cached = _load_cached(recipe, ckpt, meta)
    if cached is not None:
        return cached

    task = load_task(recipe.dataset, recipe.classes, device=device)
    torch.manual_seed(recipe.seed)
    # the image size reaches only backbones that need it (a ViT's position embedding)
    model = build_model(recipe.model, task.input_shape[0], task.n_classes,
                        image_size=task.input_shape[-1]).to(device)
    if recipe.objective == "lm":  # next-token prediction (harness.train.lm)
        if recipe.augment:
            augmented(task.train, recipe.augment, 1, recipe.seed)  # refuses token inputs
        t0 = time.perf_counter()
        val_acc = train_language_model(model, task.train.x, task.val.x, recipe.epochs,
                                       recipe.batch_size, recipe.lr, recipe.weight_decay,
                                       recipe.seed)
        return _store(recipe, model, task.input_shape[0], val_acc, time.perf_counter() - t0)
    plan = Plan((Phase("pretrain", 0, trainable=tuple(blocks(model)), bn_mode="train",
                       optimizer=Optimizer(name=recipe.optimizer)),))
    plan.validate(blocks(model), recipe.epochs)  # an unknown optimizer name: a PlanError here
    train_split, epochs = task.train, recipe.epochs
    t0 = time.perf_counter()
    if recipe.augment:
        # a fresh draw per epoch, trained as one pass: about as many steps, one cosine schedule
        train_split, epochs = augmented(task.train, recipe.augment, recipe.epochs, recipe.seed), 1
    cfg = LoopConfig(epochs=epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                     weight_decay=recipe.weight_decay, seed=recipe.seed)
    result = train(model, plan, train_split, task.val, cfg)
    seconds = time.perf_counter() - t0
    val_acc = result.epochs[-1].val_accuracy
    return _store(recipe, model, task.input_shape[0], val_acc, seconds,
                  image_size=task.input_shape[-1])


def _store(recipe: PretrainRecipe, model: torch.nn.Module, in_channels: int,
           val_acc: float, seconds: float, image_size: int | None = None) -> Pretrained:
    """Write the checkpoint, then its JSON (last: a checkpoint without it is incomplete)."""
    root = cache_dir() / "pretrained"
    ckpt, meta = root / f"{recipe_key(recipe)}.pt", root / f"{recipe_key(recipe)}.json"
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(ckpt, buf.getvalue())
    info = {
        "recipe": asdict(recipe), "format": CACHE_FORMAT, "sha256": _sha256(ckpt),
        "in_channels": in_channels, "source_val_accuracy": val_acc, "seconds": seconds,
        "image_size": image_size,
    }
    atomic_write_text(meta, json.dumps(info, indent=2))
    return Pretrained(recipe, state, val_acc, False, seconds, ckpt)
