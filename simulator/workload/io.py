"""Write requests as native JSONL, streaming and all-or-nothing: a temporary file beside the
target, renamed into place only when every request was written."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from simulator.errors import InputError
from simulator.request import Request


def request_line(r: Request) -> str:
    row: dict = {"arrival_s": round(r.arrival, 6), "input_tokens": r.input_tokens,
                 "output_tokens": r.output_tokens, "request_id": r.rid}
    if r.session_id is not None:
        row["session_id"] = r.session_id
    if r.hash_ids is not None:
        row["hash_ids"] = r.hash_ids
    return json.dumps(row, separators=(", ", ": ")) + "\n"


def write_jsonl(requests: Iterable[Request], path: Path) -> int:
    """Write every request; return how many. On any error nothing is left at ``path``."""
    if path.is_dir():
        raise InputError("is a directory; give an output file", file=str(path), field="output")
    tmp = path.with_name(f".{path.name}.partial")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            buf = []
            for r in requests:
                buf.append(request_line(r))
                n += 1
                if len(buf) >= 10_000:
                    f.writelines(buf)
                    buf.clear()
            f.writelines(buf)
        if n == 0:
            raise InputError("no request left to write", file=str(path))
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"cannot write: {e.strerror}", file=str(path), field="output") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return n
