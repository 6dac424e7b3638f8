"""core.server_settings: a ComfyUI setting, its environment override, its default."""

from pathlib import Path

import pytest

from core import server_settings
from core.server_settings import (MONITOR, MONITOR_INTERVAL, MONITOR_PROCESSES, RESUME_ON_START, SESSIONS_FOLDER,
                           TORCH_THREADS, resolve, sessions_root)


def value(setting, stored=None, environ=None):
    warnings = []
    return resolve(setting, stored or {}, environ or {}, warnings.append), warnings


def test_the_default_when_nothing_is_set():
    assert value(RESUME_ON_START) == (False, [])
    assert value(TORCH_THREADS) == ("auto", [])
    assert value(MONITOR_PROCESSES) == ((), [])


def test_the_stored_setting_applies_and_the_environment_overrides_it():
    stored = {"DreamWindow.ResumeOnStart": True, "DreamWindow.Monitor.CheckInterval": 2}
    assert value(RESUME_ON_START, stored) == (True, [])
    assert value(RESUME_ON_START, stored, {"DREAM_WINDOW_RESUME_ON_START": "0"}) == (False, [])
    assert value(MONITOR_INTERVAL, stored) == (2.0, [])
    assert value(MONITOR_INTERVAL, stored, {"DREAM_WINDOW_MONITOR_INTERVAL": "0.5"}) == (0.5, [])


def test_a_stored_null_is_unset():
    assert value(TORCH_THREADS, {"DreamWindow.TorchThreads": None}) == ("auto", [])


@pytest.mark.parametrize("setting, stored, expected", [
    (RESUME_ON_START, "yes", True), (RESUME_ON_START, " 1 ", True), (RESUME_ON_START, "off", False),
    (TORCH_THREADS, " KEEP ", "keep"), (TORCH_THREADS, 12, "12"), (TORCH_THREADS, "", "auto"),
    (MONITOR, True, "on"), (MONITOR, "Auto", "auto"), (MONITOR, "0", "off"),
    (MONITOR_PROCESSES, "eldenring.exe, Cyberpunk ,,", ("eldenring.exe", "Cyberpunk")),
    (MONITOR_PROCESSES, "a\nb", ("a", "b")), (MONITOR_PROCESSES, ["x.exe", " y "], ("x.exe", "y")),
    (SESSIONS_FOLDER, " dreams ", "dreams"),
])
def test_values_are_normalised(setting, stored, expected):
    assert value(setting, {setting.id: stored}) == (expected, [])


@pytest.mark.parametrize("setting, raw, hint", [
    (RESUME_ON_START, "maybe", "true or false"), (TORCH_THREADS, "many", "auto, keep or a whole number"),
    (TORCH_THREADS, "0", "auto, keep"), (MONITOR, "sometimes", "auto, on or off"),
    (MONITOR_INTERVAL, "0.01", "from 0.2 to 3600"), (MONITOR_INTERVAL, "nan", "from 0.2"),
    (MONITOR_INTERVAL, True, "from 0.2"), (MONITOR_PROCESSES, 5, "separated by commas"),
    (SESSIONS_FOLDER, 3, "text"),
])
def test_a_bad_value_warns_where_it_came_from_and_the_default_applies(setting, raw, hint):
    got, warnings = value(setting, {setting.id: raw})
    assert got == setting.default
    assert len(warnings) == 1 and setting.id in warnings[0] and "Settings > Dream Window" in warnings[0]
    assert hint in warnings[0] and f"default {setting.default!r}" in warnings[0]
    got, warnings = value(setting, {}, {setting.env: str(raw)})
    if got == setting.default and warnings:  # the text form of some values is valid (e.g. True -> "True")
        assert f"environment variable {setting.env}=" in warnings[0]


def test_every_setting_has_a_dream_window_id_and_env_name():
    every = [s for s in vars(server_settings).values() if isinstance(s, server_settings.Setting)]
    assert len(every) == 10
    assert all(s.id.startswith("DreamWindow.") and s.env.startswith("DREAM_WINDOW_") for s in every)
    assert len({s.id for s in every}) == len({s.env for s in every}) == len(every)


def test_sessions_root():
    out = Path("/srv/comfy/output")
    assert sessions_root("", out) == out / "dream_window"
    assert sessions_root("dreams", out) == out / "dreams"
    assert sessions_root("/data/dreams", out) == Path("/data/dreams")
    assert sessions_root("~/dreams", out) == Path.home() / "dreams"


def test_the_web_extension_registers_every_setting_with_its_env_override():
    js = (Path(__file__).resolve().parents[2] / "web" / "js" / "dream_window.js").read_text()
    for setting in (s for s in vars(server_settings).values() if isinstance(s, server_settings.Setting)):
        entry = js[js.index(f'setting("{setting.id.removeprefix("DreamWindow.")}",'):]
        assert setting.env in entry[:entry.index("\n  setting(") if "\n  setting(" in entry else None]
