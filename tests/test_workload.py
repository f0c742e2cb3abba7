"""`simulate trace convert | synth | stats` and the public formats behind them: every request
arrives intact or the run stops with file:line:field; transformations and generators produce
the numbers they promise."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from simulator.errors import InputError
from simulator.trace import load_trace
from simulator.workload.stats import trace_stats
from simulator.workload.synth import RatePattern, Synth, parse_dist
from tests.conftest import poisson_rows, write_trace
from tests.test_cli import simulate

BURST = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
118,GPT-4,417,276,693,API log
"""


def test_burstgpt_is_sniffed_and_its_failed_rows_refused_or_counted(tmp_path):
    p = tmp_path / "BurstGPT_1.csv"
    p.write_text(BURST)
    with pytest.raises(InputError) as e:
        load_trace(p)
    assert e.value.one_line() == (f"{p}:3: field 'Response tokens': 0: a failed request "
                                  "(trace convert --drop-failed drops these)")
    out = tmp_path / "b.jsonl"
    r = simulate("trace", "convert", str(p), "-o", str(out), "--drop-failed")
    assert r.returncode == 0, r.stderr
    assert "read 3 requests, wrote 2 (dropped: 1 failed (0 response tokens))" in r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["arrival_s"], x["input_tokens"], x["output_tokens"]) for x in rows] == [
        (0.0, 472, 18), (113.0, 417, 276)]


def test_vllm_bench_serve_result_is_a_trace(tmp_path):
    p = tmp_path / "vllm-5qps.json"
    p.write_text(json.dumps({"date": "x", "num_prompts": 3, "start_times": [100.5, 100.7, 101.5],
                             "ttfts": [0.1] * 3, "itls": [[], [], []], "input_lens": [10, 20, 30],
                             "output_lens": [1, 2, 3], "errors": ["", "", ""]}))
    reqs = load_trace(p)
    assert [(round(r.arrival, 9), r.input_tokens, r.output_tokens) for r in reqs] == [
        (0.0, 10, 1), (0.2, 20, 2), (1.0, 30, 3)]
    doc = json.loads(p.read_text())
    doc["errors"][1] = "timeout"
    p.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="field 'errors': entry 1: the request failed"):
        load_trace(p)


