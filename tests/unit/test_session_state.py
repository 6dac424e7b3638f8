import json
import os

import pytest
import torch

from core import atomic_files
from core.loop.frames import frame_name, frames_on_disk
from core.loop.session import SessionError, SessionRegistry, strip_is_changed, validate_name


@pytest.mark.parametrize("name", ["dream", "a", "Dream_2-x", "x" * 64])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a\\b", "/abs", "C:evil", ".hidden", "-x", "x" * 65, "a b",
                                  "a\x00b", "dr\u00e9am", None, 5, "..", "%2e%2e"])
def test_invalid_names(name):
    with pytest.raises(SessionError, match="invalid session name"):
        validate_name(name)


def test_commit_and_reload_round_trip(tmp_path):
    reg = SessionRegistry(tmp_path)
    s = reg.get("dream", create=True)
    latents = [torch.randn(1, 4, 8, 8) for _ in range(7)]
    for i, lat in enumerate(latents):
        first, last = s.commit_keyframe(lat, seed=100 + i, frames=1 if i == 0 else 11, stats={"n": i})
        assert first == (1 if i == 0 else 2 + (i - 1) * 11) and last == first + (0 if i == 0 else 10)
    s.prompt, s.state = {"1": {"class_type": "X", "inputs": {}}}, "running"
    s.save_control()
    again = SessionRegistry(tmp_path).get("dream")
    assert again.iteration == 7 and again.next_frame == 1 + 6 * 11 + 1
    assert torch.equal(again.prev_latent, latents[-1])
    assert len(again.recent_latents) == 5 and all(torch.equal(x, y) for x, y in zip(again.recent_latents, latents[-5:]))
    assert again.seeds == [102, 103, 104, 105, 106] and again.stats == {"n": 6}
    assert again.prompt == s.prompt
    assert again.state == "interrupted", "running when the server stopped: nothing runs it after a restart"
    assert again.summary()["resumable"] is True
    assert sorted(p.name for p in (tmp_path / "dream").glob("latents-*")) == ["latents-00000007.safetensors"]


def test_failed_commit_leaves_state_unchanged(tmp_path, monkeypatch):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    s.commit_keyframe(torch.ones(1, 4, 2, 2), 1, 1, {})
    before = (tmp_path / "dream" / "state.json").read_bytes()
    monkeypatch.setenv(atomic_files.FAULT_ENV, "before_replace:state.json:enospc")
    with pytest.raises(OSError):
        s.commit_keyframe(torch.zeros(1, 4, 2, 2), 2, 11, {})
    assert s.iteration == 1 and torch.equal(s.prev_latent, torch.ones(1, 4, 2, 2))
    assert (tmp_path / "dream" / "state.json").read_bytes() == before
    monkeypatch.delenv(atomic_files.FAULT_ENV)
    reloaded = SessionRegistry(tmp_path).get("dream")
    assert reloaded.iteration == 1 and torch.equal(reloaded.prev_latent, torch.ones(1, 4, 2, 2))


def state_file(tmp_path) -> dict:
    return json.loads((tmp_path / "dream" / "state.json").read_text())


def test_a_staged_keyframe_is_in_memory_at_once_and_on_disk_once_committed(tmp_path):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    s.commit_keyframe(torch.ones(1, 4, 2, 2), 1, 1, {})
    commit = s.stage_keyframe(torch.zeros(1, 4, 2, 2), 2, 11, {"n": 2}, {"rotation": {"slot": 1}})
    assert s.iteration == 2 and s.next_frame == 13 and torch.equal(s.prev_latent, torch.zeros(1, 4, 2, 2))
    s.state = "running"
    s.save_control()
    on_disk = state_file(tmp_path)
    assert on_disk["iteration"] == 1 and on_disk["next_frame"] == 2 and on_disk["state"] == "running"
    assert SessionRegistry(tmp_path).get("dream").iteration == 1, "a restart now resumes from keyframe 1"
    assert (s.summary()["iteration"], s.summary()["frames"]) == (1, 1), "the session reports what is durable"
    assert commit(True) and commit.first == 2
    assert (s.summary()["iteration"], s.summary()["frames"]) == (2, 12)
    on_disk = state_file(tmp_path)
    assert (on_disk["iteration"], on_disk["next_frame"], on_disk["rotation"]) == (2, 13, {"slot": 1})
    assert sorted(p.name for p in (tmp_path / "dream").glob("latents-*")) == ["latents-00000002.safetensors"]


