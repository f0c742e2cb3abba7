"""Public trace formats read directly by ``simulate --trace``: Azure LLM inference CSVs and
Mooncake JSONL. Each converts to Requests with the same file:line:field errors as the native
format; arrivals become seconds from the trace's first request.

- ``azure-csv``: Azure LLM inference traces 2023/2024 (``TIMESTAMP,ContextTokens,GeneratedTokens``,
  timestamps ``YYYY-MM-DD HH:MM:SS.fffffff``).
- ``mooncake``: Mooncake FAST'25 JSONL (``timestamp`` in ms, ``input_length``,
  ``output_length``, ``hash_ids`` of 512-token prefix blocks).
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path

from simulator.errors import InputError
from simulator.request import Request
from simulator.trace import EXTENSIONS, FORMATS, _int_field, _open, hash_ids_field, json_objects

EXTENSIONS[".csv"] = "azure-csv"
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def _azure_time(text: str, path: str, line: int) -> float:
    # Seven fractional digits do not parse with %f: split them off.
    base, _, frac = text.strip().partition(".")
    try:
        t = datetime.strptime(base, "%Y-%m-%d %H:%M:%S").timestamp()
        return t + (float("0." + frac) if frac else 0.0)
    except ValueError:
        raise InputError(f"not a YYYY-MM-DD HH:MM:SS[.fffffff] timestamp: {text!r}",
                         file=path, line=line, field="TIMESTAMP") from None


@FORMATS.register("azure-csv")
def read_azure_csv(path: Path) -> list[Request]:
    p = str(path)
    out: list[Request] = []
    with _open(path) as lines:
        rows = csv.reader(lines)
        header = next(rows, None)
        if header is None:
            return out
        header = [h.strip() for h in header]
        missing = [c for c in AZURE_COLUMNS if c not in header]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)} (header: {header})",
                             file=p, line=1, field=missing[0])
        ti, ci, gi = (header.index(c) for c in AZURE_COLUMNS)
        t0 = last = None
        for line_no, row in enumerate(rows, 2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise InputError(f"expected {len(header)} columns, got {len(row)}",
                                 file=p, line=line_no)
            t = _azure_time(row[ti], p, line_no)
            t0 = t if t0 is None else t0
            if last is not None and t < last:
                raise InputError(f"timestamps must be sorted: {row[ti]} comes after a later one",
                                 file=p, line=line_no, field="TIMESTAMP")
            last = t
            fields = {"ContextTokens": _num(row[ci]), "GeneratedTokens": _num(row[gi])}
            inp = _int_field(fields, "ContextTokens", p, line_no)
            outp = _int_field(fields, "GeneratedTokens", p, line_no)
            out.append(Request(f"{path.stem}-{line_no - 1}", round(t - t0, 7), inp, outp, line_no))
    return out


def _num(text: str) -> int | str:
    s = text.strip()
    return int(s) if s.lstrip("-").isdigit() else s


@FORMATS.register("mooncake")
def read_mooncake(path: Path) -> list[Request]:
    p = str(path)
    out: list[Request] = []
    t0 = last = None
    for line_no, row in json_objects(path):
        ts = row.get("timestamp")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) \
                or ts < 0:
            raise InputError(f"must be milliseconds >= 0, got {ts!r}", file=p, line=line_no,
                             field="timestamp")
        if last is not None and ts < last:
            raise InputError(f"timestamps must be sorted: {ts} comes after {last}",
                             file=p, line=line_no, field="timestamp")
        t0 = ts if t0 is None else t0
        last = ts
        inp = _int_field(row, "input_length", p, line_no)
        outp = _int_field(row, "output_length", p, line_no)
        out.append(Request(f"{path.stem}-{line_no}", (ts - t0) / 1000, inp, outp, line_no,
                           None, hash_ids_field(row, p, line_no)))
    return out


def sniff_jsonl(path: Path) -> str:
    """'mooncake' when the first record has Mooncake's keys, else the native 'jsonl'."""
    try:
        with open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    first = json.loads(raw)
                    break
            else:
                return "jsonl"
    except (OSError, ValueError):
        return "jsonl"  # the reader reports the problem with its line number
    if isinstance(first, dict) and "timestamp" in first and "input_length" in first:
        return "mooncake"
    return "jsonl"
