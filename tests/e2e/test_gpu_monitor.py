"""The GPU monitor and the pack's ComfyUI settings against a real server.

One server with the monitor on, checking every second and resuming after 2 s clear (environment
overrides, as on a headless server); the process list and the sessions folder come from ComfyUI's
own settings, written through ``POST /settings/<id>`` as the settings dialog writes them.
"""

import shutil
import subprocess
import time
import uuid

import pytest

from helpers.dream_loop import TEST_PACKS, dream_workflow
from tools.harness.comfy_process import ComfyServer

pytestmark = pytest.mark.e2e

INTERVAL, RESUME_AFTER = 1.0, 2.0
GAME = f"dwgame{uuid.uuid4().hex[:8]}"
FOLDER = "dreams_by_setting"


@pytest.fixture(scope="module")
def server(tmp_path_factory, artifacts):
    base = tmp_path_factory.mktemp("monitor")
    srv = ComfyServer(base, extra_packs=TEST_PACKS, env={
        "DREAM_WINDOW_MONITOR": "on", "DREAM_WINDOW_MONITOR_INTERVAL": str(INTERVAL),
        "DREAM_WINDOW_MONITOR_RESUME_AFTER": str(RESUME_AFTER)}).start()
    for key, value in (("DreamWindow.SessionsFolder", FOLDER), ("DreamWindow.Monitor.Processes", f"other.exe, {GAME}"),
                       ("DreamWindow.Monitor.ResumeAfter", 600)):  # the environment's 2 s must win
        assert srv.post_json(f"/settings/{key}", value)[0] == 200
    srv.stop()  # the sessions folder applies from the next start, as the settings dialog says
    srv.start()
    yield srv
    srv.stop()
    shutil.copy(srv.log_path, artifacts / "comfy-monitor.log")


