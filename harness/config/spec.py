"""Frozen specs: what a study compares (:class:`StudySpec`) and what one trial runs (:class:`TrialConfig`).

A study is found by name in the ``STUDIES`` registry or read from a TOML file whose keys are
the fields of :class:`StudySpec` (a ``[pretrain]`` table for :class:`PretrainRecipe`); unknown
keys fail loudly.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import UserError
from harness.registry import DATASETS, MODELS, STRATEGIES, STUDIES

LOADERS = ("resident", "dataloader")

AUGMENTS = {"rotate": "DEG"}  # kind -> what its value means

__all__ = [
    "TIMM_PREFIX",
    "PretrainRecipe",
    "StudySpec",
    "TrialConfig",
    "budget_label",
    "check_model_name",
    "check_timm_name",
    "device_problem",
    "load_study",
    "parse_timm_name",
    "resolve_device",
    "safe_component",
    "spec_from_dict",
]


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines a pretrained backbone; its hash is the cache key."""

    model: str = "small_cnn"
    dataset: str = "mnist5k"
    classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0
    # random augmentation of the source training split, e.g. ("rotate:45",): one copy of the
    # split per epoch, each example rotated by its own angle uniform in [-45, 45] degrees, trained
    # as one shuffled pass (harness.train.pretrain); empty: none, and the cache key is unchanged
    augment: tuple[str, ...] = ()
    # "sgd" (Nesterov, the CNNs' recipe) or "adamw" (transformers train poorly with SGD); the
    # default leaves the cache key of every recipe from before the field unchanged
    optimizer: str = "sgd"
    # "classify": the source classes' labels; "lm": next-token prediction on the source split's
    # token sequences (text backbones), the labels unused; the default keeps the cache key
    objective: str = "classify"


PRETRAIN_OBJECTIVES = ("classify", "lm")
_POSITIVE = "positive"


def _check_types(obj: Any, types: Mapping[str, Any], where: str) -> None:
    """Check each field's type (bool is no int here) and that counts are positive."""
    for name, kind in types.items():
        value = getattr(obj, name)
        if kind == _POSITIVE:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            want = "a positive integer"
        elif kind == "ints":
            ok = value is None and name == "classes" or (
                isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool)
                                                 for v in value))
            want = "a list of integers"
        elif kind == "strs":
            ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
            want = "a list of strings"
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            want = "a number"
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            want = "an integer"
        else:
            ok = isinstance(value, kind)
            want = {str: "a string", tuple: "a list"}.get(kind, f"a {kind.__name__}")
        if not ok:
            raise UserError(f"{where} field {name!r} must be {want}, but got {value!r}.")


PRUNERS = ("median", "percentile", "sha", "hyperband", "none")
OBJECTIVES = ("accuracy", "throughput")
SAMPLERS = ("tpe", "random", "grid")


def safe_component(value: object, what: str) -> str:
    """``value`` if it can name one folder or file inside another, else a :class:`UserError`.

    A name that becomes a path (a study's name, a run id read back from a run's files) must not
    climb out of the folder it is joined to. It lives here, not in ``harness.paths``, because
    that module sits beside ``harness.errors`` in the layers and may not import it.

    >>> safe_component("finetune_vs_probe", "study name")
    'finetune_vs_probe'
    """
    text = value if isinstance(value, str) else ""
    if (text in ("", ".", "..") or "/" in text or "\\" in text
            or any(ord(c) < 32 or ord(c) == 127 for c in text)):
        fixed = re.sub(r"[^\w.-]+", "_", str(value)).strip("._")
        raise UserError(f"{what} must be a single folder name, but got {value!r} (it may not be "
                        f"empty, '.' or '..', nor hold '/', '\\' or control characters); rename "
                        f"it" + (f", e.g. {fixed!r}." if fixed else "."))
    return text


def budget_label(shots: int | None) -> str:
    return "all" if shots is None else str(shots)


