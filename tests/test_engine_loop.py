"""vLLM's engine loop on two timelines (simulator.engine_loop): hidden and exposed launches, the
previous step's tokens waiting for the next launch, batches formed at their call's start, and
the engine thread as the floor of a closed-form decode run. Each against a hand computation."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.config import SimulationConfig
from simulator.cost.roofline import StepCost
from simulator.deployment import resolve
from simulator.engine_loop import hidden_emit, place
from simulator.request import Request
from simulator.run import run_simulation
from tests.conftest import unit_cal_with

PREP, SEQ, EAGER, OUT, OUT_SEQ = 0.0002, 0.00001, 0.001, 0.0005, 0.00002


@pytest.fixture
def cal(tmp_path):
    return unit_cal_with(tmp_path / "loop.toml", cpu_step_s=PREP, cpu_seq_s=SEQ,
                         eager_layer_s=EAGER, output_s=OUT, output_seq_s=OUT_SEQ)


def test_place_hides_a_short_launch_and_exposes_a_long_one():
    graph = StepCost(0.005, 0, 0, cpu_s=0.001, launch_s=0.0)
    # The engine thread began this call at 2 ms while the GPU ran the previous batch to 10 ms:
    # the graph is ready at 3 ms, runs 10..15 ms; the previous tokens go out at 10.5 ms.
    p = place(0.010, 0.002, graph, 0.0005, in_flight=True)
    assert (p.end, p.launched, p.prev_emit, p.next_call) == pytest.approx(
        (0.015, 0.003, 0.0105, 0.0105))
    # An eager step launched for 30 ms: its kernels run as launched, so it ends with the launch
    # at 40 ms, and the previous batch's tokens (ready at 10 ms) wait for it too.
    eager = StepCost(0.005, 0, 0, cpu_s=0.001, launch_s=0.030)
    p = place(0.010, 0.009, eager, 0.0005, in_flight=True)
    assert (p.end, p.prev_emit) == pytest.approx((0.040, 0.0405))
    # After an idle spell nothing is in flight: the call returns once it has launched.
    p = place(0.0, 1.0, graph, 0.0005, in_flight=False)
    assert p.prev_emit is None and p.next_call == pytest.approx(1.0015)
    assert p.end == pytest.approx(1.006)
    # Synchronous scheduling: launch, then the GPU work, serially.
    p = place(0.010, 0.0105, graph, 0.0005, in_flight=False, async_sched=False)
    assert p.end == pytest.approx(0.0105 + 0.001 + 0.005)


def test_the_hidden_launch_shortcut_agrees_with_place():
    import random

    rng = random.Random(5)
    for _ in range(2000):
        cost = StepCost(rng.uniform(0, 0.02), 0, 0, cpu_s=rng.uniform(0, 0.005),
                        launch_s=rng.choice([0.0, rng.uniform(0, 0.04)]))
        free, call, out = rng.uniform(0, 0.05), rng.uniform(0, 0.05), rng.uniform(0, 0.002)
        wait = rng.choice([0.0, rng.uniform(0, 0.001)])
        emit = hidden_emit(free, call, cost, out, wait)
        p = place(free, call, cost, out, in_flight=True, wait_s=wait)
        if emit is None:
            assert p.launched > free
        else:
            assert (p.prev_emit, p.next_call, p.end) == pytest.approx((emit, emit, free + cost.time_s))


def _cfg(cal, **engine):
    return SimulationConfig(gpu="h100", model="llama-3.1-8b", calibration=cal, engine=engine)


def test_a_first_token_waits_for_the_next_batchs_launch(cal):
    """A arrives alone with a 1,000-token prompt (above the 512-token graph limit: an eager
    step, launch-bound). B arrives 1 ms later, while A is being launched: it is scheduled in
    the very next call, with A's first decode, and that eager launch holds A's first token."""
    cfg = _cfg(cal)
    rf = resolve(cfg).roofline
    launch = 32 * EAGER
    w_a = rf.step(0, 0, [(1000, 0)], 1).time_s
    e_a = max(PREP + SEQ + w_a, PREP + SEQ + launch)  # A's prefill ends with its launch
    assert e_a == pytest.approx(PREP + SEQ + launch)
    call2 = PREP + SEQ + launch + OUT  # the first call had nothing in flight: returns at once

    alone = run_simulation(cfg, [Request("a", 0.0, 1000, 5)]).requests[0]
    # Alone, the next call launches A's decode graph: its tokens go out once that is launched.
    launched2 = call2 + PREP + SEQ
    assert alone.ttft == pytest.approx(max(launched2, e_a) + OUT + OUT_SEQ, rel=1e-9)

    a, b = run_simulation(cfg, [Request("a", 0.0, 1000, 5), Request("b", 0.001, 1000, 5)]).requests
    launched2 = call2 + PREP + 2 * SEQ + launch  # B's prefill and A's decode: eager again
    assert a.ttft == pytest.approx(launched2 + OUT + OUT_SEQ, rel=1e-9)
    assert a.ttft - alone.ttft == pytest.approx(launch + SEQ, rel=1e-6)
    # B's own first token: batch 2 ends with its launch; call 3 (A and B decoding, a graph)
    # starts when A's token went out, and B's token goes out once call 3 has launched.
    call3 = launched2 + OUT + OUT_SEQ
    assert b.first_token_t == pytest.approx(call3 + PREP + 2 * SEQ + OUT + 2 * OUT_SEQ, rel=1e-9)


def test_decode_run_is_floored_by_the_engine_thread(cal, tmp_path):
    """When the engine thread's cycle (harvest, prepare, launch) outlasts a small batch's GPU
    work, it sets the pace; the closed form over a run equals the sum of single steps."""
    slow = tmp_path / "slow.toml"
    slow.write_text(Path(cal).read_text().replace(f"output_s = {OUT}", "output_s = 0.006"))
    rf = resolve(_cfg(str(slow))).roofline
    batch, ctx0 = 256, 256 * 500.0
    cycle = 0.006 + 256 * OUT_SEQ + PREP + 256 * SEQ
    assert rf.cpu_cycle(batch, batch, False) == pytest.approx(cycle)
    steps = [max(rf.step(batch, ctx0 + batch * i, [], batch).time_s, cycle) for i in range(600)]
    assert steps[0] == pytest.approx(cycle)  # CPU-bound at first ...
    assert steps[-1] > cycle * 1.02  # ... until attention over 150k more tokens outgrows it
    run = rf.decode_run(batch, ctx0)
    for m in (1, 37, 300, 600):
        assert run.duration(m) == pytest.approx(sum(steps[:m]), rel=1e-9)
        assert run.step_time(m - 1) == pytest.approx(steps[m - 1], rel=1e-9)
    # A lead (the engine thread still busy with the step before the run) delays step 0 only.
    run.lead = 0.02
    assert run.duration(37) == pytest.approx(sum(steps[:37]) + 0.02, rel=1e-9)
    assert run.steps_done_by(run.duration(37), 600) == 37


def test_without_async_scheduling_the_engine_thread_is_serial(cal):
    """Draft-model speculation turns async scheduling off (vLLM 0.25): every decode step pays
    harvest and preparation between the GPU's steps."""
    spec = {"method": "draft_model", "model": "llama-3.2-1b", "num_speculative_tokens": 2,
            "acceptance_rate": 0.5}
    rf = resolve(_cfg(cal, speculative_config=spec)).roofline
    assert not rf.async_sched
    run = rf.decode_run(4, 4 * 500.0, 4 * rf.spec.tokens_per_step(None))
    serial = OUT + 4 * OUT_SEQ + PREP + 4 * SEQ
    assert run.step_time(0) == pytest.approx(run.gpu_time(0) + serial, rel=1e-9)
    # The same as placing the step (engine_loop.place) after a harvested one.
    c = run.first_step()
    p = place(0.0, OUT + 4 * OUT_SEQ, c, 0.0, in_flight=False, async_sched=False)
    assert p.end == pytest.approx(run.step_time(0), rel=1e-9)


