"""Public trace formats, read directly by ``simulate --trace`` (by extension and content, or
``--trace-format``) and by ``simulate trace convert``. Each streams Requests with the same
file:line:field errors as the native format; arrivals become seconds from the trace's first
request.

- ``azure-csv``: Azure LLM inference traces 2023/2024 (``TIMESTAMP,ContextTokens,GeneratedTokens``,
  timestamps ``YYYY-MM-DD HH:MM:SS.fffffff``).
- ``burstgpt``: BurstGPT CSV (``Timestamp`` in seconds, ``Model``, ``Request tokens``,
  ``Response tokens``, ``Total tokens``, ``Log Type``). Failed requests have 0 response tokens;
  they are refused like any zero-token row (``trace convert --drop-failed`` drops and counts them).
- ``mooncake``: Mooncake FAST'25 JSONL (``timestamp`` in ms, ``input_length``,
  ``output_length``, ``hash_ids`` of 512-token prefix blocks).
- ``vllm-bench``: a ``vllm bench serve --save-result --save-detailed`` JSON (``start_times``,
  ``input_lens``, ``output_lens``); a failed request is refused (its output length is unknown).
- ``otel``: OpenTelemetry spans as the collector's file exporter writes them (OTLP JSON, one
  export per line). A span is a request when it carries GenAI usage attributes
  (``gen_ai.usage.input_tokens``/``output_tokens``, or the older ``prompt_tokens``/
  ``completion_tokens`` and OpenLLMetry's ``llm.usage.*``); other spans (HTTP, tools) are not
  requests. Spans are sorted by start time (an export is not ordered), so this one format is
  read whole.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from simulator.errors import InputError
from simulator.request import Request
from simulator.trace import (
    FORMATS,
    SNIFFERS,
    TIME_FIELDS,
    _int_field,
    _open,
    hash_ids_field,
    json_objects,
)

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
TIME_FIELDS.update({"azure-csv": "TIMESTAMP", "burstgpt": "Timestamp", "mooncake": "timestamp",
                    "vllm-bench": "start_times", "otel": "startTimeUnixNano"})


def _azure_time(text: str, path: str, line: int) -> float:
    # Seven fractional digits do not parse with %f: split them off.
    base, _, frac = text.strip().partition(".")
    try:
        t = datetime.strptime(base, "%Y-%m-%d %H:%M:%S").timestamp()
        return t + (float("0." + frac) if frac else 0.0)
    except ValueError:
        raise InputError(f"not a YYYY-MM-DD HH:MM:SS[.fffffff] timestamp: {text!r}",
                         file=path, line=line, field="TIMESTAMP") from None


def _csv_rows(path: Path, need: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, {column: text}) per non-blank data row, after checking the header."""
    p = str(path)
    with _open(path) as lines:
        rows = csv.reader(lines)
        header = next(rows, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        missing = [c for c in need if c not in header]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)} (header: {header})",
                             file=p, line=1, field=missing[0])
        for line_no, row in enumerate(rows, 2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise InputError(f"expected {len(header)} columns, got {len(row)}",
                                 file=p, line=line_no)
            yield line_no, dict(zip(header, row, strict=True))


def _num(text: str) -> int | str:
    s = text.strip()
    return int(s) if s.lstrip("-").isdigit() else s


@FORMATS.register("azure-csv")
def read_azure_csv(path: Path) -> Iterator[Request]:
    p = str(path)
    t0 = None
    for line_no, row in _csv_rows(path, AZURE_COLUMNS):
        t = _azure_time(row["TIMESTAMP"], p, line_no)
        t0 = t if t0 is None else t0
        fields = {k: _num(row[k]) for k in AZURE_COLUMNS[1:]}
        inp = _int_field(fields, "ContextTokens", p, line_no)
        outp = _int_field(fields, "GeneratedTokens", p, line_no)
        yield Request(f"{path.stem}-{line_no - 1}", round(t - t0, 7), inp, outp, line_no)


@FORMATS.register("burstgpt")
def read_burstgpt(path: Path, drop_failed: Callable[[str], None] | None = None
                  ) -> Iterator[Request]:
    """``drop_failed``, when given, is told of each failed row (0 response tokens) instead of
    the row being refused."""
    p = str(path)
    t0 = None
    for line_no, row in _csv_rows(path, BURSTGPT_COLUMNS):
        try:
            t = float(row["Timestamp"])
        except ValueError:
            t = math.nan
        if not math.isfinite(t) or t < 0:
            raise InputError(f"must be seconds >= 0, got {row['Timestamp']!r}", file=p,
                             line=line_no, field="Timestamp")
        t0 = t if t0 is None else t0
        fields = {k: _num(row[k]) for k in BURSTGPT_COLUMNS[1:]}
        inp = _int_field(fields, "Request tokens", p, line_no)
        if fields["Response tokens"] == 0:
            if drop_failed is not None:
                drop_failed("failed (0 response tokens)")
                continue
            raise InputError("0: a failed request (trace convert --drop-failed drops these)",
                             file=p, line=line_no, field="Response tokens")
        outp = _int_field(fields, "Response tokens", p, line_no)
        yield Request(f"{path.stem}-{line_no - 1}", round(t - t0, 6), inp, outp, line_no)


@FORMATS.register("mooncake")
def read_mooncake(path: Path) -> Iterator[Request]:
    p = str(path)
    t0 = None
    for line_no, row in json_objects(path):
        ts = row.get("timestamp")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) \
                or ts < 0:
            raise InputError(f"must be milliseconds >= 0, got {ts!r}", file=p, line=line_no,
                             field="timestamp")
        t0 = ts if t0 is None else t0
        inp = _int_field(row, "input_length", p, line_no)
        outp = _int_field(row, "output_length", p, line_no)
        yield Request(f"{path.stem}-{line_no}", (ts - t0) / 1000, inp, outp, line_no, None,
                      hash_ids_field(row, p, line_no))