def test_a_failed_commit_rolls_memory_back_and_drops_the_later_ones(tmp_path, monkeypatch):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    s.commit_keyframe(torch.ones(1, 4, 2, 2), 1, 1, {})
    before = (tmp_path / "dream" / "state.json").read_bytes()
    second = s.stage_keyframe(torch.zeros(1, 4, 2, 2), 2, 11, {})
    third = s.stage_keyframe(torch.full((1, 4, 2, 2), 3.0), 3, 11, {})
    monkeypatch.setenv(atomic_files.FAULT_ENV, "before_replace:state.json:enospc")
    assert not second(True) and isinstance(second.error, OSError) and s.commit_error is second.error
    monkeypatch.delenv(atomic_files.FAULT_ENV)
    assert s.iteration == 1 and s.next_frame == 2 and torch.equal(s.prev_latent, torch.ones(1, 4, 2, 2))
    assert s.commits_failing
    assert not third(True) and third.error is None, "built on the failed keyframe: dropped"
    assert (tmp_path / "dream" / "state.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "dream").glob("latents-*")) == ["latents-00000001.safetensors"]
    assert s.stage_keyframe(torch.zeros(1, 4, 2, 2), 2, 11, {})(True) and not s.commits_failing


def test_unwritten_frames_drop_their_keyframe(tmp_path):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    s.commit_keyframe(torch.ones(1, 4, 2, 2), 1, 1, {})
    assert not s.stage_keyframe(torch.zeros(1, 4, 2, 2), 2, 11, {})(False)
    assert s.iteration == 1 and s.next_frame == 2 and s.commit_error is None
    assert state_file(tmp_path)["iteration"] == 1


def test_reset_drops_the_pending_commit(tmp_path):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    s.commit_keyframe(torch.ones(1, 4, 2, 2), 1, 1, {})
    pending = s.stage_keyframe(torch.zeros(1, 4, 2, 2), 2, 11, {})
    s.reset()
    assert not pending(True)
    assert state_file(tmp_path)["iteration"] == 0 and s.next_frame == 2
    assert not list((tmp_path / "dream").glob("latents-*"))


def test_loading_rolls_back_the_frames_of_keyframes_never_committed(tmp_path):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    s.commit_keyframe(torch.ones(1, 4, 2, 2), 1, 1, {})
    s.frames_dir.mkdir()
    for index in (1, 2, 3):
        (s.frames_dir / frame_name(index)).write_bytes(b"png")
    assert sorted(frames_on_disk(SessionRegistry(tmp_path).get("dream").frames_dir)) == [1]


def test_reset_keeps_frame_numbering(tmp_path):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    s.commit_keyframe(torch.ones(1, 4, 2, 2), 1, 1, {})
    s.commit_keyframe(torch.ones(1, 4, 2, 2), 1, 11, {})
    s.reset()
    assert s.iteration == 0 and s.prev_latent is None and s.next_frame == 13
    assert not list((tmp_path / "dream").glob("latents-*"))
    assert SessionRegistry(tmp_path).get("dream").next_frame == 13


def test_corrupt_files_give_clear_errors(tmp_path):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    s.commit_keyframe(torch.ones(1, 4, 2, 2), 1, 1, {})
    latents = tmp_path / "dream" / s.latents_file
    latents.write_bytes(latents.read_bytes()[:20])
    with pytest.raises(SessionError, match="reset the session"):
        SessionRegistry(tmp_path).get("dream")
    (tmp_path / "dream" / "state.json").write_text("{not json")
    with pytest.raises(SessionError, match="cannot read"):
        SessionRegistry(tmp_path).get("dream")


def test_registry_refuses_links_and_files(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "planted").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SessionError, match="link"):
        SessionRegistry(root).get("planted", create=True)
    (root / "afile").write_text("x")
    with pytest.raises(SessionError, match="not a folder"):
        SessionRegistry(root).get("afile", create=True)
    assert not list(outside.iterdir())
    with pytest.raises(KeyError):
        SessionRegistry(root).get("missing")


def test_strip_is_changed_copies():
    prompt = {"4": {"class_type": "S", "inputs": {"name": "d"}, "is_changed": [float("nan")]}}
    clean = strip_is_changed(prompt)
    assert "is_changed" not in clean["4"] and "is_changed" in prompt["4"]
    clean["4"]["inputs"]["name"] = "e"
    assert prompt["4"]["inputs"]["name"] == "d"


def test_atomic_write_survives_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    atomic_files.atomic_write_json(target, {"v": 1})
    monkeypatch.setenv(atomic_files.FAULT_ENV, "before_replace:f.json:enospc")
    with pytest.raises(OSError, match="No space"):
        atomic_files.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"], "temp file removed"
    with pytest.raises(ValueError):
        atomic_files.atomic_write_json(tmp_path / "nan.json", {"v": float("nan")})


