"""The re-queue supervisor against a fake server backend (pure asyncio, no ComfyUI)."""

import asyncio

import pytest
import torch

from core.loop import supervisor as sup_mod
from core.loop.session import SessionRegistry
from core.loop.supervisor import Supervisor
from helpers.asyncrun import run_isolated as run

PROMPT = {"4": {"class_type": "DreamWindowSession", "inputs": {"name": "s"}, "is_changed": [1.0]}}


class FakeBackend:
    def __init__(self):
        self.results = {}
        self.queued = []
        self.workflows = []
        self.deleted = []
        self.busy = False
        self.reject = 0
        self.on_queue = None
        self.removed = set()
        self.dropped = []
        self.pending = 0
        self.answer = None

    def prompt_result(self, prompt_id):
        return self.results.get(prompt_id)

    def session_queued(self, session):
        return self.busy or self.pending > 0

    def prompt_queued(self, prompt_id):
        return prompt_id not in self.removed and prompt_id not in self.results

    async def queue_prompt(self, prompt, client_id, prompt_id, extra_pnginfo):
        if self.reject:
            self.reject -= 1
            raise RuntimeError("ComfyUI refused the stored workflow: missing model")
        if self.answer is not None:  # the server answers the POST only once the test sets this event
            await self.answer.wait()
        if self.on_queue:
            self.on_queue(prompt_id)
        self.queued.append((prompt_id, prompt, client_id))
        self.workflows.append(extra_pnginfo)

    def delete_history(self, prompt_id):
        self.deleted.append(prompt_id)

    def drop_queued(self, session):
        self.dropped.append(session)
        dropped, self.pending = self.pending, 0
        return dropped


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(sup_mod, "BACKOFF_BASE", 0.001)
    monkeypatch.setattr(sup_mod, "POLL_INTERVAL", 0.001)
    monkeypatch.setattr(sup_mod, "HOLD_POLL", 0.005)
    monkeypatch.setattr(sup_mod, "WIND_DOWN_POLL", 0.001)


def make(tmp_path, hold=lambda: False):
    session = SessionRegistry(tmp_path).get("s", create=True)
    backend = FakeBackend()
    return session, backend, Supervisor(session, backend, hold)


async def settle(cond, timeout=2.0):
    for _ in range(int(timeout / 0.002)):
        if cond():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not reached")


