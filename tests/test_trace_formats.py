"""Public trace formats read directly: Azure LLM inference CSV and Mooncake JSONL."""

from __future__ import annotations

import pytest

from simulator.errors import InputError
from simulator.trace import load_trace

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.0000000,879,1
"""


def test_azure_csv(tmp_path):
    p = tmp_path / "conv.csv"
    p.write_text(AZURE)
    reqs = load_trace(p)
    assert [(r.input_tokens, r.output_tokens) for r in reqs] == [(374, 44), (396, 109), (879, 1)]
    assert reqs[0].arrival == 0.0
    assert reqs[1].arrival == pytest.approx(50.995169 - 46.68059, abs=1e-6)
    assert reqs[2].line == 4


@pytest.mark.parametrize("body,needle", [
    ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,374\n", "field 'GeneratedTokens': missing"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,374,44\n", "conv.csv:2: field 'TIMESTAMP'"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,-5,44\n",
     "conv.csv:2: field 'ContextTokens': must be an integer >= 1, got -5"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,5,x\n",
     "field 'GeneratedTokens'"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:47,5,5\n2023-11-16 18:15:46,5,5\n",
     "conv.csv:3: field 'TIMESTAMP': arrivals must be sorted"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:47,5\n", "conv.csv:2: expected 3"),
])
def test_azure_csv_errors(tmp_path, body, needle):
    p = tmp_path / "conv.csv"
    p.write_text(body)
    with pytest.raises(InputError) as e:
        load_trace(p)
    assert needle in e.value.one_line()


def test_mooncake_jsonl_is_detected_and_converted(tmp_path):
    p = tmp_path / "mc.jsonl"
    p.write_text('{"timestamp": 1000, "input_length": 6758, "output_length": 500, '
                 '"hash_ids": [0, 1]}\n{"timestamp": 3500, "input_length": 12, '
                 '"output_length": 3, "hash_ids": [0, 2]}\n')
    reqs = load_trace(p)
    assert [r.arrival for r in reqs] == [0.0, 2.5]
    assert reqs[0].hash_ids == [0, 1] and reqs[1].input_tokens == 12
    p.write_text('{"timestamp": 1000, "input_length": 6758, "output_length": 0}\n')
    with pytest.raises(InputError, match="mc.jsonl:1: field 'output_length'"):
        load_trace(p)


def test_explicit_format_overrides_extension(tmp_path):
    p = tmp_path / "trace.txt"
    p.write_text(AZURE)
    with pytest.raises(InputError, match="cannot tell the trace format"):
        load_trace(p)
    assert len(load_trace(p, "azure-csv")) == 3
    with pytest.raises(InputError, match="unknown trace format 'azure'"):
        load_trace(p, "azure")
