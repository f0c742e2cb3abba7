"""Does launching a kernel for the first time wait for the GPU? A microbenchmark of CUDA's lazy
module loading, the suspect behind vLLM launches that end with their own batch.

    CUDA_MODULE_LOADING=LAZY python lazy_loading.py OUT.json

The GPU is first given a queue of large GEMMs (about ``queue_ms`` of work), then the host
launches one more kernel and times that call alone. A kernel already used returns in
microseconds; a kernel loaded lazily on this launch returns only when the queue has drained, if
loading waits for the GPU. Cases: a GEMM shape seen before (control), elementwise operators never
used before in the process, and a logits-shaped GEMM (rows x hidden 4096 times 4096 x 128,256,
bf16, Llama-3.1-8B's LM head) for every row count 1..512 in turn, which shows how often a new
row count makes cuBLAS pick a kernel not yet loaded.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch


def queue(x: torch.Tensor, n: int) -> None:
    for _ in range(n):
        x @ x


def timed_launch(fn, x: torch.Tensor, n: int) -> float:
    """Host seconds of one call to ``fn`` made with ``n`` GEMMs queued ahead of it."""
    torch.cuda.synchronize()
    queue(x, n)
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return dt


def main(out: str) -> int:
    dev = torch.device("cuda")
    x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    queue(x, 3)
    torch.cuda.synchronize()
    t = time.perf_counter()
    queue(x, 20)
    torch.cuda.synchronize()
    gemm_s = (time.perf_counter() - t) / 20
    n = max(int(0.2 / gemm_s), 1)  # about 200 ms of queued work
    small = torch.randn(4096, device=dev)
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cuda_module_loading": os.environ.get("CUDA_MODULE_LOADING"),
           "queue_gemm_ms": gemm_s * 1e3, "queued_gemms": n, "queue_ms": n * gemm_s * 1e3}
    res["control_same_gemm_ms"] = timed_launch(lambda: x @ x, x, n) * 1e3
    first = {}
    for name in ("special.bessel_j1", "special.erfcx", "special.i1e", "special.airy_ai"):
        op = getattr(torch.special, name.split(".")[1])
        first[name] = [timed_launch(lambda op=op: op(small), x, n) * 1e3 for _ in range(2)]
    res["new_elementwise_ms_first_second"] = first
    hidden = torch.randn(512, 4096, device=dev, dtype=torch.bfloat16)
    head = torch.randn(4096, 128256, device=dev, dtype=torch.bfloat16)
    rows, k = {}, max(n // 5, 1)  # a shorter queue (about 40 ms) for the 512 row counts
    res["rows_queue_ms"] = k * gemm_s * 1e3
    for m in range(1, 513):
        h = hidden[:m]
        rows[m] = timed_launch(lambda h=h: h @ head, x, k) * 1e3
    res["logits_gemm_ms_by_rows"] = rows
    slow = [m for m, ms in rows.items() if ms > 0.25 * res["rows_queue_ms"]]
    res["logits_rows_that_waited"] = slow
    print(json.dumps({k: v for k, v in res.items() if k != "logits_gemm_ms_by_rows"}, indent=1))
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