@dataclass(frozen=True)
class StudySpec:
    """A grid of cells (device x label budget x strategy x execution), each searched by Optuna
    with the same trial budget."""

    name: str
    description: str
    dataset: str  # the target task
    classes: tuple[int, ...] | None  # target classes; None means all
    strategies: tuple[str, ...]
    budgets: tuple[int | None, ...] = (None,)  # labelled examples per class; None means all
    model: str = "small_cnn"
    pretrain: PretrainRecipe | None = None  # None trains from scratch
    epochs: int = 10
    batch_size: int = 64
    trials: int = 8  # Optuna trials per cell, the same for every strategy
    seeds: int = 3  # re-runs of each cell's best config, for the test-accuracy CI
    # "best": re-run the best search config with ``seeds`` seeds; "all": re-run every search
    # config (a grid, say) with them, for claims about how results vary with a hyperparameter
    rerun: str = "best"
    # a grid axis; a device this machine lacks makes skipped cells with the reason
    devices: tuple[str, ...] = ("cpu",)
    # grid axes over several datasets (same classes) or backbones; empty: just dataset / model
    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    executions: tuple[str, ...] = ("eager",)  # labels parsed by harness.config.execution.parse_execution
    # strategy -> hyperparameters Optuna tries first (study.enqueue_trial), e.g. a paper's recipe
    enqueue: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # "median": stop a trial whose val accuracy is below the median of earlier trials at the same
    # epoch (of the same cell), judged from a quarter of the epochs on;
    # "percentile": stop it below the best third instead (from the same epoch on);
    # "sha": successive halving, only the best third of trials reaching epochs E/4 and 3E/4 go on;
    # "hyperband": Hyperband's brackets of successive halving (budgets in epochs);
    # "none": every trial runs to the end
    pruner: str = "median"
    # "tpe" (default), "random", or "grid" (exact reproduction: every combination of ``grid``)
    sampler: str = "tpe"
    # strategy -> {parameter: [values]}: the grid of the "grid" sampler, one per strategy
    grid: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sampler_seed: int = 0
    # what Optuna maximises: validation accuracy, or ("accuracy", "throughput") for a Pareto
    # front of accuracy against training samples/s (multi-objective studies are not pruned)
    objectives: tuple[str, ...] = ("accuracy",)
    # validation accuracy whose first crossing is timed (time_to_target_s); None: not measured
    target_accuracy: float | None = None
    # validation labels per class that select hyperparameters; None: the whole validation split
    # (a fifth of each class). At 10 shots the default selects with 100 labels per class for
    # 10 training labels; a realistic few-shot protocol has about as many as it trains on
    val_per_class: int | None = None
    # at least this many optimisation steps per trial: small budgets get more epochs, so a
    # budget is not confounded with training length; None: every budget trains `epochs` epochs
    min_steps: int | None = None
    # final runs also merge adapters, export with torch.export and time inference at batch 1
    # and 64 (deploy.py): a second or more per final run on the CPU, so only studies that ask
    # what serving costs (the PEFT studies) turn it on; stored bytes are always measured
    deploy: bool = False
    # default root folder of on-disk datasets (torchvision formats); a dataset written as
    # "name:PATH" brings its own; None: $HARNESS_DATA_ROOT, else ~/.cache/harness/data
    data_root: str | None = None
    # out-of-distribution sets evaluated beside the test split in the final runs, e.g.
    # "digits" (another dataset, same classes) or a transform shift "rotate:30", "noise:0.5"
    ood: tuple[str, ...] = ()
    # "resident": every split lives on the device; "dataloader": CPU tensors fed by a
    # DataLoader with ``loader_workers`` workers and pinned memory on CUDA
    loader: str = "resident"
    loader_workers: int = 2
    # backbone weights when not pretrained by the harness: "imagenet" (torchvision's weights
    # from the local torch hub cache) or a path to a state-dict file; None: pretrain or scratch
    weights: str | None = None

    @property
    def dataset_axis(self) -> tuple[str, ...]:
        return self.datasets or (self.dataset,)

    @property
    def model_axis(self) -> tuple[str, ...]:
        return self.models or (self.model,)

    def cells(self) -> list[tuple[str, str, str, int | None, str, str]]:
        """Every (device, dataset, model, budget, strategy, execution), in the order they run."""
        return [(d, ds, m, b, s, e) for d in self.devices for ds in self.dataset_axis
                for m in self.model_axis for b in self.budgets
                for s in self.strategies for e in self.executions]

    @staticmethod
    def cell_id(device: str, dataset: str, model: str, budget: int | None, strategy: str,
                execution: str) -> str:
        return f"{device}/{dataset}/{model}/shots={budget_label(budget)}/{strategy}/{execution}"

    @property
    def pruning(self) -> str:
        """The pruner in effect: Optuna cannot prune multi-objective trials."""
        return "none" if len(self.objectives) > 1 else self.pruner

    def skipped_cells(self) -> dict[tuple[str, str], str]:
        """(device, execution) pairs that cannot run here, each with the reason."""
        from harness.config.execution import parse_execution

        out = {}
        for device in self.devices:
            problem = device_problem(device)
            for label in self.executions:
                if problem is None:
                    try:
                        parse_execution(label).check_device(torch.device(device))
                    except UserError as e:
                        out[device, label] = str(e)
                else:
                    out[device, label] = problem
        return out

    def validate(self) -> StudySpec:
        """Raise :class:`UserError` for the first field that is wrong; return self.

        Field checks only: types, registered names, the grammar of labels. Whether the data,
        OOD sets and weights can be built is the run stage's preflight
        (:func:`harness.run.preflight.check_runnable`).
        """
        _check_types(self, _SPEC_TYPES, "study")
        safe_component(self.name, "study name")  # the run folder is <out>/<name>/<run_id>
        if self.pretrain is not None:
            if not isinstance(self.pretrain, PretrainRecipe):
                raise UserError(f"pretrain must be a table of PretrainRecipe fields, but got {self.pretrain!r}.")
            _check_types(self.pretrain, _RECIPE_TYPES, "pretrain")
            parse_augment(self.pretrain.augment)
            if self.pretrain.objective not in PRETRAIN_OBJECTIVES:
                raise UserError(f"pretrain objective must be one of {PRETRAIN_OBJECTIVES}, but got "
                                f"{self.pretrain.objective!r}.")
        for strategy in self.strategies:
            STRATEGIES.get(strategy)
        for dataset in self.dataset_axis:
            DATASETS.get(parse_dataset(dataset)[0])
        for model in self.model_axis:
            check_model_name(model)
        if self.pretrain is not None:
            DATASETS.get(parse_dataset(self.pretrain.dataset)[0])
            check_model_name(self.pretrain.model)
        for b in self.budgets:
            if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
                raise UserError(f"each budget must be a positive number of shots per class or "
                                f"'all', but got {b!r}.")
        from harness.config.execution import parse_execution

        if not self.executions or not self.strategies or not self.budgets or not self.devices:
            raise UserError("strategies, budgets, executions and devices must each name at least one.")
        for label in self.executions:
            parse_execution(label)
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or not self.objectives or len(set(self.objectives)) != len(self.objectives) \
                or self.objectives[0] != "accuracy":
            raise UserError(f"objectives must be ('accuracy',) or ('accuracy', 'throughput'), "
                            f"but got {list(self.objectives)}.")
        if self.target_accuracy is not None and (
                isinstance(self.target_accuracy, bool)
                or not isinstance(self.target_accuracy, (int, float))
                or not 0 < self.target_accuracy <= 1):
            raise UserError(f"target_accuracy must be a fraction in (0, 1], but got "
                            f"{self.target_accuracy!r}.")
        for key in ("val_per_class", "min_steps"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise UserError(f"{key} must be a positive whole number or None, but got "
                                f"{value!r}.")
        if self.rerun not in ("best", "all"):
            raise UserError(f"rerun must be 'best' or 'all', but got {self.rerun!r}.")
        if self.pruner not in PRUNERS:
            raise UserError(f"pruner must be one of {PRUNERS}, but got {self.pruner!r}.")
        if self.sampler not in SAMPLERS:
            raise UserError(f"sampler must be one of {SAMPLERS}, but got {self.sampler!r}.")
        if self.sampler == "grid":
            missing = [s for s in self.strategies if s not in self.grid]
            if missing:
                raise UserError(f"the grid sampler needs a grid for every strategy, but {missing} "
                                "have none; add [grid.<strategy>] tables of parameter value lists.")
            for strategy, params in self.grid.items():
                bad = {k: v for k, v in params.items() if not isinstance(v, (list, tuple)) or not v}
                if bad:
                    raise UserError(f"grid of {strategy!r} must map each parameter to a non-empty "
                                    f"list of values, but got {bad}.")
        unknown = sorted(set(self.enqueue) - set(self.strategies))
        if unknown:
            raise UserError(f"enqueue names strategies {unknown} that the study does not compare "
                            f"({list(self.strategies)}).")
        if self.loader not in LOADERS or self.loader_workers < 0:
            raise UserError(f"loader must be one of {LOADERS} with loader_workers >= 0, but got "
                            f"{self.loader!r} with {self.loader_workers}.")
        if self.weights is not None and self.pretrain is not None:
            raise UserError("a study takes its backbone from pretrain or from weights, not both; "
                            "drop one of them.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrialConfig:
    """One training run of one strategy with one set of hyperparameters and one seed."""

    study: str
    cell: str
    stage: str  # "search" or "final"
    trial: int
    seed: int
    strategy: str
    hp: Mapping[str, Any] = field(hash=False)
    dataset: str = "mnist5k"
    classes: tuple[int, ...] | None = None
    shots: int | None = None
    model: str = "small_cnn"
    device: str = "cpu"
    execution: str = "eager"
    epochs: int = 10
    batch_size: int = 64
    target_accuracy: float | None = None
    data_root: str | None = None
    ood: tuple[str, ...] = ()
    loader: str = "resident"
    loader_workers: int = 2
    weights: str | None = None
    val_per_class: int | None = None
    deploy: bool = False  # final runs: merge, export and latency too (StudySpec.deploy)


_SPEC_TYPES = {
    "name": str, "description": str, "dataset": str, "model": str, "devices": "strs",
    "datasets": "strs", "models": "strs",
    "classes": "ints", "strategies": "strs", "executions": "strs", "budgets": tuple,
    "epochs": _POSITIVE, "batch_size": _POSITIVE, "trials": _POSITIVE, "seeds": _POSITIVE,
    "sampler_seed": int, "enqueue": Mapping, "pruner": str, "sampler": str, "grid": Mapping,
    "ood": "strs", "loader": str, "loader_workers": int, "objectives": "strs", "rerun": str,
    "deploy": bool,
}
_RECIPE_TYPES = {
    "model": str, "dataset": str, "classes": "ints", "epochs": _POSITIVE,
    "batch_size": _POSITIVE, "lr": float, "weight_decay": float, "seed": int, "augment": "strs",
    "optimizer": str, "objective": str,
}


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used on this machine, or None when it can.

    A name that is no device at all (a typo) raises :class:`UserError`: that is not a machine's
    limit but a mistake.
    """
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from None
    if d.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or mps.")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            return (f"device {device!r} is not available: this machine has no CUDA GPU "
                    "(torch.cuda.is_available() is False); use --device cpu.")
        if d.index is not None and d.index >= torch.cuda.device_count():
            return (f"device {device!r} does not exist: this machine has "
                    f"{torch.cuda.device_count()} CUDA device(s).")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        return f"device {device!r} is not available on this machine; use --device cpu."
    return None


def resolve_device(device: str) -> torch.device:
    """The torch device for ``device``, or a :class:`UserError` saying why it cannot be used."""
    problem = device_problem(device)
    if problem:
        raise UserError(problem)
    return torch.device(device)


def _from_toml(path: Path) -> StudySpec:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot read study file {str(path)!r}: {e}") from None
    raw.setdefault("name", path.stem)
    raw.setdefault("description", f"study from {path}")
    return spec_from_dict(raw, repr(str(path)))


def spec_from_dict(raw: Mapping[str, Any], where: str = "the study") -> StudySpec:
    """The :class:`StudySpec` of a TOML table or of ``StudySpec.to_dict()`` read back from JSON.

    ``device = "cuda"`` is accepted for ``devices = ["cuda"]``.
    """
    raw = dict(raw)
    if "device" in raw and "devices" not in raw:
        raw["devices"] = [raw.pop("device")]
    path = where  # for the messages
    known = {f.name for f in dataclasses.fields(StudySpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"unknown key(s) {unknown} in {path}; allowed: {sorted(known)}.")
    if raw.get("pretrain") is not None:
        if not isinstance(raw["pretrain"], dict):
            raise UserError(f"pretrain in {path} must be a [pretrain] table, but got "
                            f"{raw['pretrain']!r}.")
        pknown = {f.name for f in dataclasses.fields(PretrainRecipe)}
        bad = sorted(set(raw["pretrain"]) - pknown)
        if bad:
            raise UserError(f"unknown key(s) {bad} in [pretrain] of {path}; "
                            f"allowed: {sorted(pknown)}.")
        p = dict(raw["pretrain"])
        for key in ("classes", "augment"):
            if isinstance(p.get(key), list):
                p[key] = tuple(p[key])
        raw["pretrain"] = PretrainRecipe(**p)
    for key in ("datasets", "models"):
        if isinstance(raw.get(key), list) and raw[key] and key[:-1] not in raw:
            raw[key[:-1]] = raw[key][0]  # the first of the axis is the study's dataset / model
    for key in ("strategies", "classes", "executions", "ood", "devices", "objectives", "datasets",
                "models"):
        if isinstance(raw.get(key), list):
            raw[key] = tuple(raw[key])
    if isinstance(raw.get("budgets"), list):
        raw["budgets"] = tuple(None if b == "all" else b for b in raw["budgets"])
    missing = [k for k in ("dataset", "strategies") if k not in raw]
    if missing:
        raise UserError(f"study file {path} lacks required key(s) {missing}.")
    raw.setdefault("classes", None)
    return StudySpec(**raw)


def load_study(name_or_path: str) -> StudySpec:
    """The registered study ``name_or_path``, or the study in that TOML file."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise UserError(f"study file {name_or_path!r} does not exist.")
        return _from_toml(path)
    return STUDIES.get(name_or_path)()


def parse_dataset(name: str, root: str | None = None) -> tuple[str, str | None]:
    """``"cifar10"`` or ``"cifar10:/data/cifar"`` -> the registered name and the root folder.

    A root written after the colon wins over ``root`` (a study's ``data_root``); datasets that
    ship inside packages ignore it.
    """
    base, sep, path = name.partition(":")
    return base, (path if sep and path else root)


TIMM_PREFIX = "timm:"  # "timm:vit_tiny_patch16_224": any model of the timm library, by its name
# what the harness sets itself, from the task and the weights file: never from a model name
_TIMM_RESERVED = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "num_classes",
                  "in_chans", "img_size", "checkpoint_path", "cache_dir")
_TIMM_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _timm_value(key: str, text: str, name: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[low]
    if _TIMM_WORD.fullmatch(text):
        return text
    raise UserError(f"timm argument {key}={text!r} in {name!r} is not a number, true/false/none or "
                    "a plain word; write e.g. timm:test_vit:patch_size=7.")


def parse_timm_name(name: str) -> tuple[str, dict]:
    """``"timm:test_vit:patch_size=7:depth=4"`` -> ``("test_vit", {"patch_size": 7, "depth": 4})``.

    Arguments after the model's name are passed to ``timm.create_model`` (timm's model arguments:
    a ViT's ``patch_size``, ``depth``, ``embed_dim``; ``drop_path_rate``; ...), so a timm model
    can be sized for the task (MNIST's 28 pixels need a patch that divides 28). Only the name is
    checked here; timm refuses an argument its model does not take when the model is built.

    >>> parse_timm_name("timm:test_vit:patch_size=7:global_pool=avg")
    ('test_vit', {'patch_size': 7, 'global_pool': 'avg'})
    """
    arch, *args = name.removeprefix(TIMM_PREFIX).split(":")
    kwargs: dict = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep or not key.isidentifier() or not text:
            raise UserError(f"timm argument {arg!r} in {name!r} is not key=value; write "
                            "timm:<model>:<key>=<value>, e.g. timm:test_vit:patch_size=7.")
        if key in _TIMM_RESERVED:
            raise UserError(f"timm argument {key!r} in {name!r} is set by the harness (from the "
                            "task's classes, channels and image size, or from weights=PATH); "
                            "leave it out of the model's name.")
        if key in kwargs:
            raise UserError(f"timm argument {key!r} appears twice in {name!r}; give it once.")
        kwargs[key] = _timm_value(key, text, name)
    return arch, kwargs


def check_timm_name(name: str) -> str:
    """``"timm:resnet18"`` -> ``"resnet18"``, a model timm knows; else a one-line :class:`UserError`.

    Arguments after the name (``timm:test_vit:patch_size=7``) are parsed by
    :func:`parse_timm_name`. timm is imported only here, for ``timm:`` names.
    """
    arch, _ = parse_timm_name(name)
    import timm

    if not arch or not timm.is_model(arch):
        close = timm.list_models(f"*{arch[:6]}*")[:5] if arch else []
        hint = f" close names: {', '.join(close)};" if close else ""
        raise UserError(f"unknown timm model {arch!r} in {name!r};{hint} list timm's names with "
                        "python -c \"import timm; print(timm.list_models('*vit*'))\" and write "
                        "timm:<name>, e.g. timm:vit_tiny_patch16_224.")
    return arch


def check_model_name(name: str) -> None:
    """A registered model (``small_cnn``) or a timm model (``timm:resnet18``); else a UserError."""
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        check_timm_name(name)
    else:
        MODELS.get(name)


def parse_augment(augment) -> list[tuple[str, float]]:
    """``("rotate:45",)`` -> ``[("rotate", 45.0)]``; a :class:`UserError` naming what is accepted.

    >>> parse_augment(["rotate:45"])
    [('rotate', 45.0)]
    """
    accepted = ", ".join(f"{k}:{v}" for k, v in AUGMENTS.items())
    if isinstance(augment, str):
        raise UserError(f"pretrain augment must be a list of names, but got the string {augment!r}.")
    out = []
    for name in augment:
        kind, _, text = str(name).partition(":")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if kind not in AUGMENTS or not math.isfinite(value) or value < 0:
            raise UserError(f"unknown pretrain augmentation {name!r}; use {accepted} with a "
                            "finite value >= 0.")
        out.append((kind, value))
    return out