@FORMATS.register("vllm-bench")
def read_vllm_bench(path: Path) -> Iterator[Request]:
    from simulator.report.data import read_bench_json

    p = str(path)
    doc = read_bench_json(path)
    starts = doc["start_times"]
    errors = doc.get("errors") or [""] * len(starts)
    t0 = None
    for i, st in enumerate(starts):
        if isinstance(st, bool) or not isinstance(st, int | float) or not math.isfinite(st):
            raise InputError(f"entry {i} is not a finite number: {st!r}", file=p,
                             field="start_times")
        if errors[i]:
            raise InputError(f"entry {i}: the request failed in the benchmark ({errors[i]!r}); "
                             "its output length is unknown", file=p, field="errors")
        t0 = st if t0 is None else t0
        row = {"input_lens": doc["input_lens"][i], "output_lens": doc["output_lens"][i]}
        inp = _int_field(row, "input_lens", p, i + 1)
        outp = _int_field(row, "output_lens", p, i + 1)
        yield Request(f"{path.stem}-{i}", st - t0, inp, outp, i + 1)


IN_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens")
OUT_KEYS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
            "llm.usage.completion_tokens")
SESSION_KEYS = ("gen_ai.conversation.id", "session.id")


def _otel_value(v: dict):
    for k in ("intValue", "doubleValue", "stringValue"):
        if k in v:
            x = v[k]
            if k == "intValue":
                return int(x) if str(x).lstrip("-").isdigit() else x
            return x
    return None


@FORMATS.register("otel")
def read_otel(path: Path) -> Iterator[Request]:
    p = str(path)
    spans: list[tuple[int, str, int, int, int, str | None]] = []
    for line_no, doc in json_objects(path):
        for rs in doc.get("resourceSpans") or []:
            for ss in rs.get("scopeSpans") or []:
                for sp in ss.get("spans") or []:
                    attrs = {a.get("key"): _otel_value(a.get("value") or {})
                             for a in sp.get("attributes") or []}
                    ik = next((k for k in IN_KEYS if k in attrs), None)
                    ok = next((k for k in OUT_KEYS if k in attrs), None)
                    if ik is None and ok is None:
                        continue  # not an LLM call
                    if ik is None or ok is None:
                        raise InputError("span has one GenAI usage attribute but not the other",
                                         file=p, line=line_no, field=ik or OUT_KEYS[0])
                    inp = _int_field(attrs, ik, p, line_no)
                    outp = _int_field(attrs, ok, p, line_no)
                    start = sp.get("startTimeUnixNano")
                    try:
                        t_ns = int(start)
                    except (TypeError, ValueError):
                        raise InputError(f"must be integer nanoseconds, got {start!r}", file=p,
                                         line=line_no, field="startTimeUnixNano") from None
                    sess = next((attrs[k] for k in SESSION_KEYS if k in attrs), None)
                    spans.append((t_ns, str(sp.get("spanId", len(spans))), inp, outp, line_no,
                                  None if sess is None else str(sess)))
    spans.sort(key=lambda s: s[0])
    t0 = spans[0][0] if spans else 0
    for t_ns, sid, inp, outp, line_no, sess in spans:
        yield Request(sid, (t_ns - t0) / 1e9, inp, outp, line_no, sess)


def _head(path: Path, n: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("utf-8", errors="replace")
    except OSError:
        return ""


def sniff_json(path: Path) -> str:
    """Which JSON(L) format a file holds, from its first bytes (the reader reports problems)."""
    head = _head(path)
    first = next((ln for ln in head.splitlines() if ln.strip()), "")
    if '"resourceSpans"' in first:
        return "otel"
    if any(k in head for k in ('"start_times"', '"ttfts"', '"num_prompts"')):
        return "vllm-bench"
    try:
        row = json.loads(first)
    except ValueError:
        return "jsonl"
    if isinstance(row, dict) and "timestamp" in row and "input_length" in row:
        return "mooncake"
    return "jsonl"


def sniff_csv(path: Path) -> str:
    header = next(iter(_head(path, 4096).splitlines()), "")
    cols = {c.strip() for c in header.split(",")}
    return "burstgpt" if "Request tokens" in cols else "azure-csv"


SNIFFERS.update({".jsonl": sniff_json, ".json": sniff_json, ".csv": sniff_csv})
