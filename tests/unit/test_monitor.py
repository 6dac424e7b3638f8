"""core.accel.gpu_monitor: what makes the dream yield the GPU, and when it resumes."""

import pytest

from core.accel import gpu_monitor
from core.accel.gpu_monitor import GB, Checker, MonitorConfig, OnceLog, VramReading, VramUnavailable, YieldGate


def test_matching_process_is_a_case_insensitive_substring():
    running = ["systemd", "bash", "EldenRing.exe", "steam"]
    assert gpu_monitor.matching_process(["eldenring"], running) == "EldenRing.exe"
    assert gpu_monitor.matching_process(["ELDENRING.EXE"], running) == "EldenRing.exe"
    assert gpu_monitor.matching_process(["cyberpunk"], running) is None
    assert gpu_monitor.matching_process([], running) is None
    assert gpu_monitor.matching_process([""], running) is None  # an empty entry matches nothing


@pytest.mark.parametrize("reading, min_free, max_other, expected", [
    (VramReading(free=int(0.6 * GB)), 2, 0, "free VRAM 0.6 GB < 2 GB"),
    (VramReading(free=int(0.6 * GB), own=3 * GB), 2, 0, None),  # the dream's own VRAM counts as free
    (VramReading(free=int(0.6 * GB)), 0, 0, None),  # thresholds of 0: off
    (VramReading(free=8 * GB, other_max=int(5.1 * GB), other_name="pid 42"), 2, 4,
     "pid 42 uses 5.1 GB VRAM > 4 GB"),
    (VramReading(free=8 * GB, other_max=3 * GB), 2, 4, None),
])
def test_vram_pressure(reading, min_free, max_other, expected):
    assert gpu_monitor.vram_pressure(reading, min_free, max_other) == expected


def test_gate_yields_at_once_and_resumes_after_a_clear_spell():
    gate = YieldGate()
    assert gate.update(None, 0, 30) is None
    assert gate.update("yielding to game", 1, 30) == "yield"
    assert gate.update("yielding to game", 2, 30) is None
    assert gate.update(None, 10, 30) is None
    assert gate.update("yielding to game", 20, 30) is None  # the loading screen came back: the clock restarts
    assert gate.update(None, 25, 30) is None
    assert gate.update(None, 54, 30) is None
    assert gate.update(None, 55, 30) == "resume"
    assert gate.reason is None and gate.update(None, 56, 30) is None


def test_once_log_reports_each_problem_once():
    seen = []
    once = OnceLog(seen.append)
    for _ in range(3):
        once("a")
        once("b")
    assert seen == ["a", "b"]


def config(**fields):
    return MonitorConfig(enabled=True, **fields)


def test_checker_finds_a_listed_process():
    checker = Checker(print, processes=lambda: ["init", "dwgame123"], vram=lambda: pytest.fail("not configured"))
    assert checker.check(config(processes=("DWGAME",))) == "yielding to dwgame123"
    assert checker.check(config(processes=("other",))) is None


def test_checker_vram_with_an_injected_reading():
    checker = Checker(print, processes=lambda: [], vram=lambda: VramReading(free=int(0.6 * GB)))
    assert checker.check(config(min_free_vram_gb=2)) == "free VRAM 0.6 GB < 2 GB"
    assert checker.check(config(min_free_vram_gb=0.5)) is None


def test_a_failing_probe_is_reported_once_and_the_other_probe_still_runs():
    reports = []

    def broken():
        raise PermissionError("access denied")

    checker = Checker(reports.append, processes=broken, vram=lambda: VramReading(free=0))
    for _ in range(5):
        assert checker.check(config(processes=("game",), min_free_vram_gb=1)) == "free VRAM 0.0 GB < 1 GB"
    assert len(reports) == 1 and "cannot list the running processes" in reports[0] and "access denied" in reports[0]


def test_vram_unavailable_turns_the_check_off_once():
    reports, calls = [], []

    def absent():
        calls.append(1)
        raise VramUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)")

    checker = Checker(reports.append, processes=lambda: ["game"], vram=absent)
    for _ in range(3):
        assert checker.check(config(processes=("game",), min_free_vram_gb=1)) == "yielding to game"
    assert reports == ["GPU memory check off: nvidia-ml-py is not installed (pip install nvidia-ml-py)"]
    assert len(calls) == 1 and checker.vram_off


def test_nvml_probe_without_nvidia_ml_py_says_so(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    with pytest.raises(VramUnavailable, match="nvidia-ml-py is not installed"):
        gpu_monitor.NvmlProbe().read()


def test_process_names_lists_this_process():
    import os

    import psutil

    assert psutil.Process(os.getpid()).name() in gpu_monitor.process_names()


@pytest.mark.parametrize("platform, environ, expected", [
    ("linux", {}, False), ("linux", {"DISPLAY": ":0"}, True), ("linux", {"WAYLAND_DISPLAY": "wayland-0"}, True),
    ("win32", {}, True), ("darwin", {}, True),
])
def test_has_display(platform, environ, expected):
    assert gpu_monitor.has_display(platform, environ) is expected


@pytest.mark.parametrize("mode, display, enabled", [
    ("auto", True, True), ("auto", False, False), ("on", False, True), ("off", True, False),
])
def test_config_auto_is_on_with_a_display(mode, display, enabled):
    def value(setting):
        return mode if setting is gpu_monitor.MONITOR else setting.default

    got = MonitorConfig.read(value, display)
    assert got.enabled is enabled and got.interval == 5.0 and got.resume_after == 30.0 and not got.keep_models


def test_nvml_probe_on_a_real_gpu_counts_this_process_as_its_own():
    """Where nvidia-ml-py and an NVIDIA GPU are present: 2 GB this process takes stay "free" for the check."""
    pynvml = pytest.importorskip("pynvml", reason="the VRAM check needs nvidia-ml-py")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver ({exc})")
    torch.cuda.init()
    probe = gpu_monitor.NvmlProbe(index=torch.cuda.current_device())
    before = probe.read()
    block = torch.ones(2 * GB, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    after = probe.read()
    print(f"before {before}, after {after}")
    assert before.free - after.free >= 1.9 * GB, "nvml sees the allocation"
    assert after.own - before.own >= 1.9 * GB, "and counts it as this process's own"
    assert abs((after.free + after.own) - (before.free + before.own)) < 0.2 * GB
    assert gpu_monitor.vram_pressure(after, (after.free + after.own) / GB + 1, 0).startswith("free VRAM")
    assert gpu_monitor.vram_pressure(after, (after.free + after.own) / GB - 1, 0) is None
    del block