def _span(t_ns: int, attrs: dict, sid: str) -> dict:
    return {"spanId": sid, "startTimeUnixNano": str(t_ns), "attributes": [
        {"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}}
        for k, v in attrs.items()]}


def test_otel_genai_spans_become_requests_in_time_order(tmp_path):
    spans = [_span(2_000_000_000, {"gen_ai.usage.input_tokens": 50,
                                   "gen_ai.usage.output_tokens": 5}, "b"),
             _span(1_500_000_000, {"http.method": "POST"}, "http"),  # not an LLM call
             _span(1_000_000_000, {"gen_ai.usage.prompt_tokens": 40,
                                   "gen_ai.usage.completion_tokens": 4,
                                   "gen_ai.conversation.id": "c1"}, "a")]
    line = {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}
    p = tmp_path / "spans.jsonl"
    p.write_text(json.dumps(line) + "\n")
    reqs = load_trace(p)
    assert [(r.rid, r.arrival, r.input_tokens, r.output_tokens, r.session_id) for r in reqs] == [
        ("a", 0.0, 40, 4, "c1"), ("b", 1.0, 50, 5, None)]
    spans[0]["attributes"].pop()
    p.write_text(json.dumps(line) + "\n")
    with pytest.raises(InputError, match=r"spans.jsonl:1: field 'gen_ai.usage.input_tokens'"):
        load_trace(p)


def test_convert_round_trips_and_transforms(tmp_path):
    src = write_trace(tmp_path / "t.jsonl", poisson_rows(2000, 10.0))
    orig = load_trace(src)
    out = tmp_path / "o.jsonl"
    assert simulate("trace", "convert", str(src), "-o", str(out)).returncode == 0
    again = load_trace(out)
    assert [(r.arrival, r.input_tokens, r.output_tokens, r.rid) for r in again] == [
        (r.arrival, r.input_tokens, r.output_tokens, r.rid) for r in orig]
    # Window [50, 100) shifted to 0, at twice the load.
    r = simulate("trace", "convert", str(src), "-o", str(out), "--start", "50", "--end", "100",
                 "--rate-scale", "2")
    assert r.returncode == 0, r.stderr
    inside = [q for q in orig if 50 <= q.arrival < 100]
    got = load_trace(out)
    assert len(got) == len(inside)
    for a, b in zip(got, inside, strict=True):
        assert a.arrival == pytest.approx((b.arrival - 50) / 2, abs=1e-6)
    # Length filters and sampling are counted, not silent.
    r = simulate("trace", "convert", str(src), "-o", str(out), "--max-input", "512",
                 "--sample", "0.5", "--seed", "3")
    n_short = sum(q.input_tokens <= 512 for q in orig)
    kept = len(load_trace(out))
    assert f"read 2,000 requests, wrote {kept:,}" in r.stderr
    assert "not sampled" in r.stderr and "input length outside the filter" in r.stderr
    assert abs(kept - n_short / 2) < 4 * math.sqrt(n_short / 4)


def test_a_bad_row_leaves_no_output(tmp_path):
    rows = poisson_rows(50, 10.0)
    rows[30]["output_tokens"] = -1
    src = write_trace(tmp_path / "t.jsonl", rows)
    out = tmp_path / "o.jsonl"
    r = simulate("trace", "convert", str(src), "-o", str(out))
    assert r.returncode == 1 and r.stderr.startswith(f"error: {src}:31: field 'output_tokens'")
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_unsorted_arrivals_refused_or_sorted_with_a_warning(tmp_path):
    rows = poisson_rows(20, 10.0)
    rows[5], rows[6] = rows[6], rows[5]
    src = write_trace(tmp_path / "t.jsonl", rows)
    out = tmp_path / "run"
    r = simulate("--trace", str(src), "--output-dir", str(out), "-q")
    assert r.returncode == 1 and f"{src}:7: field 'arrival_s': arrivals must be sorted" in r.stderr
    r = simulate("--trace", str(src), "--output-dir", str(out), "-q", "--sort")
    assert r.returncode == 0
    assert f"warning: {src}: 1 request(s) arrived out of order; sorted by arrival time" in r.stderr
    assert json.loads((out / "summary.json").read_text())["completed"] == 20


def test_stats_of_a_known_trace(tmp_path):
    rows = [{"arrival_s": t, "input_tokens": i, "output_tokens": o, "hash_ids": h}
            for t, i, o, h in ((0.0, 100, 10, [1, 2]), (1.0, 300, 30, [1, 3]),
                               (3.0, 200, 20, [1, 2, 4]), (4.0, 400, 40, [5]))]
    st = trace_stats(load_trace(write_trace(tmp_path / "k.jsonl", rows)), bins=4)
    assert st["requests"] == 4 and st["span_s"] == 4.0 and st["request_rate"] == 1.0
    gaps = [1.0, 2.0, 1.0]
    assert st["interarrival_cv"] == pytest.approx(statistics.pstdev(gaps) / statistics.mean(gaps))
    assert st["input_tokens"]["p50"] == 250 and st["output_tokens"]["max"] == 40
    assert st["total_tokens_per_s"] == pytest.approx(1100 / 4)
    assert st["prefix_block_reuse"] == pytest.approx(3 / 8)  # 1, 1, 2 seen again
    r = simulate("trace", "stats", str(tmp_path / "k.jsonl"), "--html", str(tmp_path / "s.html"))
    assert r.returncode == 0 and "37.5% of 8 hash blocks" in r.stdout
    assert (tmp_path / "s.html").read_text().count("Plotly.newPlot") == 2


def _arrivals(pattern: RatePattern, duration: float, cv: float = 1.0, seed: int = 0):
    s = Synth(pattern, parse_dist("fixed:100", "i"), parse_dist("fixed:10", "o"),
              duration=duration, cv=cv, seed=seed)
    return [r.arrival for r in s.generate()]


def test_poisson_and_gamma_arrivals_have_the_rate_and_burstiness_asked():
    t = _arrivals(RatePattern(20.0), 1000.0)
    assert abs(len(t) - 20_000) < 4 * math.sqrt(20_000)
    gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
    assert statistics.pstdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, abs=0.03)
    t = _arrivals(RatePattern(20.0), 1000.0, cv=3.0)
    gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
    assert len(t) == pytest.approx(20_000, rel=0.1)
    assert statistics.pstdev(gaps) / statistics.mean(gaps) == pytest.approx(3.0, rel=0.1)


