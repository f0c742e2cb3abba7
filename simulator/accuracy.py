"""A calibrated profile's measured error, as the summary states it next to the simulated numbers.

"Calibrated" alone reads as exact. What the project actually knows is how far the simulator
was from real vLLM on the runs it measured: ``simulate validate --write`` puts those signed
errors in ``validation.csv`` beside the runs. The measurements for a profile at
``calibration/<gpu>/vllm-<v>.toml`` sit in ``calibration/measurements/<gpu>/vllm-<v>/`` (the
shipped layout). A run's summary quotes the rows of that table measured like the simulated
deployment (same model, weight quantization, KV-cache dtype, speculation on or off and
parallelism), per metric as the least and greatest signed error. Where none was, it quotes every
row and says so. It also says how many of those runs the fit left out (they are not in the
profile's ``[provenance.fit_residuals]``) and how many meet the targets.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from simulator.cost.calibration import CalibrationProfile
from simulator.errors import InputError

# The accuracy the project holds itself to (issue 3): |simulated / measured - 1| within these.
TARGETS = {f"{m}.{p}": 0.10 if p == "p50" else 0.20 for m in ("ttft_s", "tpot_s")
           for p in ("p50", "p90", "p99")}


def misses(error: dict[str, float]) -> list[str]:
    """The metrics of one run's signed errors that miss :data:`TARGETS`."""
    return [k for k, tol in TARGETS.items() if abs(error[k]) > tol]


def read_table(path: Path) -> dict[str, dict[str, float]]:
    """``{run: {column: value}}``: the signed errors, and the elasticities and measured host
    speed where written (a run without a timeline has no host speed); also reads
    ``--repeatability``'s table. A cell that is not a number is an input error naming its line
    and column."""
    try:
        rows = path.read_text().splitlines()
    except OSError as e:
        raise InputError(f"cannot read the error table: {e.strerror}", file=str(path)) from None
    head = rows[0].split(",") if rows else []
    if len(head) < 2:
        raise InputError("not a table of `simulate validate` (no header of columns)",
                         file=str(path), line=1)
    out: dict[str, dict[str, float]] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        cells = row.split(",")
        if len(cells) != len(head):
            raise InputError(f"{len(cells)} cells, the header has {len(head)}", file=str(path),
                             line=n)
        vals = {}
        for k, v in zip(head[1:], cells[1:], strict=True):
            try:
                if v:
                    vals[k] = float(v)
            except ValueError:
                raise InputError(f"not a number: {v!r}", file=str(path), line=n,
                                 field=k) from None
        out[cells[0]] = vals
    return out


def table_for(cal: CalibrationProfile) -> Path | None:
    """The validation table of a calibrated profile's own measurements, where it exists."""
    if not cal.calibrated or not cal.path:
        return None
    p = Path(cal.path)
    table = p.parent.parent / "measurements" / p.parent.name / p.stem / "validation.csv"
    return table if table.is_file() else None


def table_runs(cal: CalibrationProfile) -> int | None:
    """How many measured runs the profile's error table holds (None without a table)."""
    table = table_for(cal)
    return None if table is None else len(_rows(str(table)))


def run_key(model: str, quantization: str | None, kv_cache_dtype: str, speculative: bool,
            tp: int, pp: int) -> tuple:
    """What makes two deployments "measured alike" here (configuration flags such as
    max-num-seqs are the simulator's to model, so they are not part of it)."""
    return (model, quantization or None, kv_cache_dtype.startswith("fp8"), bool(speculative),
            tp, pp)


def describe_key(key: tuple) -> str:
    model, quant, kv8, spec, tp, pp = key
    return " ".join([model, quant or "unquantized", *(["fp8 KV"] if kv8 else []),
                     *(["speculative"] if spec else []), *([f"TP{tp}"] if tp > 1 else []),
                     *([f"PP{pp}"] if pp > 1 else [])])


def _rows(table: str) -> list[tuple[str, tuple | None, dict[str, float]]]:
    """(run, key, errors) per row, each run's key read from its ``meta.json`` (cached while the
    file is unchanged: validate simulates many runs against one table; callers only read)."""
    st = Path(table).stat()
    return _read_rows(table, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=8)
