"""The engine thread's costs measured from timeline runs (simulator.engine_thread), against
synthetic timelines whose costs are known exactly."""

from __future__ import annotations

import pytest

from simulator.engine_thread import RunShape, measure
from simulator.measured_steps import MeasuredStep

PREP, PER_SEQ, EAGER, PIECEWISE, LAYERS = 0.0025, 2e-5, 0.0007, 0.00025, 32


def _run(eager: float, piecewise: float, fp8: bool, n: int = 60) -> RunShape:
    """Decode steps (preparation only), then eager (1,000-token) and piecewise (300-token)
    prefill steps launched in ``eager`` / ``piecewise`` per layer; none in flight."""
    steps, t = [], 0.0
    for i in range(n):
        for tokens, per_layer in ((0, 0.0), (1000, eager), (300, piecewise)):
            seqs = 4 + i % 8
            launch = PREP + PER_SEQ * seqs + LAYERS * per_layer
            pre = [(tokens, 0)] if tokens else []
            steps.append(MeasuredStep(seqs - bool(pre), 1000.0, pre, 0.005, t, t + launch + 0.01,
                                      t - 1.0, t + 0.001, False, 0, t + launch, 0))
            t += 1.0
    return RunShape(steps, LAYERS, 0, 512, fp8)


def test_launches_per_layer_are_measured_apart_for_fp8_runs():
    bf16 = _run(EAGER, PIECEWISE, False)
    fp8 = _run(EAGER + 0.0001, PIECEWISE + 0.00005, True)
    got = measure([bf16, fp8])
    assert got["cpu_step_s"][0] == pytest.approx(PREP, abs=1e-7)
    assert got["cpu_seq_s"][0] == pytest.approx(PER_SEQ, rel=1e-3)
    assert got["eager_layer_s"][0] == pytest.approx(EAGER, rel=1e-4)
    assert got["piecewise_layer_s"][0] == pytest.approx(PIECEWISE, rel=1e-3)
    # FP8's extra over the 16-bit launch, per layer.
    assert got["eager_fp8_layer_s"][0] == pytest.approx(0.0001, rel=1e-2)
    assert got["piecewise_fp8_layer_s"][0] == pytest.approx(0.00005, rel=1e-2)
    # Without FP8 runs no extra is measured; with FP8 runs alone theirs is the base.
    assert "eager_fp8_layer_s" not in measure([bf16, _run(EAGER, PIECEWISE, False)])
    alone = measure([fp8, _run(EAGER + 0.0001, PIECEWISE + 0.00005, True)])
    assert alone["eager_layer_s"][0] == pytest.approx(EAGER + 0.0001, rel=1e-4)
    assert "eager_fp8_layer_s" not in alone


def test_a_launch_is_measured_by_its_mean_not_its_median():
    """Launches add up step after step: runs whose launches are three-quarters fast and a
    quarter slow are paced by their mean (the median would be the fast one)."""
    fast, slow = _run(0.0005, PIECEWISE, False, 60), _run(0.0011, PIECEWISE, False, 20)
    got = measure([fast, slow])
    # (2% trimmed at either end: one slow and one fast launch of the 80)
    assert got["eager_layer_s"][0] == pytest.approx((59 * 0.0005 + 19 * 0.0011) / 78, rel=1e-6)


def test_an_moe_layers_extra_launch_is_measured_over_the_dense_one():
    dense = _run(EAGER, PIECEWISE, False)
    moe = _run(EAGER + 0.0004, PIECEWISE, False)  # 32 MoE layers, each launching 0.4 ms more
    moe = RunShape(moe.steps, LAYERS, LAYERS, 512, False)
    got = measure([dense, moe])
    assert got["eager_layer_s"][0] == pytest.approx(EAGER, rel=1e-4)
    assert got["eager_moe_layer_s"][0] == pytest.approx(0.0004, rel=1e-3)
    assert "eager_moe_layer_s" not in measure([dense, _run(EAGER, PIECEWISE, False)])


