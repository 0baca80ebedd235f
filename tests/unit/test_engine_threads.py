"""The thread governor: `decide()` over scripted CPU-wait traces, and the governor around a real torch."""
from __future__ import annotations

import pytest
import torch

from labkit.engine import threads
from labkit.engine.threads import GovernorPolicy, GovernorState, ThreadGovernor, cpu_wait_seconds, decide

pytestmark = pytest.mark.unit
POLICY = GovernorPolicy(window_s=1.0, shared_above=0.2, free_below=0.05, first_backoff_s=10, max_backoff_s=40)


def run(trace: list[float], max_threads: int = 2) -> list[int]:
    """Thread counts after each one-second window whose CPU wait per second is given."""
    state, counts = GovernorState(max_threads, POLICY.first_backoff_s, 0.0), []
    for second, waited in enumerate(trace, start=1):
        state = decide(state, waited, max_threads, float(second), POLICY)
        counts.append(state.threads)
    return counts


def test_a_free_cpu_keeps_every_thread():
    assert run([0.0, 0.01, 0.03, 0.0] * 10) == [2] * 40


def test_a_shared_cpu_drops_to_one_thread_at_once_and_stays_while_shared():
    assert run([0.0, 0.8] + [0.3] * 20) == [2, 1] + [1] * 20


def test_the_full_count_comes_back_after_the_backoff_once_the_cpu_is_free():
    counts = run([0.8] + [0.0] * 15)
    assert counts[:10] == [1] * 10  # held for the 10 s back-off ...
    assert counts[10:] == [2] * 6  # ... then tried again, and kept while the CPU stays free


def test_a_cpu_that_stays_shared_doubles_the_backoff_up_to_its_cap():
    # At one thread the CPU looks free (the other process's thread and ours fit); at two it does not.
    state, tries = GovernorState(2, 10.0, 0.0), []
    for second in range(1, 200):
        waited = 0.5 if state.threads == 2 else 0.0
        new = decide(state, waited, 2, float(second), POLICY)
        if new.threads == 2 and state.threads == 1:
            tries.append(second)
        state = new
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps[:3] == [21, 41, 41]  # 20 s, then 40 s (the cap) of back-off, plus the window that found out


def test_many_cores_halve_step_by_step():
    assert run([0.9, 0.9, 0.9, 0.9], max_threads=16) == [8, 4, 2, 1]


def test_a_free_window_at_full_count_forgives_the_backoff():
    state = GovernorState(2, 40.0, 0.0)
    assert decide(state, 0.0, 2, 5.0, POLICY).backoff_s == POLICY.first_backoff_s


def test_cpu_wait_is_read_from_the_kernel_here():
    before = cpu_wait_seconds()
    assert before is not None and before >= 0  # Linux with schedstat, as on the machines labkit targets


def test_the_governor_sets_and_restores_torch_threads(monkeypatch):
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    waited = iter([0.0, 0.0, 5.0, 5.0])  # at start, then: a free window, a shared one
    monkeypatch.setattr(threads, "cpu_wait_seconds", lambda: next(waited))
    try:
        governor = ThreadGovernor(POLICY)
        assert governor.enabled and governor.threads == 2
        governor.after_step(0.6, 1.0)  # half a window: nothing decided yet
        governor.after_step(0.6, 1.6)  # a window with no wait
        assert torch.get_num_threads() == 2
        governor.after_step(1.2, 3.0)  # 5 s waited over 1.2 s of stepping
        assert governor.threads == 1 and torch.get_num_threads() == 1 and governor.changes == 1
        governor.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


def test_the_engine_thread_steps_with_the_engines_thread_count_not_its_creators(tiny_model_dirs):
    """A server's main thread keeps one torch thread (labkit serve); the thread that steps sets its own count."""
    import asyncio

    from engine_refs import load_fp32

    from labkit.engine import AsyncLLM, SamplingParams

    model, tokenizer = load_fp32(tiny_model_dirs["llama"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = AsyncLLM(model, tokenizer, kv_cache_tokens=256, page_size=16, cpu_threads=2, adapt_threads=False)
        seen = []
        engine.engine.after_step.append(lambda result: seen.append(torch.get_num_threads()))

        async def run():
            async for _ in engine.generate([5, 6, 7], SamplingParams(max_tokens=3)):
                pass

        asyncio.run(run())
        engine.stop()
        assert seen and set(seen) == {2}
        assert torch.get_num_threads() == 1  # the creating thread is left as it was
    finally:
        torch.set_num_threads(before)
