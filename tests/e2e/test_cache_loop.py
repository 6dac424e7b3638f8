"""The aesthetic cache inside the looping workflow: injection, CLIP vision, modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers.dream_loop import WHITELIST, captured, changed_fields, dream_workflow
from tools.harness.comfy_process import TINY_CLIP_VISION

pytestmark = pytest.mark.e2e

FORCE = {"warmup_keyframes": 0, "injection_probability": 1.0, "injection_cooldown": 0,
         "windows": {"cosine": [-1.0, 1.0]}}


def run_iterations(comfy, wf, name, k, timeout=120):
    comfy.queue(wf)
    comfy.wait_for(lambda: (comfy.session(name) or {}).get("iteration", 0) >= k, timeout=timeout,
                   what=f"{k} iterations of {name}")
    comfy.control("stop", name)
    return comfy.wait_for(lambda: (s := comfy.session(name)) and not comfy.get("/queue")["queue_running"] and s,
                          timeout=60, what=f"{name} to stop")


def test_forced_injection_blends_the_cached_latent(comfy):
    wf = dream_workflow("inject", capture="cap_inject", injection=True)
    wf["3"]["inputs"].update(strategy="latent_pool", admission="always", tuning=json.dumps(FORCE))
    assert changed_fields(wf) <= WHITELIST | {("3", "admission")}
    run_iterations(comfy, wf, "inject", 5)
    info = comfy.get("/dream_window/cache/inject")
    assert info["strategy"] == "latent_pool" and info["size"] >= 2
    src, out = captured(comfy.base / "output", "cap_inject", "src"), captured(comfy.base / "output", "cap_inject", "out")
    injected = [d for d in info["decisions"] if d["action"] == "cache"]
    assert injected, info["decisions"]
    tensors = comfy.base / "output" / "dream_window_cache" / "inject" / "tensors"
    for decision in injected:
        k = decision["keyframe"]
        cached = load_file(str(tensors / f"{decision['entry_id']}.safetensors"))["latent"]
        expected = 0.75 * cached + 0.25 * out[k - 2]
        assert torch.allclose(src[k - 1], expected, atol=1e-5), f"keyframe {k} is not the 0.75/0.25 blend"
    state = json.loads((comfy.base / "output" / "dream_window" / "inject" / "state.json").read_text())
    assert state["stats"]["last_decision"]["action"] in ("cache", "none")
    assert state["policy"]["injection"]["total_cache_injections"] == len(injected)


def test_clip_vision_workflow_runs(comfy):
    wf = dream_workflow("dream_clip", name="dream_window_clip")
    wf["11"]["inputs"]["clip_name"] = TINY_CLIP_VISION
    assert changed_fields(wf, "dream_window_clip") <= WHITELIST
    run_iterations(comfy, wf, "dream_clip", 2, timeout=240)
    info = comfy.get("/dream_window/cache/dream_clip")
    assert info["strategy"] == "clip_vision" and info["size"] >= 1
    assert info["cache_error"] is None


def test_img2img_mode_makes_keyframes_only(comfy):
    wf = dream_workflow("keyframes_only")
    wf["5"]["inputs"]["mode"] = "img2img"
    state = run_iterations(comfy, wf, "keyframes_only", 3)
    assert state["frames"] == state["iteration"], "img2img: one frame per iteration"


@pytest.mark.parametrize("divisor", ["1", "2"])
def test_interpolate_mode_walks_between_cached_seed_images(comfy, divisor):
    seeds = comfy.base / "input" / "walk_seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(seeds / f"s{i}.png")
    name = f"walker_{divisor}"
    wf = dream_workflow(name)
    wf["5"]["inputs"].update(mode="interpolate", seed_folder="walk_seeds")
    wf["7"]["inputs"]["divisor"] = divisor
    state = run_iterations(comfy, wf, name, 3)
    assert state["frames"] == 1 + (state["iteration"] - 1) * 11
    info = comfy.get(f"/dream_window/cache/{name}")
    assert sorted(e["source"] for e in info["entries"]) == ["seed"] * 3
    folder = comfy.base / "output" / "dream_window" / name
    comfy.wait_for(lambda: len(sorted((folder / "frames").glob("frame_*.png"))) >= state["frames"],
                   what=f"the frames of {name} on disk")
    frames = sorted((folder / "frames").glob("frame_*.png"))
    assert {Image.open(path).size for path in frames} == {(64, 64)}, "every frame at the keyframe size"
    committed = json.loads((folder / "state.json").read_text())
    recent = load_file(str(folder / committed["latents_file"]))
    keyframe = recent[max(recent, key=lambda key: int(key.split("_")[1]))]
    tensors = comfy.base / "output" / "dream_window_cache" / name / "tensors"
    cached = [load_file(str(tensors / f"{e['id']}.safetensors"))["latent"] for e in info["entries"]]
    assert any(torch.equal(keyframe, c) for c in cached), "no sampling: each keyframe is a cached seed latent"


def test_interpolate_mode_without_cache_or_seeds_says_what_to_do(comfy):
    wf = dream_workflow("lost_walker", autoqueue=False)
    wf["5"]["inputs"]["mode"] = "interpolate"
    comfy.queue(wf)
    state = comfy.wait_for(lambda: (s := comfy.session("lost_walker")) and s["last_error"] and s, timeout=60,
                           what="the walk to fail")
    message = state["last_error"]["message"]
    assert "DreamWindowKeyframeSource" in message and "seed_folder" in message and state["iteration"] == 0


# Drawn cache injections (no seeds, no collapse verdict this early) from one cache that is never
# empty: what a keyframe's decision is depends on the rng_seed, the keyframe number and the policy
# state alone.
DRAWN = {"warmup_keyframes": 0, "injection_probability": 0.5, "injection_cooldown": 1,
         "windows": {"cosine": [-1.0, 1.5]}}
KEYFRAMES = 6


def drawn_workflow(name, limit=KEYFRAMES, fault=False):
    wf = dream_workflow(name, injection=True, fault=fault)
    wf["3"]["inputs"].update(strategy="latent_pool", admission="always", rng_seed=7, tuning=json.dumps(DRAWN),
                             cache_name="decide_cache")
    wf["10"]["inputs"]["max_iterations"] = limit
    assert changed_fields(wf) <= WHITELIST | {("3", "admission"), ("3", "rng_seed")}
    return wf


def run_to_the_limit(comfy, wf, name):
    limit = wf["10"]["inputs"]["max_iterations"]
    comfy.queue(wf)
    comfy.wait_for(lambda: (s := comfy.session(name)) and s["state"] == "stopped" and s["iteration"] >= limit
                   and not comfy.get("/queue")["queue_running"], timeout=120, what=f"{name} to make {limit} keyframes")


def decisions(comfy, name):
    """The committed decisions of keyframes 2..KEYFRAMES, without what the cache's contents decide
    (the entry drawn, its score)."""
    state = json.loads((comfy.base / "output" / "dream_window" / name / "state.json").read_text())
    return [(d["keyframe"], d["action"], d["reason"].split(":")[0]) for d in state["policy"]["decisions"]]


@pytest.fixture(scope="module")
def fresh_decisions(comfy):
    run_to_the_limit(comfy, drawn_workflow("decide_filler", limit=1), "decide_filler")
    run_to_the_limit(comfy, drawn_workflow("decide_fresh"), "decide_fresh")
    made = decisions(comfy, "decide_fresh")
    assert [k for k, _, _ in made] == list(range(2, KEYFRAMES + 1))
    assert {action for _, action, _ in made} == {"cache", "none"}, made
    return made


def test_reset_and_delete_decide_like_a_fresh_session(comfy, fresh_decisions):
    wf = drawn_workflow("decide_reset")
    run_to_the_limit(comfy, wf, "decide_reset")
    comfy.control("reset", "decide_reset")
    run_to_the_limit(comfy, wf, "decide_reset")
    assert decisions(comfy, "decide_reset") == fresh_decisions, "after a reset"
    comfy.control("delete", "decide_reset")
    run_to_the_limit(comfy, wf, "decide_reset")
    assert decisions(comfy, "decide_reset") == fresh_decisions, "a new session under a deleted one's name"


def test_a_retried_iteration_decides_as_if_it_never_failed(comfy, fresh_decisions):
    flag = comfy.base / "input" / "dwtest_fail"
    run_to_the_limit(comfy, drawn_workflow("decide_retry", limit=2, fault=True), "decide_retry")
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()  # keyframe 3 fails after its decision (the fault node is the sampler's input)
    try:
        comfy.queue(drawn_workflow("decide_retry", fault=True))
        comfy.wait_for(lambda: "dream_window[decide_retry]: iteration failed (" in comfy.log_tail(200000),
                       timeout=60, what="keyframe 3 to fail")
    finally:
        flag.unlink()
    comfy.wait_for(lambda: (s := comfy.session("decide_retry")) and s["state"] == "stopped"
                   and s["iteration"] >= KEYFRAMES and not comfy.get("/queue")["queue_running"], timeout=120,
                   what="the retried loop to reach its limit")
    assert decisions(comfy, "decide_retry") == fresh_decisions


def test_cache_settings_apply_from_the_next_iteration(comfy):
    wf = dream_workflow("resettle")
    wf["3"]["inputs"].update(strategy="latent_pool", admission="always", capacity=4)
    wf["10"]["inputs"]["max_iterations"] = 3
    run_to_the_limit(comfy, wf, "resettle")  # 1 + 2 + 2 entries offered, 4 kept
    info = comfy.get("/dream_window/cache/resettle")
    assert (info["eviction"], info["capacity"], info["size"]) == ("fifo", 4, 4)
    wf["3"]["inputs"].update(eviction="redundancy", capacity=2)
    wf["10"]["inputs"]["max_iterations"] = 4
    run_to_the_limit(comfy, wf, "resettle")
    info = comfy.get("/dream_window/cache/resettle")
    assert (info["eviction"], info["capacity"], info["size"]) == ("redundancy", 2, 2)
    index = comfy.base / "output" / "dream_window_cache" / "resettle" / "metadata" / "cache_index.json"
    assert {e["cache_id"] for e in json.loads(index.read_text())["entries"]} == {e["id"] for e in info["entries"]}
    wf["3"]["inputs"].update(admission="max", tuning=json.dumps({"admission_max": {"cosine": -2.0}}))  # admits none
    wf["10"]["inputs"]["max_iterations"] = 5
    run_to_the_limit(comfy, wf, "resettle")
    assert comfy.get("/dream_window/cache/resettle")["entries"] == info["entries"], "the new admission rule applies"

    # A strategy change over entries embedded with another strategy is refused, saying how to go on.
    wf["3"]["inputs"]["strategy"] = "dual_metric"
    wf["10"]["inputs"].update(enabled=False, max_iterations=6)  # one keyframe more: the session finished at 5
    comfy.queue(wf)
    state = comfy.wait_for(lambda: (s := comfy.session("resettle")) and s["last_error"] and s, timeout=60,
                           what="the strategy change to be refused")
    message = state["last_error"]["message"]
    folder = comfy.base / "output" / "dream_window_cache" / "resettle"
    assert "DreamWindowCache" in message and "'latent_pool'" in message and "'dual_metric'" in message
    assert "cache name" in message and f"delete {folder}" in message and state["iteration"] == 5


def test_a_keyframe_and_its_duplicate_midpoint_enter_the_cache_once(comfy):
    wf = dream_workflow("twins", autoqueue=False)
    wf["5"]["inputs"]["denoise"] = 0.0  # the sampler returns its input: keyframe 2 and the midpoint are keyframe 1
    wf["3"]["inputs"].update(strategy="latent_pool", admission="max", cache_name="twins_first")
    assert changed_fields(wf) <= WHITELIST | {("3", "admission"), ("5", "denoise")}
    for k, cache_name in ((1, "twins_first"), (2, "twins_second")):  # keyframe 2 meets an empty cache
        wf["3"]["inputs"]["cache_name"] = cache_name
        comfy.queue(wf)
        comfy.wait_for(lambda: (s := comfy.session("twins")) and s["iteration"] == k
                       and not comfy.get("/queue")["queue_running"], timeout=60, what=f"keyframe {k}")
    assert [e["source"] for e in comfy.get("/dream_window/cache/twins")["entries"]] == ["keyframe"]
