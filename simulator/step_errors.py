"""Where the step model is off: a measured run's per-step device-time errors, split by what the
step is and how many sequences it holds (``simulate validate --steps``).

A run's TTFT and TPOT errors are the sum of many step errors, and past saturation the queue
integrates them (:mod:`simulator.sensitivity`), so a request-level miss does not say which
steps are too fast or too slow. This table does: every measured step with a device time is
costed and placed as the fit places it (:class:`simulator.calibrate.Sample`: the simulator's own
roofline under the run's profile, anchored where the measurement puts the step), and its error
is simulated / measured - 1 of its device time. Steps are split by class
(:func:`simulator.measured_steps.step_class`: decode-only, prefill within the CUDA-graph limit,
eager, 2,048 tokens or more) and by sequences in the batch, and each cell gives the median and
the 10th and 90th percentiles. A cell whose median is off while its neighbours are not points at
one cost term (a GEMM shape, decode attention at long contexts, the power cap under load).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from simulator.calibrate import Sample  # the fit's placement (scipy is imported only to fit)
from simulator.cost.calibration import CalibrationProfile
from simulator.errors import InputError
from simulator.measured_steps import step_class

# Upper edges of the sequences-per-step bins; above the last, one open bin.
SEQ_BINS = (1, 8, 32, 64, 128, 256, 512)
COLUMNS = ("run", "step", "seqs", "steps", "median", "p10", "p90")
Cells = dict[tuple[str, str], list[float]]  # (step class, sequences bin) -> log errors


def seq_bin(n: int) -> str:
    """The bin label of a step holding ``n`` sequences: 1, 2-8, 9-32, ..., >512."""
    lo = 1
    for hi in SEQ_BINS:
        if n <= hi:
            return str(hi) if lo == hi else f"{lo}-{hi}"
        lo = hi + 1
    return f">{SEQ_BINS[-1]}"


def bin_order(label: str) -> int:
    """Sort key of a :func:`seq_bin` label: its lowest count (">512" sorts last)."""
    return int(label.lstrip(">").split("-")[0]) + (1 if label.startswith(">") else 0)


def summarise(run: str, cells: Cells) -> list[dict]:
    """One row per (step class, sequences bin): count, median, 10th and 90th percentile of the
    errors (fractions), in class then bin order."""
    rows = []
    for (cls, b), logs in sorted(cells.items(), key=lambda kv: (kv[0][0], bin_order(kv[0][1]))):
        ratios = sorted(math.exp(x) - 1 for x in logs)
        if len(ratios) > 1:
            deciles = statistics.quantiles(ratios, n=10)
            p10, p90 = deciles[0], deciles[-1]
        else:  # one step: quantiles needs two points
            p10 = p90 = ratios[0]
        rows.append({"run": run, "step": cls, "seqs": b, "steps": len(ratios),
                     "median": statistics.median(ratios), "p10": p10, "p90": p90})
    return rows


def step_cells(run_dir: Path, cal: CalibrationProfile) -> tuple[str, Cells] | None:
    """The run's name and its steps' log(simulated / measured) device times under ``cal``, by
    (step class, sequences bin); None for a run without device times (profiled without CUDA
    events, or against a server: requests only), where there is nothing to compare a step with."""
    if not (run_dir / "steps.jsonl").is_file():
        return None
    try:
        sample = Sample(run_dir, per_run=1 << 62)  # every step, none sampled out
    except InputError as e:
        if e.field == "gpu_s":
            return None
        raise
    dev = sample.errors(cal)[0]
    top = sample.dep.roofline.graph_max_tokens
    cells: Cells = {}
    for st, e in zip(sample.steps, dev, strict=True):
        cls = step_class(st.tokens - st.n_decode, st.tokens, top)
        cells.setdefault((cls, seq_bin(st.seqs)), []).append(e)
    return sample.name, cells


def pool(runs: list[Cells]) -> Cells:
    """Every run's steps together, cell by cell (the console's summary over the runs)."""
    out: Cells = {}
    for cells in runs:
        for k, v in cells.items():
            out.setdefault(k, []).extend(v)
    return out


def write_table(rows: list[dict], path: Path) -> None:
    """The per-run rows (signed fractions), one per run, step class and sequences bin."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # step classes hold commas ("prefill, eager")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r["run"], r["step"], r["seqs"], r["steps"],
                    *(f"{r[k]:+.4f}" for k in ("median", "p10", "p90"))])
    path.write_text(buf.getvalue())
