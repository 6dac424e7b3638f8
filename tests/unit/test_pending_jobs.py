"""core.cache.pending_jobs: a keyframe's analysis on a worker thread, settled before its state is read."""

import logging
import threading

import pytest
import torch

from core.cache.aesthetic_loop import AestheticLoop
from core.cache.pending_jobs import PendingJobs
from core.cache.similarity import get_strategy
from core.cache.store import CacheStore

FORCE = {"warmup_keyframes": 0, "injection_probability": 1.0, "injection_cooldown": 0}
WIDE = {"dual_metric": {"color": [0.0, 3.0], "struct": [0.0, 1.0]}, "latent_pool": {"cosine": [-1.0, 1.0]}}


def test_a_job_runs_on_the_worker_and_settle_waits_for_it():
    jobs, release, seen = PendingJobs("dw_test"), threading.Event(), []

    def job():
        release.wait(5)
        seen.append(threading.current_thread().name)

    jobs.submit("s", job)
    assert jobs.pending("s") and not seen
    threading.Timer(0.05, release.set).start()
    jobs.settle("s")
    assert seen and seen[0].startswith("dw_test") and seen[0] != threading.current_thread().name
    assert not jobs.pending("s")
    jobs.settle("s")  # nothing pending: nothing to do
    assert len(seen) == 1


def test_one_pending_job_per_key():
    jobs = PendingJobs("dw_test")
    jobs.submit("a", lambda: None)
    jobs.submit("b", lambda: None)
    with pytest.raises(RuntimeError, match="'a': the previous job was not settled"):
        jobs.submit("a", lambda: None)
    jobs.settle("a")
    jobs.submit("a", lambda: None)


def test_a_passing_failure_costs_one_more_run_on_the_settling_thread(caplog):
    jobs, runs = PendingJobs("dw_test"), []

    def flaky():
        runs.append(threading.current_thread().name)
        if len(runs) == 1:
            raise OSError("transient")

    jobs.submit("s", flaky)
    with caplog.at_level(logging.WARNING, logger="dream_window"):
        jobs.settle("s")
    assert len(runs) == 2 and runs[1] == threading.current_thread().name
    assert "background job failed (OSError: transient); running it again" in caplog.text
    assert not jobs.pending("s")


def test_a_lasting_failure_stays_pending_and_fails_every_settle():
    jobs, runs = PendingJobs("dw_test"), []

    def broken():
        runs.append(1)
        raise ValueError("embedding sizes differ")

    jobs.submit("s", broken)
    for attempt in range(3):
        with pytest.raises(ValueError, match="embedding sizes differ"):
            jobs.settle("s")
        assert jobs.pending("s") and len(runs) == attempt + 2
    with pytest.raises(RuntimeError, match="not settled"):
        jobs.submit("s", lambda: None)


def test_discard_forgets_a_failed_job_and_logs_it(caplog):
    jobs = PendingJobs("dw_test")
    jobs.submit("s", lambda: 1 / 0)
    with caplog.at_level(logging.WARNING, logger="dream_window"):
        jobs.discard("s")
    assert not jobs.pending("s") and "dropped: division by zero" in caplog.text
    jobs.discard("s")
    jobs.submit("s", lambda: None)
    jobs.settle("s")


def keyframe_pair(k):
    g = torch.Generator().manual_seed(k)
    return torch.randn(2, 4, 8, 16, generator=g), torch.rand(2, 64, 128, 3, generator=g)


@pytest.mark.parametrize("strategy", ["dual_metric", "latent_pool"])
def test_background_analysis_gives_the_inline_decisions_and_cache(tmp_path, strategy):
    """Each keyframe's analysis on the worker, settled before the next decision, admits the same
    entries and leads to the same decisions as the analysis made inline."""
    results = []
    for mode in ("inline", "background"):
        store = CacheStore(tmp_path / mode, get_strategy(strategy), capacity=6)
        loop = AestheticLoop.create(store, admission_rule="mean", tuning=dict(FORCE, windows=WIDE[strategy]),
                                    rng_seed=3)
        jobs, decisions = PendingJobs("dw_test"), []
        for k in range(1, 13):
            jobs.settle("s")
            decision = loop.decide(k, seed_count=2).to_dict()
            entry_id = decision.pop("entry_id")  # a cache id holds a random part: compare the entry it names
            if entry_id is not None:
                entry = store.get(entry_id)
                decision["entry"] = (entry.generation_params["keyframe"], entry.source)
                decision["reason"] = decision["reason"].replace(entry_id, "<id>")
            decisions.append(decision)
            latents, images = keyframe_pair(k)

            def analyse(k=k, latents=latents, images=images):
                with torch.inference_mode():
                    loop.after_keyframe(k, latents, images, injected=decisions[-1]["action"] != "none")

            if mode == "inline":
                analyse()
            else:
                jobs.submit("s", analyse)
            loop.commit(k)  # as the Commit node does once the keyframe is committed
        jobs.settle("s")
        keyframes = [entry.generation_params["keyframe"] for entry in store.entries()]
        results.append((decisions, keyframes, loop.detector.frames_analyzed))
    assert results[0] == results[1]
    assert any(d["action"] == "cache" for d in results[0][0]), "no cache injection: the comparison proves little"