def test_time_varying_rates_follow_their_pattern():
    t = _arrivals(RatePattern(10.0, "step", at=500.0, factor=3.0), 1000.0)
    before, after = sum(x < 500 for x in t), sum(x >= 500 for x in t)
    assert before == pytest.approx(5000, rel=0.05) and after / before == pytest.approx(3, rel=0.06)
    t = _arrivals(RatePattern(10.0, "spike", at=400.0, width=20.0, factor=10.0), 1000.0)
    assert sum(400 <= x < 420 for x in t) == pytest.approx(2000, rel=0.1)
    # Diurnal: 1 - a cos(2 pi t / P); mean over the middle half-period is 1 + 2a/pi.
    t = _arrivals(RatePattern(10.0, "diurnal", period=1000.0, amplitude=0.8), 1000.0)
    mid = sum(250 <= x < 750 for x in t) / 500
    assert mid == pytest.approx(10 * (1 + 2 * 0.8 / math.pi), rel=0.05)
    assert len(t) == pytest.approx(10_000, rel=0.05)


def test_length_distributions_and_resampling():
    rng = random.Random(0)
    ln = parse_dist("lognormal:median=800,sigma=1.0", "input")
    assert statistics.median(ln(rng) for _ in range(20_000)) == pytest.approx(800, rel=0.05)
    u = parse_dist("uniform:min=10,max=20", "input")
    assert {u(rng) for _ in range(2000)} == set(range(10, 21))
    with pytest.raises(InputError, match="lognormal takes median, sigma"):
        parse_dist("lognormal:mean=3", "input")
    pairs = [(5, 7), (100, 1)]
    s = Synth(RatePattern(50.0), ln, ln, requests=500, resample=pairs)
    assert {(r.input_tokens, r.output_tokens) for r in s.generate()} == set(pairs)


def test_system_prompts_and_sessions_share_prefixes():
    s = Synth(RatePattern(5.0), parse_dist("fixed:600", "i"), parse_dist("fixed:100", "o"),
              requests=300, system_prompts=2, system_prompt_tokens=1024, session_turns=3,
              think_time=5.0, hash_block=512, seed=1)
    reqs = list(s.generate())
    assert len(reqs) == 300
    assert all(a.arrival <= b.arrival for a, b in zip(reqs, reqs[1:], strict=False))
    firsts = [r for r in reqs if r.rid.endswith("-1")]
    assert all(r.input_tokens == 1624 and len(r.hash_ids) == 3 for r in firsts)
    assert len({tuple(r.hash_ids[:2]) for r in firsts}) == 2  # two shared system prompts
    by_id = {r.rid: r for r in reqs}
    for r in reqs:
        if r.rid.endswith("-2"):
            prev = by_id[r.rid[:-2] + "-1"]
            assert r.session_id == prev.session_id and r.arrival > prev.arrival
            assert r.input_tokens == prev.input_tokens + prev.output_tokens + 600
            assert r.hash_ids[:len(prev.hash_ids)] == prev.hash_ids


def test_synth_cli_writes_a_trace_the_simulator_reads(tmp_path):
    out = tmp_path / "s.jsonl"
    r = simulate("trace", "synth", "-o", str(out), "--rate", "3", "--duration", "60",
                 "--arrival", "gamma", "--cv", "2", "--input", "uniform:min=100,max=200",
                 "--output-len", "fixed:20", "--seed", "7")
    assert r.returncode == 0, r.stderr
    reqs = load_trace(out)
    assert all(100 <= q.input_tokens <= 200 and q.output_tokens == 20 for q in reqs)
    assert f"wrote {len(reqs):,} requests" in r.stderr
    r2 = simulate("trace", "synth", "-o", str(tmp_path / "t.jsonl"), "--rate", "3",
                  "--duration", "60", "--arrival", "gamma", "--cv", "2", "--input",
                  "uniform:min=100,max=200", "--output-len", "fixed:20", "--seed", "7")
    assert r2.returncode == 0 and (tmp_path / "t.jsonl").read_text() == out.read_text()
    bad = simulate("trace", "synth", "-o", str(tmp_path / "x.jsonl"), "--rate", "3",
                   "--duration", "6", "--input", "zipf:2")
    assert bad.returncode == 1 and "field 'input': unknown distribution 'zipf'" in bad.stderr