def test_a_drafts_launches_are_a_floor_under_the_step_not_gpu_work(cal, tmp_path):
    """vLLM 0.25 feeds a draft model the target's sampled tokens on the GPU, so the engine
    thread launches the draft's k passes layer by layer while the GPU still runs the target:
    ``draft_layer_pass_s`` per layer per pass is launch time (a floor the step cannot end
    before), not GPU time added to it. A launch-bound step then lasts as long at 4 sequences as
    at 32, as the H100's measured spec steps do (25.4 and 26.4 ms)."""
    spec = {"method": "draft_model", "model": "llama-3.2-1b", "num_speculative_tokens": 2,
            "acceptance_rate": 0.5}
    slow = unit_cal_with(tmp_path / "draft.toml", cpu_step_s=PREP, cpu_seq_s=SEQ,
                         eager_layer_s=EAGER, output_s=OUT, output_seq_s=OUT_SEQ,
                         draft_layer_pass_s=0.002)
    rf0 = resolve(_cfg(cal, speculative_config=spec)).roofline
    rf = resolve(_cfg(slow, speculative_config=spec)).roofline
    layers = rf.spec.draft.layers
    assert layers == 16
    for n in (4, 32):
        a, b = rf0.step(n, n * 500.0, [], n), rf.step(n, n * 500.0, [], n)
        assert b.time_s == pytest.approx(a.time_s, rel=1e-12)  # no GPU time added
        assert b.launch_s - a.launch_s == pytest.approx(2 * layers * 0.002, rel=1e-9)
    # A prefill-only step runs the draft once over its prompt.
    a, b = rf0.step(0, 0.0, [(300, 0)], 1), rf.step(0, 0.0, [(300, 0)], 1)
    assert b.launch_s - a.launch_s == pytest.approx(layers * 0.002, rel=1e-9)
    # Sync (a draft turns async scheduling off): serial harvest and first-kernel wait, then the
    # launches (64 ms) outlast the GPU's work, whatever the batch.
    steps = {}
    for n in (4, 32):
        run = rf.decode_run(n, n * 500.0, n * rf.spec.tokens_per_step(None))
        floor = PREP + n * SEQ - rf.first_kernel(n) + 2 * layers * 0.002
        assert run.gpu_time(0) < floor
        steps[n] = run.step_time(0)
        assert steps[n] == pytest.approx(OUT + n * OUT_SEQ + rf.first_kernel(n) + floor,
                                         rel=1e-9)
    assert steps[32] - steps[4] == pytest.approx(28 * (SEQ + OUT_SEQ), rel=1e-9)