def test_fp8s_extra_launch_is_measured_against_the_same_models_16_bit_runs():
    """Engines on different hosts launch 30-40% apart: FP8's extra comes from the 16-bit runs
    of its own model (profiled in the same session), not from every 16-bit run."""
    def shaped(run: RunShape, model: str) -> RunShape:
        return RunShape(run.steps, LAYERS, 0, 512, run.fp8, model)

    llama = shaped(_run(EAGER, PIECEWISE, False), "llama")
    llama_fp8 = shaped(_run(EAGER + 0.0001, PIECEWISE + 0.00005, True), "llama")
    slow_host = shaped(_run(EAGER + 0.0003, PIECEWISE + 0.0001, False), "qwen")
    got = measure([llama, llama_fp8, slow_host])
    assert got["eager_fp8_layer_s"][0] == pytest.approx(0.0001, rel=1e-2)
    assert got["piecewise_fp8_layer_s"][0] == pytest.approx(0.00005, rel=1e-2)
    # The 16-bit launch itself is every 16-bit run's (the hosts' mean).
    assert got["eager_layer_s"][0] == pytest.approx(EAGER + 0.00015, rel=1e-3)
    # Without the same model's 16-bit runs, the extra is over every 16-bit run (clipped at 0).
    alone = measure([shaped(llama_fp8, "other"), slow_host])
    assert alone["eager_fp8_layer_s"][0] == 0.0


OUT, OUT_SEQ, DRAIN, FIRST = 0.0003, 2e-5, 0.0004, 0.0003


def _harvested(n: int = 150) -> RunShape:
    """Decode steps launched before the GPU frees (each call then waits and harvests the batch
    in flight in ``OUT`` + ``OUT_SEQ`` x its sequences, ``FIRST`` more when that batch held
    prefill: every tenth); every third batch is drained by a call that launched nothing, which
    takes ``DRAIN`` more to harvest it."""
    steps, t = [], 0.0
    for i in range(n):
        seqs, prev = 1 + i % 8, 1 + (i - 1) % 8
        launched = t + PREP + PER_SEQ * seqs
        free = launched + 0.002
        first = i % 10 == 1
        st = MeasuredStep(seqs, 1000.0, [], 0.005, t,
                          free + OUT + OUT_SEQ * prev + FIRST * first, free, free,
                          True, prev, launched, prev, None, first)
        if i % 3 == 0:
            st.drained = free + 0.005 + OUT + OUT_SEQ * seqs + DRAIN
        steps.append(st)
        t += 1.0
    return RunShape(steps, LAYERS, 0, 512, False)


def test_drained_and_prefill_batches_late_harvests_are_measured_over_the_usual_one():
    got = measure([_harvested(500)])
    assert got["output_s"][0] == pytest.approx(OUT, rel=1e-3)
    assert got["output_seq_s"][0] == pytest.approx(OUT_SEQ, rel=1e-2)
    assert got["drain_s"][1] == 167 and got["drain_s"][0] == pytest.approx(DRAIN, abs=4e-6)
    assert got["prefill_harvest_s"][1] == 50
    assert got["prefill_harvest_s"][0] == pytest.approx(FIRST, abs=4e-6)
    # Fewer such calls than a measurement needs: none is made.
    few = measure([_harvested(90)], min_calls=31)
    assert "output_s" in few and "drain_s" not in few and "prefill_harvest_s" not in few


def test_a_call_that_launched_nothing_marks_the_batch_it_drained(tmp_path):
    import json

    from simulator.measured_steps import read_steps

    def rec(t, gpu, prefill=()):
        return {"n_decode": 0 if prefill else 1, "decode_ctx": 0 if prefill else 20,
                "prefill": [list(p) for p in prefill], "gpu_s": gpu, "start_s": t,
                "end_s": t + 0.004}
    rows = [rec(0.0, 0.003, [(16, 0)]), rec(0.004, 0.003), rec(0.008, None),  # drained
            rec(1.0, 0.003, [(16, 0)]), rec(1.004, 0.003), rec(1.008, 0.003)]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    steps = read_steps(tmp_path)
    assert [s.drained for s in steps] == [None, pytest.approx(0.012), None, None, None]
    assert [s.prev_prefill for s in steps] == [False, True, False, True, False]
