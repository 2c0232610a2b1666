"""GPU check: AMP bf16, torch.compile, CUDA memory and FLOP utilisation of ResNet-18/50, synthetic.

Every run is one full fine-tune through ``harness.train.loop.train`` (one phase, every block, BatchNorm
training) of a randomly initialised torchvision ResNet (no downloads) wrapped into the harness's
block shape, on random images and labels resident on the device. The grid is
model x execution (eager, compile) x precision (fp32, bf16 autocast). Per run it records
steady-state samples/s and step p50/p90, compile time and graph count, the CUDA allocator's peak
allocated and reserved memory, training FLOPs per sample (forward + loss + backward, counted by
``torch.utils.flop_counter``), achieved FLOP/s and utilisation against two labelled peaks: an
empirical matmul peak measured on this device, and the vendor datasheet's dense peak.

Writes ``results.csv`` (one row per run; a failed or skipped run is a row with ``status`` and
``error``), ``results.md``, ``env.json`` and ``config.json`` into ``--out``. Sized to finish well
inside 5 minutes on an H100/H200 (the compiles dominate); ``--budget-s`` skips what is left
once it is spent.

    scripts/gpu_check.sh                  # resnet18 + resnet50, eager + compile, fp32 + bf16
    scripts/gpu_check.sh --quick          # resnet18 only, 1 epoch
    scripts/gpu_check.sh --device cpu --quick   # CPU smoke test: 32 x 32 images, eager only
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import math
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch._dynamo
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the harness without an install, e.g. on a bare GPU machine

from harness._io import atomic_write_text
from harness.config.execution import AMP_DTYPES, parse_execution
from harness.data.core import Split
from harness.measure.env import device_name, environment
from harness.measure.flops import datasheet_peak, empirical_peak, flops_per_sample
from harness.models.core import blocks
from harness.train.loop import ALL_PHASES, LoopConfig, train
from harness.train.strategy import Phase, Plan

MODELS = ("resnet18", "resnet50")
EXECUTIONS = ("eager", "compile")
PRECISIONS = ("fp32", "bf16")
NUM_CLASSES = 10
PHASE = "finetune"


@dataclass(frozen=True)
class Sizes:
    image: int
    train: int
    val: int
    batch: int


SIZES = {
    # ImageNet-shaped; 16 steps of 128 per epoch keep each eager run to seconds on an H100
    "cuda": Sizes(image=224, train=2048, val=512, batch=128),
    # a smoke test of the pipeline on the CPU, not a measurement
    "cpu": Sizes(image=32, train=256, val=64, batch=32),
}


def block_shaped(net: nn.Module) -> nn.Sequential:
    """A torchvision ResNet as the harness's ``nn.Sequential`` of named blocks, ``head`` last."""
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
        pool=nn.Sequential(net.avgpool, nn.Flatten()),
        head=net.fc,
    ))


def build(name: str, device: torch.device) -> nn.Sequential:
    import torchvision

    torch.manual_seed(0)  # the same initialisation in every run of a model
    net = getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES)
    return block_shaped(net).to(device)


def synthetic(sizes: Sizes, device: torch.device) -> tuple[Split, Split]:
    g = torch.Generator(device=device).manual_seed(0)

    def split(n: int) -> Split:
        x = torch.randn(n, 3, sizes.image, sizes.image, generator=g, device=device)
        return Split(x, torch.randint(0, NUM_CLASSES, (n,), generator=g, device=device))

    return split(sizes.train), split(sizes.val)


def _peaks(device: torch.device, precision: str) -> dict[str, object]:
    """Both reference peaks for ``precision``, each with a label saying what it is."""
    dtype = AMP_DTYPES.get(precision, torch.float32)
    emp = empirical_peak(device, dtype)
    n = 8192 if device.type == "cuda" else 1024  # harness.measure.flops.empirical_peak's default size
    emp_of = f"matmul {n}x{n} {precision}"
    sheet, sheet_of = None, "unknown device"
    if device.type == "cuda":
        # fp32 convolutions run on TF32 tensor cores when cuDNN allows it (PyTorch's default)
        tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32
        if dtype == torch.float32:
            emp_of += f" (matmul tf32={torch.backends.cuda.matmul.allow_tf32})"
        sheet = datasheet_peak(device_name(device), dtype, tf32=tf32)
        if sheet is not None:
            sheet_of = f"{device_name(device)} {'tf32' if tf32 else precision} dense"
    return {"empirical_peak_tflops": emp / 1e12, "empirical_peak_of": emp_of,
            "datasheet_peak_tflops": None if sheet is None else sheet / 1e12,
            "datasheet_peak_of": sheet_of}


