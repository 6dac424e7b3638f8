"""The live-session registry, the iteration record and the session settings (no ComfyUI, no server)."""

import json

import pytest
import torch

from core import atomic_files
from core.loop.frames import frames_on_disk
from core.loop.iteration import Iteration, PromptChoice
from core.loop.live_session import Host, LiveSessions
from core.loop.loop_service import LoopService
from core.loop.session_settings import DEFAULTS, SessionSettings, autoqueue_settings


def host(tmp_path) -> Host:
    return Host(sessions_folder=lambda: tmp_path / "sessions", cache_root=lambda: tmp_path / "caches",
                input_folder=lambda: tmp_path, backend=None, send_event=lambda event, data: None,
                run_on_server_loop=lambda fn, *args: None, executing_prompt_id=lambda: None,
                executing_node_id=lambda: None, intermediate_device=lambda: torch.device("cpu"),
                before_first_writer=lambda: None)


def test_reset_replaces_what_the_iterations_remember_and_delete_drops_the_session(tmp_path):
    sessions = LiveSessions(host(tmp_path))
    live = sessions.get("s", create=True)
    memory = live.memory
    memory.open_iteration(1).prompt = PromptChoice("a lake", 3, 20)
    sessions.reset("s")
    assert sessions.get("s") is live and live.memory is not memory and live.memory.iteration is None
    assert live.memory.cache_loop is None and live.memory.cache_stats is None
    sessions.delete("s")
    assert sessions.names() == [] and not (tmp_path / "sessions" / "s").exists()
    assert sessions.get("s", create=True) is not live


def test_an_iteration_record_gives_the_session_its_stats():
    record = Iteration(3, mode="img2img", decision={"action": "cache", "reason": "collapse"},
                       prompt=PromptChoice("a lake", 2, 5))
    record.started, record.source_done, record.sampled, record.interpolated, record.decoded = 0.0, 1.0, 3.0, 3.5, 4.0
    stats = record.stats({"keyframes_timed": 1, "mean_keyframe_time": 4.0}, frames=11)
    assert record.injected and stats["keyframe_time"] == 2.0 and stats["batch_decode_time"] == 0.5
    assert stats["iteration_time"] == 4.0 and stats["mean_keyframe_time"] == 3.0 and stats["keyframes_timed"] == 2
    assert stats["mode"] == "img2img" and stats["prompt"] == "a lake" and stats["frames_last_iteration"] == 11
    assert not Iteration(1, decision={"action": "none", "reason": "warm-up"}).injected


def test_settings_of_an_older_session_load_with_the_defaults(tmp_path):
    old = {"enabled": True, "max_iterations": 4, "min_delay": 0.0, "fps": 2.0, "something_removed": 1}
    settings = SessionSettings.from_dict(old)
    assert settings.fps == 2.0 and settings.max_iterations == 4
    assert settings.min_buffer_seconds == DEFAULTS.min_buffer_seconds and settings.retention == DEFAULTS.retention
    assert json.loads(json.dumps(settings.to_dict())) == settings.to_dict()


def test_the_autoqueue_settings_come_from_the_node_wired_to_the_session():
    prompt = {"1": {"class_type": "Session", "inputs": {"name": "s"}},
              "2": {"class_type": "Commit", "inputs": {"session": ["1", 0]}},
              "3": {"class_type": "AutoQueue", "inputs": {"session": ["2", 0], "max_iterations": 7,
                                                          "min_delay": float("nan")}}}
    assert autoqueue_settings(prompt, "s", "Session", "AutoQueue") == {"enabled": True, "max_iterations": 7}
    assert autoqueue_settings(prompt, "other", "Session", "AutoQueue") == {"enabled": False}


def test_a_commit_failing_on_the_writer_is_raised_by_the_next_commit_and_the_retries_wait(tmp_path, monkeypatch):
    sessions = LiveSessions(host(tmp_path))
    service = LoopService(sessions)

    def commit() -> None:
        service.begin("s", 8.0, 1.0, None, None, None)
        frames = 1 if sessions.session("s").iteration == 0 else 3
        service.commit("s", torch.randn(frames, 4, 2, 2), torch.rand(frames, 16, 16, 3), 1, 10, None, b"")

    commit()
    live = sessions.get("s")
    live.session.state = "running"  # a running loop: the next iteration follows
    live.change_settings(enabled=True)
    assert live.writer().flush(10)
    monkeypatch.setenv(atomic_files.FAULT_ENV, "before_replace:state.json:enospc")
    commit()  # returns before its keyframe is durable
    assert live.writer().flush(10)
    assert live.session.iteration == 1, "the failed keyframe is rolled back in memory"
    assert frames_on_disk(live.session.frames_dir).keys() == {1}, "and its frames deleted"
    for _ in range(2):  # raised by the next commit; the retries wait for their own
        with pytest.raises(RuntimeError, match="DreamWindowCommit: cannot save the session state .*No space left"):
            commit()
        assert live.session.iteration == 1
    monkeypatch.delenv(atomic_files.FAULT_ENV)
    commit()
    assert live.session.iteration == 2
    assert json.loads((live.session.folder / "state.json").read_text())["iteration"] == 2
    assert not live.session.commits_failing


def test_the_last_commit_of_a_run_is_durable_when_commit_returns(tmp_path):
    sessions = LiveSessions(host(tmp_path))
    service = LoopService(sessions)
    service.begin("s", 8.0, 1.0, None, None, None)  # idle: no iteration follows by itself
    service.commit("s", torch.randn(1, 4, 2, 2), torch.rand(1, 16, 16, 3), 1, 10, None, b"")
    state = json.loads((sessions.get("s").session.folder / "state.json").read_text())
    assert state["iteration"] == 1 and (sessions.get("s").session.frames_dir / "frame_00000001.png").exists()


def test_a_server_start_writes_the_status_of_sessions_left_running_and_survives_a_broken_one(tmp_path, caplog):
    before = LiveSessions(host(tmp_path))
    for name in ("left_running", "stopped"):
        live = before.get(name, create=True)
        live.session.state = "running" if name == "left_running" else "stopped"
        live.session.save_control()
        (live.session.folder / "status.json").write_text('{"state": "running"}')
    broken = before.get("broken", create=True).session.folder
    (broken / "state.json").write_text("{not json")
    after = LiveSessions(host(tmp_path))  # the next server
    after.publish_interrupted_status()
    status = json.loads((tmp_path / "sessions" / "left_running" / "status.json").read_text())
    assert (status["state"], status["controller_status"], status["is_buffering"]) == ("interrupted", "interrupted",
                                                                                   False)
    assert after.get("left_running")._publisher is None, "no playback starts"
    assert json.loads((tmp_path / "sessions" / "stopped" / "status.json").read_text()) == {"state": "running"}, \
        "only sessions left running are rewritten"
    assert "dream_window[broken]: status.json not brought up to date at server start" in caplog.text
    assert not (broken / "status.json").exists()