def test_atomic_link_points_at_same_inode(tmp_path):
    src = tmp_path / "frame.png"
    src.write_bytes(b"png")
    atomic_files.atomic_link(src, tmp_path / "current.png")
    assert os.stat(tmp_path / "current.png").st_ino == src.stat().st_ino
    other = tmp_path / "frame2.png"
    other.write_bytes(b"png2")
    atomic_files.atomic_link(other, tmp_path / "current.png")
    assert (tmp_path / "current.png").read_bytes() == b"png2"


def commit_with_frames(session, latents, write_frames=True):
    """Commit ``latents`` as keyframes as the Commit node does (1 frame, then 11 per pair)."""
    for i, lat in enumerate(latents):
        frames = 1 if session.iteration == 0 else 11
        first, last = session.commit_keyframe(lat, seed=100 + i, frames=frames,
                                              stats={"frames_last_iteration": frames})
        session.frames_dir.mkdir(exist_ok=True)
        if write_frames:
            for index in range(first, last + 1):
                (session.frames_dir / frame_name(index)).write_bytes(b"png")


def test_a_keyframe_whose_frames_were_not_written_is_made_again(tmp_path, caplog):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    latents = [torch.randn(1, 4, 8, 8) for _ in range(4)]
    commit_with_frames(s, latents[:3])
    commit_with_frames(s, latents[3:], write_frames=False)  # the server died before the writer wrote them
    for index in range(s.next_frame - 11, s.next_frame - 5):  # part of the pair reached the disk
        (s.frames_dir / frame_name(index)).write_bytes(b"png")
    assert (s.iteration, s.next_frame) == (4, 35)

    again = SessionRegistry(tmp_path).get("dream")
    assert (again.iteration, again.next_frame) == (3, 24), "the pair is redone under the same frame numbers"
    assert torch.equal(again.prev_latent, latents[2]) and len(again.recent_latents) == 3
    assert again.seeds == [100, 101, 102] and "frames_last_iteration" not in again.stats
    assert "keyframe 4's frames were not all written" in caplog.text
    on_disk = json.loads((tmp_path / "dream" / "state.json").read_text())
    assert (on_disk["iteration"], on_disk["next_frame"], on_disk["latents_file"]) == (3, 24, "latents-00000003.safetensors")
    assert [p.name for p in (tmp_path / "dream").glob("latents-*")] == ["latents-00000003.safetensors"]

    once_more = SessionRegistry(tmp_path).get("dream")
    assert (once_more.iteration, once_more.next_frame) == (3, 24), "one step back, not one per restart"
    assert torch.equal(once_more.prev_latent, latents[2])


def test_a_first_keyframe_without_its_frame_goes_back_to_the_start(tmp_path):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    commit_with_frames(s, [torch.randn(1, 4, 8, 8)], write_frames=False)
    again = SessionRegistry(tmp_path).get("dream")
    assert (again.iteration, again.next_frame, again.prev_latent, again.latents_file) == (0, 1, None, None)
    assert not list((tmp_path / "dream").glob("latents-*"))


def test_written_frames_keep_the_newest_keyframe(tmp_path):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    latents = [torch.randn(1, 4, 8, 8) for _ in range(3)]
    commit_with_frames(s, latents)
    for stale in sorted(s.frames_dir.iterdir())[:-1]:
        stale.unlink()  # the retention limit pruned the older ones: the newest frame is all it looks at
    again = SessionRegistry(tmp_path).get("dream")
    assert again.iteration == 3 and torch.equal(again.prev_latent, latents[2])


def test_when_going_back_cannot_be_saved_the_newest_keyframe_stays(tmp_path, monkeypatch, caplog):
    s = SessionRegistry(tmp_path).get("dream", create=True)
    latents = [torch.randn(1, 4, 8, 8) for _ in range(3)]
    commit_with_frames(s, latents[:2])
    commit_with_frames(s, latents[2:], write_frames=False)
    before = (tmp_path / "dream" / "state.json").read_bytes()
    monkeypatch.setenv(atomic_files.FAULT_ENV, "before_replace:state.json:enospc")
    again = SessionRegistry(tmp_path).get("dream")
    assert again.iteration == 3 and torch.equal(again.prev_latent, latents[2])
    assert (tmp_path / "dream" / "state.json").read_bytes() == before
    assert [p.name for p in (tmp_path / "dream").glob("latents-*")] == ["latents-00000003.safetensors"]
    assert "cannot go back to keyframe 2" in caplog.text