def test_the_last_batch_before_an_idle_spell_is_harvested_late(cal, tmp_path):
    """The engine's last call launches nothing and waits for the batch in flight itself:
    harvesting it takes ``drain_s`` more (measured), which delays the tokens of that batch only.
    A two-token request served alone: its second token, not its first."""
    late = unit_cal_with(tmp_path / "late.toml", cpu_step_s=PREP, cpu_seq_s=SEQ,
                         eager_layer_s=EAGER, output_s=OUT, output_seq_s=OUT_SEQ, drain_s=0.004)
    a0 = run_simulation(_cfg(cal), [Request("a", 0.0, 200, 2)]).requests[0]
    a1 = run_simulation(_cfg(late), [Request("a", 0.0, 200, 2)]).requests[0]
    assert a1.first_token_t == pytest.approx(a0.first_token_t, rel=1e-12)
    assert a1.finish_t - a0.finish_t == pytest.approx(0.004, rel=1e-9)
    assert a1.tpot - a0.tpot == pytest.approx(0.004, rel=1e-9)
    # While another request keeps the engine busy, a finishing request's batch is harvested
    # by a call that launched the next one: no drain.
    two = [Request("a", 0.0, 200, 2), Request("b", 0.0, 200, 50)]
    b0, b1 = (run_simulation(_cfg(c), [Request(r.rid, r.arrival, r.input_tokens, r.output_tokens)
                                       for r in two]).requests for c in (cal, late))
    assert b1[0].finish_t == pytest.approx(b0[0].finish_t, rel=1e-12)
    assert b1[1].finish_t - b0[1].finish_t == pytest.approx(0.004, rel=1e-9)


def test_a_first_token_its_call_waited_for_is_harvested_late(cal, tmp_path):
    """A call that launched its batch and then waited for a batch holding prefill harvests it
    ``prefill_harvest_s`` later (measured): a 448-token prompt (a graph, still on the GPU when
    its first decode is launched) gets its first token that much later; a 1,000-token one
    (eager, launch-bound: done before the decode's launch) does not."""
    late = unit_cal_with(tmp_path / "late.toml", cpu_step_s=PREP, cpu_seq_s=SEQ,
                         eager_layer_s=EAGER, output_s=OUT, output_seq_s=OUT_SEQ,
                         prefill_harvest_s=0.003)
    for prompt, delay in ((448, 0.003), (1000, 0.0)):
        a0, a1 = (run_simulation(_cfg(c), [Request("a", 0.0, prompt, 20)]).requests[0]
                  for c in (cal, late))
        assert a1.first_token_t - a0.first_token_t == pytest.approx(delay, abs=1e-12)
    # place: the extra only where the call waited for the batch in flight.
    graph = StepCost(0.005, 0, 0, cpu_s=0.001, launch_s=0.0)
    assert place(0.010, 0.002, graph, 0.0005, in_flight=True, wait_s=0.003).prev_emit == (
        pytest.approx(0.0135))
    assert place(0.0, 0.002, graph, 0.0005, in_flight=True, wait_s=0.003).prev_emit == (
        pytest.approx(0.0035))
    assert hidden_emit(0.010, 0.002, graph, 0.0005, 0.003) == pytest.approx(0.0135)