def run_one(model_name: str, execution: str, precision: str, data: tuple[Split, Split],
            sizes: Sizes, epochs: int, device: torch.device, flops: dict[str, float]) -> dict:
    """One training run; its row of the table (raises on failure: the caller records it)."""
    label = execution if precision == "fp32" else f"{execution}+{precision}"
    row: dict[str, object] = {}
    torch._dynamo.reset()  # each compiled run compiles for itself, as harness trials do
    model = build(model_name, device)
    if model_name not in flops:
        flops[model_name] = flops_per_sample(model, data[0].x[: sizes.batch])
    cfg = LoopConfig(epochs=epochs, batch_size=sizes.batch, lr=0.01, seed=0,
                     execution=parse_execution(label))
    plan = Plan((Phase(PHASE, 0, tuple(blocks(model)), "train"),))
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        row["mem_start_alloc_gib"] = torch.cuda.memory_allocated(device) / 2**30
    t0 = time.perf_counter()
    result = train(model, plan, *data, cfg)
    row["wall_s"] = time.perf_counter() - t0
    if cuda:
        torch.cuda.synchronize(device)
        row["peak_alloc_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    tp, st = result.throughput[ALL_PHASES], result.phases[PHASE]
    achieved = flops[model_name] * tp.samples_per_s
    row.update(
        samples_per_s=tp.samples_per_s, step_p50_ms=1e3 * tp.step_p50_s,
        step_p90_ms=1e3 * tp.step_p90_s, timed_steps=tp.timed_steps, warmup_steps=tp.warmup_steps,
        compile_steps_s=st.compile_steps_s, graphs_compiled=st.graphs_compiled,
        timed_recompiles=st.timed_recompiles, train_s=result.train_seconds,
        train_gflops_per_sample=flops[model_name] / 1e9, achieved_tflops=achieved / 1e12,
    )
    row.update(_peaks(device, precision))
    row["util_vs_empirical"] = achieved / (row["empirical_peak_tflops"] * 1e12)
    sheet = row["datasheet_peak_tflops"]
    row["util_vs_datasheet"] = None if sheet is None else achieved / (sheet * 1e12)
    return row


COLUMNS = [
    "model", "execution", "precision", "status", "error", "image_size", "batch_size", "epochs",
    "train_images", "samples_per_s", "step_p50_ms", "step_p90_ms", "timed_steps", "warmup_steps",
    "compile_steps_s", "graphs_compiled", "timed_recompiles", "train_s", "wall_s",
    "mem_start_alloc_gib", "peak_alloc_gib", "peak_reserved_gib", "train_gflops_per_sample",
    "achieved_tflops", "empirical_peak_tflops", "empirical_peak_of", "util_vs_empirical",
    "datasheet_peak_tflops", "datasheet_peak_of", "util_vs_datasheet",
]
# the markdown view: what a reader compares across runs
MD_COLUMNS = [
    "model", "execution", "precision", "status", "samples_per_s", "step_p50_ms", "step_p90_ms",
    "compile_steps_s", "graphs_compiled", "timed_recompiles", "peak_alloc_gib",
    "peak_reserved_gib", "train_gflops_per_sample", "achieved_tflops", "util_vs_empirical",
    "util_vs_datasheet",
]


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="raise")
    w.writeheader()
    for r in rows:
        w.writerow({c: "" if r.get(c) is None else r.get(c) for c in COLUMNS})
    return buf.getvalue()


