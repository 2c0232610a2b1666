import time

import pytest
import torch

from harness.measure.clock import clock, steady_state
from harness.measure.env import environment
from harness.measure.memory import PeakMemory


def test_steady_state_leaves_out_warmup_and_divides_samples_by_time():
    tp = steady_state([10.0, 5.0, 1.0, 1.0, 2.0], [8, 8, 8, 8, 8], warmup=2)
    assert tp.samples_per_s == pytest.approx(24 / 4.0)
    assert (tp.timed_steps, tp.warmup_steps) == (3, 2)
    assert tp.step_p50_s == 1.0


def test_steady_state_without_timed_steps_is_nan_not_a_guess():
    tp = steady_state([1.0, 1.0], [4, 4], warmup=3)
    assert tp.timed_steps == 0 and tp.warmup_steps == 2 and tp.samples_per_s != tp.samples_per_s


def test_clock_measures_a_known_sleep():
    t0 = clock("cpu")
    time.sleep(0.2)
    assert 0.19 <= clock("cpu") - t0 < 0.5


def test_cpu_peak_memory_sees_a_known_allocation():
    size = 256 * 2**20
    with PeakMemory("cpu") as base:
        pass
    with PeakMemory("cpu") as mem:
        x = torch.ones(size // 4, dtype=torch.float32)  # touches every page
        del x
    assert mem.kind == "cpu_rss"
    # the peak of this block rose by about the allocation, though the tensor was freed inside it
    assert size * 0.9 <= mem.peak_bytes - base.peak_bytes <= size * 1.3
    assert size * 0.9 <= mem.increase_bytes <= size * 1.3  # the rise over the RSS at entry


def test_environment_records_versions_and_commit():
    env = environment("cpu")
    assert env["versions"]["torch"] == torch.__version__.split("+")[0]
    assert env["device"] == "cpu" and env["torch_threads"] >= 1 and env["git_commit"]


def test_step_clock_measures_a_known_sleep_on_the_cpu():
    from harness.measure.clock import StepClock

    marks = StepClock("cpu")
    a = marks.mark()
    time.sleep(0.05)
    assert 0.049 <= marks.elapsed(a, marks.mark()) < 0.2


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device on this machine; the CUDA path runs on a GPU")


@needs_cuda
def test_cuda_peak_memory_sees_a_known_allocation():
    with PeakMemory("cuda") as mem:
        x = torch.ones(2**26, device="cuda")  # 256 MiB
        del x
    assert mem.kind == "cuda_allocated"
    assert 2**28 <= mem.increase_bytes < 1.05 * 2**28 and mem.reserved_bytes >= 2**28


@needs_cuda
def test_cuda_step_clock_times_device_work_without_extra_syncs():
    from harness.measure.clock import StepClock, sync

    marks = StepClock("cuda")
    a = torch.randn(4096, 4096, device="cuda")
    m0 = marks.mark()
    for _ in range(10):
        a @ a
    m1 = marks.mark()
    sync("cuda")
    assert marks.elapsed(m0, m1) > 0