def _read_rows(table: str, _mtime_ns: int, _size: int) -> list:
    root = Path(table).parent
    out = []
    for run, err in read_table(Path(table)).items():
        try:
            meta = json.loads((root / run / "meta.json").read_text())
            ea = meta.get("engine_args") or {}
            key = run_key(meta["model"], ea.get("quantization"),
                          ea.get("kv_cache_dtype") or "auto", bool(meta.get("speculative_config")),
                          ea.get("tensor_parallel_size") or 1, ea.get("pipeline_parallel_size") or 1)
        except (OSError, ValueError, KeyError, AttributeError):
            key = None  # its run is not beside the table: it counts among all runs, alike none
        out.append((run, key, err))
    return out


def measured_error(cal: CalibrationProfile, key: tuple) -> dict | None:
    """The profile's measured errors on runs measured like ``key`` (all its runs where none
    was); None for a profile without a validation table (uncalibrated, transferred, or one
    fitted elsewhere)."""
    table = table_for(cal)
    if table is None:
        return None
    rows = [(run, k, err) for run, k, err in _rows(str(table)) if all(q in err for q in TARGETS)]
    alike = [(run, err) for run, k, err in rows if k == key]
    chosen = alike or [(run, err) for run, _, err in rows]
    if not chosen:
        return None
    prov = (cal.model_extra or {}).get("provenance") or {}
    fitted = set(prov.get("fit_residuals") or {})
    return {
        "table": str(table),
        "vllm": prov.get("vllm"),
        "runs_like": describe_key(key),
        "alike": bool(alike),  # else the quoted runs are all the table's
        "runs": len(chosen),
        "held_out": sum(run not in fitted for run, _ in chosen),
        "within_targets": sum(not misses(err) for _, err in chosen),
        "range": {m: [min(e[m] for _, e in chosen), max(e[m] for _, e in chosen)]
                  for m in TARGETS},
    }


def _span(lo: float, hi: float) -> str:
    return f"{lo:+.0%}..{hi:+.0%}"


def error_line(me: dict) -> str:
    """The summary's one-line statement of ``measured_error``."""
    def span(m: str) -> str:
        return _span(*me["range"][m])

    vllm = f"real vLLM {me['vllm']}" if me.get("vllm") else "real vLLM"
    what = (f"{me['runs']} {vllm} runs of {me['runs_like']}" if me["alike"]
            else f"all {me['runs']} {vllm} runs on this GPU, none of them {me['runs_like']}")
    return (f"TTFT p50 {span('ttft_s.p50')}, p99 {span('ttft_s.p99')}; TPOT p50 "
            f"{span('tpot_s.p50')}, p99 {span('tpot_s.p99')} (simulated / measured - 1) over "
            f"{what}; {me['held_out']} held out of the fit, {me['within_targets']} within the "
            "targets")


# sweep's results.csv and plan.csv: the ranges of the percentiles their SLO tests use.
ROW_METRICS = ("ttft_s.p50", "ttft_s.p90", "tpot_s.p50", "tpot_s.p90")
ROW_COLUMNS = ("measured_runs", "measured_alike",
               *(f"error_{end}.{m}" for m in ROW_METRICS for end in ("lo", "hi")))


def row_cells(me: dict | None) -> dict:
    """``measured_error`` flattened into :data:`ROW_COLUMNS` (all None without one)."""
    if me is None:
        return dict.fromkeys(ROW_COLUMNS)
    out = {"measured_runs": me["runs"], "measured_alike": me["alike"]}
    for m in ROW_METRICS:
        out[f"error_lo.{m}"], out[f"error_hi.{m}"] = me["range"][m]
    return out


def p90_cell(row: dict) -> str:
    """A table cell: the p90 TTFT and TPOT error ranges of a sweep or plan row, the number of
    runs (``all N``: none measured like it), or the stated band of a profile without an error
    table (uncalibrated, or calibrated elsewhere)."""
    n = row.get("measured_runs")
    if n in (None, ""):
        band = row.get("error_band")
        what = "stated" if row.get("calibrated") in (True, "True") else "uncalibrated"
        return "-" if band in (None, "") else f"+-{float(band):.0%} ({what})"

    def span(m: str) -> str:
        return _span(float(row[f"error_lo.{m}"]), float(row[f"error_hi.{m}"]))

    alike = row.get("measured_alike") in (True, "True")
    return (f"{span('ttft_s.p90')} / {span('tpot_s.p90')} "
            f"({'' if alike else 'all '}{int(n)} runs)")
