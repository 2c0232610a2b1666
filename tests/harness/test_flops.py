"""FLOPs and peaks checked against independent computations."""

import pytest
import torch
from torch import nn

from harness.measure.flops import datasheet_peak, empirical_peak, flops_per_sample
from harness.models.core import build_model


def test_linear_flops_match_the_formula():
    lin = nn.Linear(100, 10)
    x = torch.randn(8, 100)
    assert flops_per_sample(lin, x, train=False) == 2 * 100 * 10
    # training: forward, plus the weight gradient (the input needs none): twice the forward
    assert flops_per_sample(lin, x, train=True) == 2 * (2 * 100 * 10)


def test_conv_flops_match_the_formula():
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    x = torch.randn(4, 3, 32, 32)
    assert flops_per_sample(conv, x, train=False) == 2 * 3 * 16 * 3 * 3 * 32 * 32


def test_frozen_blocks_add_no_backward_flops():
    model = build_model("small_cnn", 1, 5)
    x = torch.randn(16, 1, 28, 28)
    full = flops_per_sample(model, x)
    forward = flops_per_sample(model, x, train=False)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))
    probe = flops_per_sample(model, x)
    head = 2 * model.head.in_features * model.head.out_features
    assert probe == pytest.approx(forward + head)  # forward + the head's weight gradient
    assert 2.5 * forward < full < 3.1 * forward  # backward ~ twice the forward (not for the stem input)


def test_counting_leaves_the_real_model_untouched():
    model = build_model("small_cnn", 1, 5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flops_per_sample(model, torch.randn(8, 1, 28, 28))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_empirical_peak_is_cached_per_device_and_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    first = empirical_peak("cpu", n=256, repeats=2)
    assert first > 1e8  # any CPU of this decade beats 0.1 GFLOP/s on a matmul
    text = (tmp_path / "peak_flops.json").read_text()
    assert "fp32" in text and torch.__version__ in text
    assert empirical_peak("cpu", n=256, repeats=2) == first  # read back, not re-measured


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA H200", torch.bfloat16, 989.4),
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756.0),
    ("NVIDIA A100-SXM4-80GB", torch.float32, 19.5),
])
def test_datasheet_peaks_of_known_gpus(name, dtype, tflops):
    assert datasheet_peak(name, dtype) == pytest.approx(tflops * 1e12)


def test_unknown_gpu_has_no_datasheet_peak():
    assert datasheet_peak("Some Future GPU", torch.bfloat16) is None
    assert datasheet_peak("NVIDIA A100", torch.float32, tf32=True) == pytest.approx(156e12)
