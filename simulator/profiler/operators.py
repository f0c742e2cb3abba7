"""Operator micro-profiler: time the operators of a model's engine step in isolation (torch).

    python -m simulator.profiler.operators --model llama-3.1-8b --out DIR [--tp 2] [--fp8] [--quick]
        [--w4a16] [--paged-attn]

One command runs the whole grid and writes ``DIR/operators.csv`` and ``DIR/meta.json``:

- ``gemm``: every linear layer of the model at its tensor-parallel shard (qkv, o, gate_up, down,
  one expert's gate_up/down for MoE models, lm_head) over token counts 1..8192, in the model's
  16-bit dtype and, with ``--fp8`` on GPUs that have FP8 tensor cores, as a row-scaled FP8 GEMM
  (``torch._scaled_mm``, the kernel family vLLM's FP8 W8A8 path uses on Hopper) or, with
  ``--fp8-kernel vllm`` where vLLM is installed, as vLLM's own path for ``--quantization fp8``:
  dynamic per-tensor activation quantisation (``scaled_fp8_quant``) then its CUTLASS scaled GEMM
  (``cutlass_scaled_mm``), timed together as the ``gemm`` row and the quantisation alone as an
  ``fp8_quant`` row;
- ``attn_prefill``: causal attention of one prompt of 128..8192 tokens (``scaled_dot_product_
  attention``, GQA heads as the model has them);
- ``attn_decode``: one query token per sequence over batch x context grids (contiguous KV, so
  an upper bound on what vLLM's paged kernels reach);
- with ``--w4a16`` (needs vLLM): every linear but lm_head (which stays 16-bit) as vLLM's Marlin
  AWQ W4A16 GEMM, fp16 activations (``gemm`` rows of dtype ``w4a16``, their bytes the 4-bit
  weights and group scales the simulator counts); with ``--paged-attn`` (needs vLLM): decode
  attention as vLLM runs it, FlashAttention over a paged cache, 16-bit and FP8 KV (``attn_decode``
  rows named ``paged``), both from :mod:`simulator.profiler.vllm_kernels`;
- ``copy``: a device-to-device copy of 1 GiB (256 MiB on the CPU): achieved memory bandwidth.

Every row carries the operator's FLOPs and bytes (the same counts the simulator's roofline uses)
and the achieved TFLOP/s and GB/s; where the GPU has a profile in ``profiles/hardware``, the
achieved share of its datasheet peak too, which is what ``profiles/calibration`` calls an
efficiency. Timing: CUDA events around ``--repeat`` back-to-back launches after warm-up, median
of ``--trials`` (``perf_counter`` on the CPU, which runs the same grid so CI exercises it).
Needs only torch; the datasheet columns need the simulator's pydantic models too.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from simulator.profiler.vllm_kernels import marlin_w4a16, paged_decode

TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
PREFILL = [128, 256, 512, 1024, 2048, 4096, 8192]
DECODE_BATCH = [1, 8, 32, 128, 256]
DECODE_CTX = [512, 2048, 8192]
QUICK = {"tokens": [1, 16, 128], "prefill": [64, 128], "batch": [1, 4], "ctx": [64, 256]}
COLUMNS = ["op", "name", "dtype", "m", "n", "k", "batch", "context", "flops", "bytes",
           "time_s", "tflops", "gbs", "peak_tflops", "peak_gbs", "compute_eff", "memory_eff"]


def linears(model, tp: int) -> list[tuple[str, int, int]]:
    """(name, out features, in features) of each GEMM of one layer plus lm_head, per TP rank."""
    h, hd = model.hidden, model.head_dim
    q, kv = model.num_heads * hd, max(model.num_kv_heads // tp, 1) * hd
    out = [("qkv_proj", q // tp + 2 * kv, h), ("o_proj", h, q // tp)]
    moe = next((g.moe for g in model.groups if g.moe), None)
    if any(g.moe is None for g in model.groups):
        out += [("gate_up_proj", 2 * model.intermediate // tp, h),
                ("down_proj", h, model.intermediate // tp)]
    if moe is not None:
        out += [("expert_gate_up", 2 * moe.expert_intermediate // tp, h),
                ("expert_down", h, moe.expert_intermediate // tp)]
    out.append(("lm_head", model.vocab // tp, h))
    return out


class Timer:
    """Median time of ``fn`` on the device it runs on."""

    def __init__(self, torch, device: str, repeat: int, trials: int):
        self.torch, self.cuda = torch, device.startswith("cuda")
        self.repeat, self.trials = repeat, trials

    def __call__(self, fn: Callable[[], object]) -> float:
        torch = self.torch
        for _ in range(2):
            fn()
        times = []
        for _ in range(self.trials):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(self.repeat):
                    fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) / 1e3 / self.repeat)
            else:
                t0 = time.perf_counter()
                for _ in range(self.repeat):
                    fn()
                times.append((time.perf_counter() - t0) / self.repeat)
        return statistics.median(times)


def vllm_fp8(torch):
    """vLLM's FP8 W8A8 linear for an unquantised checkpoint served with ``--quantization fp8``
    (weights per-tensor scaled at load, activations quantised per tensor at run time):
    ``(quantise, gemm)`` taking ``x`` and ``(x8, x scale, weight [k, n] column-major, its
    scale)``."""
    from vllm import _custom_ops as ops

    def quant(x):
        return ops.scaled_fp8_quant(x)

    def gemm(x8, sx, w8t, sw):
        return ops.cutlass_scaled_mm(x8, w8t, scale_a=sx, scale_b=sw, out_dtype=torch.bfloat16)

    return quant, gemm


def token_counts(value: str) -> list[int]:
    """``--tokens``: comma-separated token counts, each >= 1."""
    try:
        counts = [int(x) for x in value.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {value!r}")
    return counts


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


def run_grid(model, tp: int, device: str, fp8: bool, quick: bool, repeat: int, trials: int,
             progress: Callable[[str], None] = lambda s: None, fp8_ops: tuple | None = None,
             tokens: list[int] | None = None, w4a16: bool = False,
             paged: bool = False) -> list[dict]:
    """The grid's rows. ``fp8_ops``: :func:`vllm_fp8`'s pair, to time FP8 as vLLM runs it;
    None: as ``torch._scaled_mm``. ``w4a16`` / ``paged``: add vLLM's Marlin GEMMs / paged
    decode attention (:mod:`simulator.profiler.vllm_kernels`)."""
    import torch
    import torch.nn.functional as F

    timer = Timer(torch, device, repeat, trials)
    dt = torch.bfloat16
    ab = 2
    tokens = tokens or (QUICK["tokens"] if quick else TOKENS)
    fq, fg = fp8_ops if fp8 and fp8_ops else (None, None)
    rows: list[dict] = []

    def add(op, name, dtype, flops, nbytes, t, **shape):
        rows.append({"op": op, "name": name, "dtype": dtype, "flops": flops, "bytes": nbytes,
                     "time_s": t, **shape})

    for name, n, k in linears(model, tp):
        w = torch.randn(n, k, device=device, dtype=dt) / k ** 0.5
        w8 = scale_w = None
        if fp8:
            w8 = w.to(torch.float8_e4m3fn)
            scale_w = torch.ones(1, n, device=device, dtype=torch.float32)
        for m in tokens:
            progress(f"gemm {name} m={m}")
            x = torch.randn(m, k, device=device, dtype=dt)
            t = timer(lambda x=x, w=w: torch.matmul(x, w.t()))
            add("gemm", name, "bf16", 2 * m * n * k, (n * k + m * k + m * n) * ab, t, m=m, n=n, k=k)
            if fq is not None:
                w8t = w8.t()  # [k, n], column-major: the layout vLLM keeps FP8 weights in
                sw = torch.ones(1, device=device, dtype=torch.float32)
                t = timer(lambda x=x, w8t=w8t, sw=sw: fg(*fq(x), w8t, sw))
                add("gemm", name, "fp8", 2 * m * n * k, n * k + m * k + m * n * ab, t,
                    m=m, n=n, k=k)
                t = timer(lambda x=x: fq(x))
                # Per tensor: one pass for the absolute maximum, one to scale and cast.
                add("fp8_quant", name, "fp8", 0, 2 * m * k * ab + m * k, t, m=m, n=n, k=k)
            elif fp8:
                # torch._scaled_mm wants rows in multiples of 16: time the padded GEMM (vLLM's
                # CUTLASS kernel pads its tiles the same way), count the real FLOPs.
                mp = -(-m // 16) * 16
                x8 = torch.randn(mp, k, device=device, dtype=dt).to(torch.float8_e4m3fn)
                sx = torch.ones(mp, 1, device=device, dtype=torch.float32)
                t = timer(lambda x8=x8, sx=sx, w8=w8, sw=scale_w: torch._scaled_mm(
                    x8, w8.t(), scale_a=sx, scale_b=sw, out_dtype=dt))
                add("gemm", name, "fp8", 2 * m * n * k, n * k + m * k + m * n * ab, t,
                    m=m, n=n, k=k)
        del w
        if w4a16 and name != "lm_head":
            _marlin_rows(torch, add, timer, name, n, k, tokens, device)

    hq, hkv, hd = max(model.num_heads // tp, 1), max(model.num_kv_heads // tp, 1), model.head_dim

    def decode_counts(b: int, c: int, kv_bytes: int) -> tuple[int, int]:
        """FLOPs and bytes of one query token per sequence over ``c`` cached tokens: K and V
        at ``kv_bytes`` per element, the query and output at 16 bits."""
        return b * hq * 4 * hd * c, b * (2 * hkv * c * kv_bytes + 2 * hq * ab) * hd

    for s in QUICK["prefill"] if quick else PREFILL:
        progress(f"attn_prefill s={s}")
        q = torch.randn(1, hq, s, hd, device=device, dtype=dt)
        k, v = (torch.randn(1, hkv, s, hd, device=device, dtype=dt) for _ in range(2))
        t = timer(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                       enable_gqa=True))
        # Causal: s(s+1)/2 (query, key) pairs, 4*head_dim FLOPs each per head (QK^T and PV).
        add("attn_prefill", "causal", "bf16", hq * 4 * hd * s * (s + 1) // 2,
            (2 * hq + 2 * hkv) * s * hd * ab, t, batch=1, context=s)
    for b in QUICK["batch"] if quick else DECODE_BATCH:
        for c in QUICK["ctx"] if quick else DECODE_CTX:
            progress(f"attn_decode b={b} ctx={c}")
            q = torch.randn(b, hq, 1, hd, device=device, dtype=dt)
            # Separate K and V tensors: with one tensor for both, V's tiles hit in L2 right
            # after K's and the kernel appears to beat HBM bandwidth.
            k, v = (torch.randn(b, hkv, c, hd, device=device, dtype=dt) for _ in range(2))
            t = timer(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v,
                                                                           enable_gqa=True))
            add("attn_decode", "decode", "bf16", *decode_counts(b, c, ab), t, batch=b, context=c)
            del q, k, v
            if paged:
                for kv8 in (False, True):
                    progress(f"attn_decode paged b={b} ctx={c} kv={'fp8' if kv8 else 'bf16'}")
                    t = timer(paged_decode(torch, b, c, hq, hkv, hd, kv8, device))
                    add("attn_decode", "paged", "fp8" if kv8 else "bf16",
                        *decode_counts(b, c, 1 if kv8 else ab), t, batch=b, context=c)
                    torch.cuda.empty_cache()
    size = (256 if quick or not device.startswith("cuda") else 1024) << 20
    progress("copy")
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = timer(lambda: dst.copy_(src))
    add("copy", "device_to_device", "u8", 0, 2 * size, t)
    return rows


def _marlin_rows(torch, add, timer, name: str, n: int, k: int, tokens: list[int],
                 device: str) -> None:
    """Marlin W4A16 rows for one linear; bytes as the simulator counts 4-bit weights."""
    from simulator.cost.quantization import W4_BYTES

    gemm = marlin_w4a16(torch, n, k, device)
    for m in tokens:
        x = torch.randn(m, k, device=device, dtype=torch.float16)
        t = timer(lambda x=x: gemm(x))
        add("gemm", name, "w4a16", 2 * m * n * k, n * k * W4_BYTES + (m * k + m * n) * 2, t,
            m=m, n=n, k=k)


# The tensor-core rate a row's math runs at, where its dtype names a storage format.
MATH_DTYPE = {"w4a16": "fp16"}


def annotate(rows: list[dict], gpu_name: str | None) -> str | None:
    """Achieved rates, and shares of the datasheet peak where the GPU has a profile."""
    spec = None
    if gpu_name:
        try:
            from simulator.gpu import GPU_NAMES, get_gpu

            key = GPU_NAMES.get(gpu_name)
            spec = get_gpu(key) if key else None
        except ImportError:
            spec = None
    for r in rows:
        t = r["time_s"]
        r["tflops"] = r["flops"] / t / 1e12 if t else None
        r["gbs"] = r["bytes"] / t / 1e9 if t else None
        if spec is not None:
            math = MATH_DTYPE.get(r["dtype"], r["dtype"])
            r["peak_tflops"] = spec.peak_flops(math) / 1e12 if r["flops"] else None
            r["peak_gbs"] = spec.memory_bandwidth / 1e9
            r["compute_eff"] = r["tflops"] / r["peak_tflops"] if r["peak_tflops"] else None
            r["memory_eff"] = r["gbs"] / r["peak_gbs"]
    return spec.name if spec is not None else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="shipped model name or config.json path")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel shard to time")
    ap.add_argument("--fp8", action="store_true", help="also time FP8 GEMMs (Hopper/Ada)")
    ap.add_argument("--fp8-kernel", choices=("torch", "vllm"), default="torch",
                    help="FP8 GEMMs as torch._scaled_mm, or as vLLM's quantisation + CUTLASS "
                         "GEMM (needs vLLM)")
    ap.add_argument("--w4a16", action="store_true",
                    help="also time vLLM's Marlin W4A16 GEMMs (needs vLLM and a GPU)")
    ap.add_argument("--paged-attn", action="store_true",
                    help="also time vLLM's paged FlashAttention decode, 16-bit and FP8 KV "
                         "(needs vLLM and a GPU)")
    ap.add_argument("--tokens", type=token_counts, default=None,
                    help="comma-separated GEMM token counts (default 1..8192, powers of 2)")
    ap.add_argument("--quick", action="store_true", help="a small grid (CI, CPU)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--trials", type=int, default=5)
    a = ap.parse_args(argv)
    import torch

    from simulator.errors import InputError
    from simulator.model import load_model

    try:
        model = load_model(a.model)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    gpu_name = torch.cuda.get_device_name() if cuda else None
    if a.fp8 and not (cuda and torch.cuda.get_device_capability() >= (8, 9)):
        print("error: --fp8 needs a GPU with FP8 tensor cores (compute capability 8.9+)",
              file=sys.stderr)
        return 2
    vllm_rows = a.w4a16 or a.paged_attn
    if vllm_rows and not cuda:
        print("error: --w4a16 and --paged-attn time vLLM's CUDA kernels: they need a GPU",
              file=sys.stderr)
        return 2
    fp8_ops = vllm_version = None
    if vllm_rows:
        try:
            vllm_version = _vllm_version()
        except ImportError:
            print("error: --w4a16 and --paged-attn need vLLM installed", file=sys.stderr)
            return 2
    if a.fp8 and a.fp8_kernel == "vllm":
        try:
            fp8_ops, vllm_version = vllm_fp8(torch), _vllm_version()
        except ImportError:
            print("error: --fp8-kernel vllm needs vLLM installed", file=sys.stderr)
            return 2
    t0 = time.time()
    rows = run_grid(model, a.tp, device, a.fp8, a.quick, a.repeat, a.trials,
                    progress=lambda s: print(s, file=sys.stderr, flush=True),
                    fp8_ops=fp8_ops, tokens=a.tokens, w4a16=a.w4a16, paged=a.paged_attn)
    profile = annotate(rows, gpu_name)
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = a.out / "operators.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    tmp.replace(a.out / "operators.csv")
    meta = {"model": a.model, "tp": a.tp, "device": device, "gpu": gpu_name,
            "gpu_profile": profile, "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - t0, 1),
            "repeat": a.repeat, "trials": a.trials, "quick": a.quick,
            **({"fp8_kernel": a.fp8_kernel} if a.fp8 else {}),
            **({"vllm": vllm_version} if vllm_version else {}),
            "command": "python -m simulator.profiler.operators " + " ".join(
                sys.argv[1:] if argv is None else argv)}
    (a.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{len(rows)} operator timings in {meta['seconds']} s -> {a.out / 'operators.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
