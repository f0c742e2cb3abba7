"""What a replay runs before it is timed, so the engine it measures is a warm one.

A fresh vLLM engine does two kinds of one-off work at the first step of a new shape, and a
server that has served a while has done both: Triton compiles a kernel per token-count bucket and
integer specialisation (``warmup_sizes``), and CUDA loads each kernel at its first launch
(``CUDA_MODULE_LOADING=LAZY``, the default), waiting for the GPU to drain to do so: measured by
``profiles/calibration/diagnostics/lazy_loading.py``, a first launch returned only after the 0.2 s
of queued work, and a logits GEMM picked a new kernel at 48 of the row counts 1..512. Eager
steps' GEMMs take the step's token count as rows (``warmup_stride``); the logits GEMM and the
sampler take the batch's sequence count (``ramp_rows``).
"""

from __future__ import annotations


def plan(mode: str, max_batched: int, max_len: int, max_seqs: int, kv_tokens: int,
         cuda_graph_top: int = 512) -> tuple[list[int], list[dict]]:
    """The warm-up of ``vllm_replay --warmup MODE``: prompt lengths, each replayed as its own
    step before every trace, and the ramp's requests, replayed once per engine.
    ``cuda_graph_top`` is the engine's largest CUDA-graph capture size (0 when eager)."""
    if mode == "one":
        return [64], []
    sizes = warmup_sizes(max_batched, max_len)
    if mode == "grid":
        return sizes, []
    return (sorted(set(sizes + warmup_stride(max_batched, max_len, cuda_graph_top))),
            ramp_rows(max_seqs, kv_tokens))


def _top(max_batched: int, max_len: int) -> int:
    """The longest prompt that is one step: within the batch budget and the model's length."""
    return min(max_batched, max_len - 8)


def warmup_sizes(max_batched: int, max_len: int) -> list[int]:
    """Prompt lengths that make one engine step of every size class before the timed replay.

    Steps above the CUDA-graph capture size run eagerly, and the first step of a new size class
    compiles kernels on the spot: Triton picks a tile configuration per token-count bucket (vLLM's
    fused MoE kernel) and specialises integer arguments on divisibility by 16. Measured on
    Qwen3-30B-A3B before this warm-up existed, those compilations stalled single steps for
    0.4-1.9 s (a one-off of a fresh server, not of serving), which then dominated the TTFT tails.
    Powers of two from 16 and their odd neighbours cover every bucket and both specialisations.
    """
    top = _top(max_batched, max_len)
    out, n = [], 16
    while n <= top:
        out += [n, n + 1] if n + 1 <= top else [n]
        n *= 2
    return out


def warmup_stride(max_batched: int, max_len: int, cuda_graph_top: int = 512,
                  stride: int = 256) -> list[int]:
    """Prompt lengths every ``stride`` tokens above the CUDA-graph capture size: eager steps'
    GEMMs take the step's token count as rows, and cuBLAS picks its kernel by row count, so a
    size between two powers of two can pick a kernel no grid step loaded. The capture size is
    the engine's (vLLM's default is min(2 x max_num_seqs, 512); 0 under enforce_eager)."""
    top = _top(max_batched, max_len)
    return list(range(cuda_graph_top + stride, top + 1, stride))


def ramp_rows(max_seqs: int, kv_tokens: int, prompt: int = 16) -> list[dict]:
    """Requests that make a decode batch of every size from the largest down to one: all arrive
    at once and request ``k`` wants ``k`` tokens, so one finishes per step. The logits GEMM and
    the sampler take the batch's sequence count as rows, and a new count can pick a kernel not yet
    loaded (see the module docstring). As many sequences as fill four fifths of the KV cache."""
    n, used = 0, 0
    while n < max_seqs and used + prompt + n + 1 <= 0.8 * kv_tokens:
        n += 1
        used += prompt + n
    return [{"arrival_s": 0.0, "input_tokens": prompt, "output_tokens": k}
            for k in range(n, 0, -1)]