def _names(text: str, allowed: tuple[str, ...], flag: str,
           ap: argparse.ArgumentParser) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in allowed]
    if bad or not names:
        ap.error(f"{flag} takes a comma-separated list of {', '.join(allowed)}, but got {text!r}.")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: a smoke test of the pipeline (32 x 32 images), not a measurement")
    ap.add_argument("--models", help=f"comma-separated, of {', '.join(MODELS)} (default: both; "
                                     "--quick: resnet18)")
    ap.add_argument("--executions", help="comma-separated, of eager, compile (default: both on "
                                         "cuda, eager on cpu, where inductor's compile is minutes)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="comma-separated, of fp32, bf16")
    ap.add_argument("--epochs", type=int,
                    help="default 2 (3 warm-up steps of 32 are left out); --quick: 1")
    ap.add_argument("--quick", action="store_true", help="resnet18 only, 1 epoch")
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="runs not started within this many seconds are skipped (rows say so)")
    ap.add_argument("--out", type=Path, help="default results/gpu_check/<timestamp>")
    args = ap.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.exit(2, "gpu_check: CUDA is required (torch.cuda.is_available() is False); for a smoke "
                   "test of the pipeline on the CPU use --device cpu --quick.\n")
    device = torch.device(args.device)
    models = _names(args.models or ("resnet18" if args.quick else ",".join(MODELS)),
                    MODELS, "--models", ap)
    executions = _names(args.executions or ("eager,compile" if device.type == "cuda" else "eager"),
                        EXECUTIONS, "--executions", ap)
    precisions = _names(args.precisions, PRECISIONS, "--precisions", ap)
    epochs = args.epochs or (1 if args.quick else 2)
    if epochs < 1:
        ap.error(f"--epochs must be at least 1, but got {epochs}.")
    sizes = SIZES[device.type]
    out = args.out or ROOT / "results" / "gpu_check" / time.strftime("%Y%m%d-%H%M%S")
    config = {"device": str(device), "models": models, "executions": executions,
              "precisions": precisions, "epochs": epochs, "sizes": asdict(sizes),
              "budget_s": args.budget_s, "argv": sys.argv[1:]}

    t_start = time.perf_counter()
    env = environment(device)
    env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    print(f"gpu_check on {env['device_name']}: torch {torch.__version__}, "
          f"{sizes.image}x{sizes.image} images, {sizes.train} train / {sizes.val} val, "
          f"batch {sizes.batch}, {epochs} epoch(s); writing to {out}")
    data = synthetic(sizes, device)
    flops: dict[str, float] = {}
    rows = []
    for model_name in models:
        for execution in executions:
            for precision in precisions:
                row = {"model": model_name, "execution": execution, "precision": precision,
                       "image_size": sizes.image, "batch_size": sizes.batch, "epochs": epochs,
                       "train_images": sizes.train}
                elapsed = time.perf_counter() - t_start
                if elapsed > args.budget_s:
                    row.update(status="skipped",
                               error=f"budget spent: {elapsed:.0f} s > --budget-s")
                else:
                    try:
                        row.update(run_one(model_name, execution, precision, data, sizes, epochs,
                                           device, flops), status="ok")
                    except Exception as e:  # noqa: BLE001 - a failure is a row, not the end
                        row.update(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0])
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                rows.append(row)
                print(f"  {model_name:<9} {execution:<8} {precision:<5} {row['status']:<7} "
                      f"{_fmt(row.get('samples_per_s')):>7} samples/s  compile "
                      f"{_fmt(row.get('compile_steps_s'))} s  peak "
                      f"{_fmt(row.get('peak_alloc_gib'))} GiB  util(datasheet) "
                      f"{_fmt(row.get('util_vs_datasheet'))}  {row.get('error') or ''}", flush=True)

    seconds = time.perf_counter() - t_start
    config["seconds"] = seconds
    table = markdown(rows, MD_COLUMNS)
    notes = (
        f"# GPU check: {env['device_name']}\n\n"
        f"{sizes.image}x{sizes.image} synthetic images, {sizes.train} train, batch {sizes.batch}, "
        f"{epochs} epoch(s) per run, full fine-tune via harness.train.loop.train; "
        f"{seconds:.0f} s in all.\n\n"
        f"{table}\n\n"
        "- samples/s and step times are steady state: each run's first warm-up steps (compilation "
        "included) are left out; `compile_steps_s` is the wall time of the steps that compiled.\n"
        "- `peak_*_gib`: the CUDA caching allocator's peaks over the run, reset at its start "
        "(the synthetic data on the device included).\n"
        "- `train_gflops_per_sample`: forward + cross-entropy + backward, counted by "
        "torch.utils.flop_counter (autocast does not change the count).\n"
        "- `util_vs_empirical`: achieved FLOP/s over a large matmul's FLOP/s measured on this "
        "device in the run's precision (see `empirical_peak_of`: an fp32 matmul without TF32 can "
        "be slower than fp32 convolutions that cuDNN runs on TF32, so this can exceed 1).\n"
        "- `util_vs_datasheet`: over the vendor's dense peak (`datasheet_peak_of`; TF32 for fp32 "
        "when cuDNN allows TF32).\n"
    )
    atomic_write_text(out / "results.csv", _csv(rows))
    atomic_write_text(out / "results.md", notes)
    atomic_write_text(out / "env.json", json.dumps(env, indent=2, default=str))
    atomic_write_text(out / "config.json", json.dumps(config, indent=2))
    print(f"\n{table}\n\ngpu_check: {len(rows)} runs "
          f"({sum(r['status'] == 'ok' for r in rows)} ok) in {seconds:.0f} s; tables in {out}")
    sys.exit(0 if all(r["status"] == "ok" for r in rows) else 1)


if __name__ == "__main__":
    main()
