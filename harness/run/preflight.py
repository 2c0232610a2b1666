"""Everything a run needs, checked before it writes anything: the run stage's preflight.

:meth:`StudySpec.validate <harness.config.spec.StudySpec.validate>` checks fields; this builds
what the fields name: every task (bad classes, a budget larger than a class's training split,
missing files), the OOD sets, the pretraining task, the weights file on every model, and
whether any cell can run on this machine's devices.
"""

from __future__ import annotations

from harness.config.execution import parse_execution
from harness.config.spec import TIMM_PREFIX, StudySpec
from harness.data.core import is_tokens, load_dataset
from harness.data.ood import check_ood
from harness.data.task import load_task
from harness.errors import UserError
from harness.models.torchvision import backbone_weights

__all__ = ["check_runnable"]


def check_runnable(spec: StudySpec) -> StudySpec:
    """Raise :class:`UserError` for the first thing of ``spec`` that cannot run here; return it."""
    spec.validate()
    skipped = spec.skipped_cells()
    if len(skipped) == len(spec.devices) * len(spec.executions):
        raise UserError(next(iter(skipped.values())))  # nothing could run: say why
    check_ood(spec.ood)
    shapes = [load_task(dataset, spec.classes, b, root=spec.data_root, ood=spec.ood,
                        val_shots=spec.val_per_class).input_shape
              for dataset in spec.dataset_axis for b in spec.budgets]
    shape = shapes[0]  # the datasets of one study share their classes and input shape
    _refuse_channels_last_on_text(spec)
    _check_timm_models_fit(spec, shape)
    if spec.pretrain is not None:
        load_task(spec.pretrain.dataset, spec.pretrain.classes, root=spec.data_root)
    if spec.weights is not None:  # a missing or unfit file fails before anything is written
        for model in spec.model_axis:
            backbone_weights(model, spec.weights, shape)
    return spec


def _check_timm_models_fit(spec: StudySpec, shape: tuple[int, ...]) -> None:
    """A timm model that cannot take the task's inputs (a ViT whose patch does not divide the
    image) fails here in one line, not as timm's assertion deep inside the first trial."""
    timm_models = [m for m in spec.model_axis if m.startswith(TIMM_PREFIX)]
    if not timm_models:
        return
    import torch

    from harness.models.core import build_model

    for name in timm_models:
        model = build_model(name, shape[0], 2, image_size=shape[-1]).eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, *shape))
        except Exception as e:  # noqa: BLE001 - whatever timm raises, the user gets one line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"model {name!r} cannot take this study's {list(shape)} inputs "
                            f"({reason}); choose a timm model that fits them (a ViT's patch "
                            "size must divide the image size: give it in the name, e.g. "
                            "timm:test_vit:patch_size=7) or another dataset.") from None


def _refuse_channels_last_on_text(spec: StudySpec) -> None:
    # channels_last is a layout of images (N, C, H, W): on token sequences it would do nothing
    layouts = [e for e in spec.executions if parse_execution(e).channels_last]
    text = [d for d in spec.dataset_axis if is_tokens(load_dataset(d, spec.data_root)[0])]
    if layouts and text:
        raise UserError(f"execution {layouts[0]!r} lays out images as channels_last, but "
                        f"{text[0]!r} holds token sequences; drop +channels_last for text tasks.")