@pytest.fixture
def game(tmp_path):
    """A harmless program under a listed name: a copy of sleep, renamed."""
    binary = tmp_path / GAME
    shutil.copy(shutil.which("sleep"), binary)
    procs = []

    def start():
        procs.append(subprocess.Popen([str(binary), "120"]))
        return procs[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def running(server, *names, after: int = 0):
    return all((s := server.session(n)) and s["state"] == "running" and s["iteration"] > after for n in names)


def test_settings_from_comfyui_apply_and_the_environment_overrides_them(server):
    config = server.wait_for(lambda: (c := server.get("/dream_window/monitor")["config"]) and c["processes"] and c,
                             timeout=INTERVAL + 2, what="a check after the settings were written")
    assert config["processes"] == ["other.exe", GAME]
    assert config["resume_after"] == RESUME_AFTER and config["interval"] == INTERVAL
    assert config["enabled"] and not config["keep_models"]
    server.queue(dream_workflow("mon_folder", autoqueue=False))
    server.wait_for(lambda: (server.base / "output" / FOLDER / "mon_folder" / "frames").is_dir(), timeout=60,
                    what="the session folder under the sessions folder setting")
    assert not (server.base / "output" / "dream_window" / "mon_folder").exists()


def test_a_listed_program_pauses_running_sessions_frees_the_models_and_they_resume(server, game):
    for name in ("mon_a", "mon_b", "mon_user"):
        server.queue(dream_workflow(name))
    server.wait_for(lambda: running(server, "mon_a", "mon_b", "mon_user"), timeout=90, what="three sessions running")
    assert server.get("/dream_window/monitor")["loaded_models"] > 0
    server.control("pause", "mon_user")

    proc = game()
    started = time.monotonic()
    server.wait_for(lambda: all(server.session(n)["state"] == "paused" for n in ("mon_a", "mon_b")),
                    timeout=INTERVAL + 1, interval=0.02, what="the monitor to pause both running sessions")
    assert time.monotonic() - started <= INTERVAL + 1
    reason = f"yielding to {GAME}"
    assert server.session("mon_a")["paused_reason"] == server.session("mon_b")["paused_reason"] == reason
    assert server.session("mon_user")["paused_reason"] is None
    state = server.wait_for(lambda: (m := server.get("/dream_window/monitor"))["loaded_models"] == 0 and m,
                            timeout=30, what="ComfyUI to unload its models")
    assert state["yielding"] and state["reason"] == reason
    assert state["paused_sessions"] == ["mon_a", "mon_b"]
    server.wait_for(lambda: server.get("/dream_window/status/mon_a")["paused_reason"] == reason, timeout=3,
                    what="the status (written once a second) to say why")
    held = {n: server.session(n)["iteration"] for n in ("mon_a", "mon_b")}
    time.sleep(1.5)
    assert {n: server.session(n)["iteration"] for n in held} == held, "nothing more is queued while yielding"
    assert server.get("/dream_window/monitor")["loaded_models"] == 0, "iterations queued before the pause ran " \
        "before the models were freed, not after"

    proc.kill()
    proc.wait()
    ended = time.monotonic()
    server.wait_for(lambda: running(server, "mon_a", "mon_b"), timeout=RESUME_AFTER + 2 * INTERVAL + 2,
                    what="both sessions to resume")
    assert time.monotonic() - ended >= RESUME_AFTER - INTERVAL, "not before the condition was clear for resume_after"
    server.wait_for(lambda: all(server.session(n)["iteration"] > held[n] for n in held), timeout=60,
                    what="the resumed sessions to make keyframes")
    assert server.session("mon_user")["state"] == "paused", "the user's pause stays"
    assert not server.get("/dream_window/monitor")["yielding"]
    server.wait_for(lambda: "first keyframe after yielding the GPU took" in server.log_tail(400000), timeout=30,
                    what="the reload time in the log")
    for name in ("mon_a", "mon_b"):
        server.control("stop", name)


def test_a_check_that_fails_every_time_leaves_both_loops_running_and_models_can_stay(server, game):
    flag = server.base / "input" / "dwtest_monitor_fail"
    server.queue(dream_workflow("mon_fault"))
    server.wait_for(lambda: running(server, "mon_fault"), timeout=60, what="the session to run")
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()
    try:
        proc = game()
        checks = server.get("/dream_window/monitor")["checks"]
        iteration = server.session("mon_fault")["iteration"]
        server.wait_for(lambda: server.get("/dream_window/monitor")["checks"] >= checks + 3, timeout=10,
                        what="the monitor to go on checking")
        server.wait_for(lambda: running(server, "mon_fault", after=iteration), timeout=60,
                        what="the dream to go on while the check fails")
        assert server.log_tail(400000).count("cannot list the running processes") == 1, "logged once"
        # Before the check is mended: the first check that finds the program must already keep the models.
        assert server.post_json("/settings/DreamWindow.Monitor.KeepModels", True)[0] == 200
    finally:
        flag.unlink()
    server.wait_for(lambda: server.session("mon_fault")["state"] == "paused", timeout=INTERVAL + 2,
                    what="the mended check to find the program")
    time.sleep(2)  # the session's last iteration ends; nothing frees the models
    assert server.get("/dream_window/monitor")["loaded_models"] > 0, "keep models: ComfyUI keeps them loaded"
    assert "unloading the models" not in server.log_tail(400000).split("paused mon_fault")[-1]
    proc.kill()
    proc.wait()
    server.wait_for(lambda: running(server, "mon_fault"), timeout=RESUME_AFTER + 2 * INTERVAL + 2,
                    what="the session to resume")
    server.control("stop", "mon_fault")


def test_a_session_deleted_while_yielding_is_forgotten_by_the_monitor(server, game):
    server.queue(dream_workflow("mon_gone"))
    server.wait_for(lambda: running(server, "mon_gone"), timeout=90, what="the session running")
    proc = game()
    server.wait_for(lambda: server.get("/dream_window/monitor")["paused_sessions"] == ["mon_gone"], timeout=5,
                    what="the monitor to pause it")
    assert server.control("delete", "mon_gone")["deleted"]
    assert server.get("/dream_window/monitor")["paused_sessions"] == [], "a deleted session is not the monitor's"
    proc.kill()
    proc.wait()
    server.wait_for(lambda: not server.get("/dream_window/monitor")["yielding"], timeout=RESUME_AFTER + 3 * INTERVAL,
                    what="the monitor to stop yielding")
    assert "could not resume" not in server.log_tail(400000)