def test_success_requeues_stripped_prompt_with_client_id(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        sup.attach("u1", PROMPT, "client-a", {"enabled": True})
        assert session.state == "running"
        backend.results["u1"] = ("success", None)
        await settle(lambda: backend.queued)
        pid, prompt, cid = backend.queued[0]
        assert "is_changed" not in prompt["4"] and cid == "client-a"
        sup.attach(pid, prompt, None, {"enabled": True})
        backend.results[pid] = ("success", None)
        await settle(lambda: len(backend.queued) == 2)
        assert backend.deleted == ["u1"], "the previous finished prompt leaves history"
    run(main())


def test_requeues_carry_the_workflow_the_user_queued_and_it_is_persisted(tmp_path):
    workflow = {"workflow": {"nodes": [], "links": []}}

    async def main():
        session, backend, sup = make(tmp_path)
        sup.attach("u1", PROMPT, "client-a", {"enabled": True}, workflow)
        backend.results["u1"] = ("success", None)
        await settle(lambda: backend.queued)
        pid, prompt, _ = backend.queued[0]
        sup.attach(pid, prompt, None, {"enabled": True})  # the supervisor's own prompt: ComfyUI hands it back
        backend.results[pid] = ("success", None)
        await settle(lambda: len(backend.queued) == 2)
        assert backend.workflows == [workflow, workflow]
        assert SessionRegistry(tmp_path).get("s").extra_pnginfo == workflow, "kept across a restart"
    run(main())


def test_errors_retry_with_backoff_then_pause(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        sup.attach("u1", PROMPT, None, {"enabled": True})
        backend.results["u1"] = ("error", {"message": "boom", "node_type": "KSampler", "node_id": "6"})
        for n in range(1, 4):
            await settle(lambda: len(backend.queued) == n)
            backend.results[backend.queued[-1][0]] = ("error", {"message": "boom", "node_type": "KSampler"})
        await settle(lambda: session.state == "paused")
        assert len(backend.queued) == 3 and session.error["retries"] == 3 and session.error["message"] == "boom"
        await asyncio.sleep(0.05)
        assert len(backend.queued) == 3
        reloaded = SessionRegistry(tmp_path).get("s")
        assert reloaded.state == "paused" and reloaded.error["message"] == "boom"
    run(main())


def test_a_success_resets_the_retry_count(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        sup.attach("u1", PROMPT, None, {"enabled": True})
        outcomes = ["error", "error", "success", "error", "error", "error", "success"]
        backend.results["u1"] = (outcomes[0], {"message": "x"})
        for i, outcome in enumerate(outcomes[1:], start=1):
            await settle(lambda: len(backend.queued) == i)
            backend.results[backend.queued[-1][0]] = (outcome, {"message": "x"} if outcome == "error" else None)
        await settle(lambda: len(backend.queued) == len(outcomes))
        assert session.state == "running"
    run(main())


def test_interrupt_pauses_without_retry(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        sup.attach("u1", PROMPT, None, {"enabled": True})
        backend.results["u1"] = ("interrupted", None)
        await settle(lambda: session.state == "paused")
        await asyncio.sleep(0.02)
        assert backend.queued == []
    run(main())


def test_pause_and_stop_take_effect_at_the_boundary(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        sup.attach("u1", PROMPT, None, {"enabled": True})
        sup.set_state("stopped")
        backend.results["u1"] = ("success", None)
        await asyncio.sleep(0.05)
        assert backend.queued == [] and session.state == "stopped"
        pid = await sup.start()
        assert session.state == "running" and backend.queued[-1][0] == pid
        sup.set_state("paused")
        sup.attach(pid, PROMPT, None, None)
        assert session.state == "paused", "the chain's own prompt never overrides a user's pause"
    run(main())


def test_one_chain_when_another_prompt_of_the_session_is_queued(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        sup.attach("u1", PROMPT, None, {"enabled": True})
        backend.busy = True
        backend.results["u1"] = ("success", None)
        await asyncio.sleep(0.05)
        assert backend.queued == []
    run(main())


async def stopped_by_the_limit(tmp_path):
    """A session that ``max_iterations`` = 1 stopped after its one keyframe, and nothing queued."""
    session, backend, sup = make(tmp_path)
    session.commit_keyframe(torch.zeros(1, 4, 2, 2), 1, 1, {})
    sup.attach("u1", PROMPT, None, {"enabled": True, "max_iterations": 1})
    backend.results["u1"] = ("success", None)
    await settle(lambda: session.state == "stopped")
    assert backend.queued == []
    return session, backend, sup


def test_max_iterations_and_disabled_autoqueue(tmp_path):
    async def main():
        session, backend, sup = await stopped_by_the_limit(tmp_path)
        sup.attach("u2", PROMPT, None, {"enabled": False, "max_iterations": 0})
        assert session.state == "idle"
        backend.results["u2"] = ("error", {"message": "x"})
        await asyncio.sleep(0.05)
        assert backend.queued == [], "no retries for a single-shot run"
    run(main())


def test_rejected_prompt_counts_as_failure(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        backend.reject = 10
        sup.attach("u1", PROMPT, None, {"enabled": True})
        backend.results["u1"] = ("success", None)
        await settle(lambda: session.state == "paused")
        assert "refused" in session.error["message"]
    run(main())


def test_hold_delays_the_requeue(tmp_path):
    held = {"on": True}

    async def main():
        session, backend, sup = make(tmp_path, hold=lambda: held["on"])
        sup.attach("u1", PROMPT, None, {"enabled": True})
        backend.results["u1"] = ("success", None)
        await asyncio.sleep(0.05)
        assert backend.queued == []
        held["on"] = False
        await settle(lambda: backend.queued)
    run(main())


def test_start_without_stored_prompt(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        with pytest.raises(sup_mod.ControlRefused, match="queue the Dream Window workflow once"):
            await sup.start()
    run(main())


def test_retry_that_starts_before_the_post_returns_keeps_counting(tmp_path):
    """A re-queued prompt may begin executing (and attach) before the HTTP reply arrives."""
    async def main():
        session, backend, sup = make(tmp_path)
        backend.on_queue = lambda pid: sup.attach(pid, PROMPT, None, None)
        sup.attach("u1", PROMPT, None, {"enabled": True})
        backend.results["u1"] = ("error", {"message": "boom"})
        for n in range(1, 4):
            await settle(lambda: len(backend.queued) == n)
            backend.results[backend.queued[-1][0]] = ("error", {"message": "boom"})
        await settle(lambda: session.state == "paused")
        assert len(backend.queued) == 3 and session.error["retries"] == 3
    run(main())


def test_clear_queue_pauses_instead_of_waiting_forever(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        sup.attach("u1", PROMPT, None, {"enabled": True})
        backend.results["u1"] = ("success", None)
        await settle(lambda: backend.queued)
        backend.removed.add(backend.queued[0][0])
        await settle(lambda: session.state == "paused")
        assert session.error is None and len(backend.queued) == 1
    run(main())


@pytest.mark.parametrize("exception_type", [sup_mod.type_name(sup_mod.ConfigurationError), "FileNotFoundError"])
def test_an_error_no_retry_can_fix_pauses_at_once(tmp_path, exception_type):
    async def main():
        session, backend, sup = make(tmp_path)
        sup.attach("u1", PROMPT, None, {"enabled": True})
        backend.results["u1"] = ("error", {"message": "no seed_folder", "exception_type": exception_type})
        await settle(lambda: session.state == "paused")
        await asyncio.sleep(0.05)
        assert backend.queued == [] and session.error["retries"] == 0 and session.error["message"] == "no seed_folder"
    run(main())


def test_a_workflow_the_server_refuses_as_invalid_pauses_at_once(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)

        async def refuse(prompt, client_id, prompt_id, extra_pnginfo):
            backend.queued.append((prompt_id, prompt, client_id))
            raise sup_mod.ConfigurationError("ComfyUI refused the stored workflow: model not found")
        backend.queue_prompt = refuse
        sup.attach("u1", PROMPT, None, {"enabled": True})
        backend.results["u1"] = ("success", None)
        await settle(lambda: session.state == "paused")
        await asyncio.sleep(0.05)
        assert len(backend.queued) == 1 and session.error["retries"] == 0
    run(main())


def test_a_finished_session_refuses_start_and_a_stopped_one_stays_stopped_on_pause(tmp_path):
    async def main():
        session, backend, sup = await stopped_by_the_limit(tmp_path)
        with pytest.raises(sup_mod.ControlRefused, match="reached max_iterations=1"):
            await sup.start()
        assert sup.set_state("paused") is False and session.state == "stopped" and backend.queued == []
        session.settings = session.settings.with_values(max_iterations=2)
        await sup.start()
        assert session.state == "running" and len(backend.queued) == 1
        assert sup.set_state("paused") is True and session.state == "paused"
    run(main())


def test_the_monitors_pause_reason_is_kept_with_the_state_and_cleared_by_any_other_change(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        sup.attach("u1", PROMPT, None, {"enabled": True})
        assert sup.set_state("paused", "yielding to game.exe")
        assert session.summary()["paused_reason"] == "yielding to game.exe"
        assert '"paused_reason": "yielding to game.exe"' in (tmp_path / "s" / "state.json").read_text()
        reloaded = SessionRegistry(tmp_path).get("s")  # a new server: no monitor of it paused the session
        assert (reloaded.state, reloaded.paused_reason) == ("paused", None)
        await sup.start()
        assert (session.state, session.paused_reason) == ("running", None)
        sup.set_state("paused", "yielding to game.exe")
        sup.set_state("paused")  # the user pauses it too: now it is the user's pause
        assert session.paused_reason is None
        sup.set_state("paused", "yielding to game.exe")
        sup.set_state("stopped")
        assert session.summary()["paused_reason"] is None
    run(main())


def test_wind_down_drops_the_queued_prompts_and_waits_for_the_running_one(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        backend.busy = True
        waiting = asyncio.ensure_future(sup.wind_down(timeout=5.0))
        await asyncio.sleep(0.05)
        assert set(backend.dropped) == {"s"} and not waiting.done(), "it waits while an iteration of the session runs"
        backend.busy = False
        assert await waiting is True
        backend.busy = True
        assert await sup.wind_down(timeout=0.02) is False, "still running at the deadline"
    run(main())


def start_unanswered(tmp_path):
    """A session with a stored prompt whose ``start()`` is under way: ComfyUI answers its POST once the test
    sets ``backend.answer``. (session, backend, supervisor, the start's task)."""
    session, backend, sup = make(tmp_path)
    session.prompt = PROMPT
    backend.answer = asyncio.Event()
    return session, backend, sup, asyncio.ensure_future(sup.start())


def test_wind_down_drops_a_prompt_whose_post_was_under_way(tmp_path):
    """A delete or reset while the supervisor's POST of the next iteration is unanswered: the prompt lands in
    the queue after the first drop, and is dropped then."""
    async def main():
        session, backend, sup, posting = start_unanswered(tmp_path)
        await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(sup.wind_down(timeout=5.0))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "the POST under way is a prompt of the session"
        backend.pending += 1  # it reaches the queue as the POST is answered
        backend.answer.set()
        await posting
        assert await waiting is True
        assert backend.pending == 0, "the prompt that landed was dropped"
    run(main())


def test_concurrent_starts_queue_one_prompt(tmp_path):
    """Resume pressed twice (or by two clients) before the first POST is answered: one prompt, one chain."""
    async def main():
        session, backend, sup, first = start_unanswered(tmp_path)
        await asyncio.sleep(0.01)
        second = await asyncio.wait_for(sup.start(), 1.0)  # a second POST would wait for the first's answer
        backend.answer.set()
        await first
        assert second == "already queued" and len(backend.queued) == 1
    run(main())


def test_a_start_while_the_next_iteration_is_being_queued_adds_no_second_chain(tmp_path):
    async def main():
        session, backend, sup = make(tmp_path)
        sup.attach("u1", PROMPT, None, {"enabled": True})
        backend.answer = asyncio.Event()
        backend.results["u1"] = ("success", None)
        await settle(lambda: backend.session_queued("s") is False and sup.watching == set())
        assert await asyncio.wait_for(sup.start(), 1.0) == "already queued"
        backend.answer.set()
        await settle(lambda: len(backend.queued) == 1)
        await asyncio.sleep(0.05)
        assert len(backend.queued) == 1
    run(main())


def test_a_prompt_that_ends_before_its_post_is_answered_is_handled_once(tmp_path):
    """Start's prompt runs and fails before ComfyUI answers the POST (a loaded server): the watcher handles
    its end once; the POST's answer does not make the supervisor watch (and count) it again."""
    async def main():
        session, backend, sup, starting = start_unanswered(tmp_path)
        await settle(lambda: sup.own_prompts)
        (prompt_id,) = sup.own_prompts
        sup.attach(prompt_id, PROMPT, None, {"enabled": True})
        backend.results[prompt_id] = ("error", {"message": "boom", "node_type": "KSampler"})
        await settle(lambda: sup.failures == 1)
        backend.answer.set()
        await starting
        await settle(lambda: len(backend.queued) == 2)  # start's prompt, then the retry
        await asyncio.sleep(0.05)
        assert sup.failures == 1 and session.error["retries"] == 0, session.error
        assert len(backend.queued) == 2
    run(main())
