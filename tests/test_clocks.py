"""simulator.profiler.clocks: a GPU clock log lined up with a measured run's steps."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from simulator.errors import InputError
from simulator.profiler.clocks import main, match, read_log, report

T0 = 1_790_000_000.0  # the replay clock's zero, Unix time


def _run(tmp_path, with_t0=True):
    """Decode steps at 0-1 s, a 4,096-token prefill at 1-2 s, a 300-token one at 2-2.5 s."""
    d = tmp_path / "run"
    d.mkdir()
    meta = {"cuda_graph_top": 512, **({"t0_unix": T0} if with_t0 else {})}
    (d / "meta.json").write_text(json.dumps(meta))
    steps = [{"n_decode": 8, "prefill": [], "gpu_start_s": i / 10, "gpu_end_s": (i + 1) / 10}
             for i in range(10)]
    steps += [{"n_decode": 8, "prefill": [[4096, 0]], "gpu_start_s": 1.0, "gpu_end_s": 2.0},
              {"n_decode": 8, "prefill": [[300, 0]], "gpu_start_s": 2.0, "gpu_end_s": 2.5}]
    (d / "steps.jsonl").write_text("\n".join(json.dumps(s) for s in steps) + "\n")
    return d


def _log(tmp_path, clock, mask=None):
    """An nvidia-smi csv log sampled every 100 ms over 0-3 s; SM clock ``clock(t)`` and, with
    ``mask``, the clock-event bit mask ``mask(t)`` as a sixth column."""
    lines = ["timestamp, clocks.current.sm [MHz], clocks.current.memory [MHz], "
             "power.draw [W], temperature.gpu" + (", clocks_event_reasons.active" if mask else "")]
    for i in range(30):
        t = i / 10 + 0.05
        stamp = datetime.fromtimestamp(T0 + t).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
        extra = f", 0x{mask(t):016X}" if mask else ""
        lines.append(f"{stamp}, {clock(t):.0f}, 3201, {300 + 100 * t:.1f}, 55{extra}")
    lines.append("[N/A], [N/A], [N/A], [N/A], [N/A]")
    p = tmp_path / "gpu.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_samples_are_matched_to_the_step_running_at_their_time(tmp_path, capsys):
    run = _run(tmp_path)
    log = _log(tmp_path, lambda t: 1980 if t < 1 else 1700 if t < 2 else 1850)
    samples = read_log(log)
    assert len(samples) == 30  # the header and the [N/A] line skip
    by = match(run, samples)
    assert {k: len(v) for k, v in by.items()} == {
        "decode": 10, "prefill >= 2048 tokens": 10, "prefill, graphs": 5}
    assert {x["sm_mhz"] for x in by["prefill >= 2048 tokens"]} == {1700}
    lines = report(by)
    row = next(x for x in lines if x.startswith("prefill >= 2048"))
    assert row.split()[-4:] == ["10", "1700", "450", "55"]  # samples, MHz, median W, C
    assert main([str(run), str(log)]) == 0
    assert "decode" in capsys.readouterr().out


def test_a_run_without_its_clock_zero_or_a_log_without_samples_is_refused(tmp_path):
    log = _log(tmp_path, lambda t: 1980)
    with pytest.raises(InputError, match="t0_unix"):
        match(_run(tmp_path, with_t0=False), read_log(log))
    bad = tmp_path / "bad.csv"
    bad.write_text("Field \"clocks.sm\" is not a valid field to query.\n")
    with pytest.raises(InputError, match="no samples"):
        read_log(bad)
    assert main([str(tmp_path / "run"), str(bad)]) == 2


def test_the_clock_event_mask_gives_the_share_of_power_capped_samples(tmp_path):
    # Power-capped (0x4) for the second half of the large prefill (1.5-2 s), idle (0x1) during
    # decode, a thermal slowdown (0x20) in the small prefill.
    log = _log(tmp_path, lambda t: 1980, lambda t: 0x4 if 1.5 < t < 2 else 0x20 if t > 2 else 0x1)
    by = match(_run(tmp_path), read_log(log))
    rows = {r.split()[0]: r.split() for r in report(by)[1:]}
    assert report(by)[0].split()[-4:] == ["capped", "%", "slowed", "%"]
    big = next(r for r in report(by) if r.startswith("prefill >= 2048")).split()
    small = next(r for r in report(by) if r.startswith("prefill, graphs")).split()
    assert big[-2:] == ["50", "0"] and small[-2:] == ["0", "100"]
    assert rows["decode"][-2:] == ["0", "0"]
