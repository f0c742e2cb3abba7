#!/usr/bin/env bash
# The exact commands behind every measured run in this folder, in groups that each fit in one
# 10-minute device call. On the lent GPU, after installing the offline vLLM 0.25.1 bundle:
#   export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0
#   bash profiles/calibration/measurements/profile_gpu.sh /tmp/m GROUP...; tar czf $OUT/m.tgz -C /tmp/m .
# (pack the runs into one archive: the device call returns only shallow folders of $OUT, and a
# run written straight under it, three folders deep, was lost that way on 2026-12-04)
# Groups: llama-bf16 llama-fp8 llama-small moe big big-bf16 (bf16 32B: H200 only, 64 GB of weights)
#         mid (Qwen2.5-14B bf16: a second dense 16-bit model, light to past saturation, and its sweep;
#         re-run 2026-12-03 with vllm_replay's --warmup full, the default since, which loads the
#         kernels a replay's shapes pick before it starts; timeline, fp8-one-engine, big-bf16
#         and timeline-moe re-ran with it on 2026-12-03 too, timeline-small later that day;
#         timeline and big-bf16 then ran again on a second H200 host, committed as
#         llama8b-bf16-repeat and qwen2.5-32b-bf16-repeat, see the measurements README)
#         (on the H100, timeline, timeline-small, fp8-one-engine and timeline-moe ran on 2026-12-07,
#         a second H100 host, and replace its earlier runs of those four configurations; awq,
#         kv-fp8, prefix, prefix-off and spec-l3 ran later that day on a third, replacing theirs,
#         and spec-l1's az-r2 on a fourth, committed as llama8b-bf16-spec-d1b-k4-l1-host4)
#         configs-a configs-b (Llama-3.1-8B bf16, az-r8 and the sweep, one engine after
#         another on one host: default; 64 seqs / 2048 tokens; 64 seqs alone; then 2048 tokens
#         alone; 64 / 2048 again; default again: 2026-12-04, which flag the slower launches follow)
#         spec-l3 spec-l1 (draft Llama-3.2-1B, k=4, vLLM's synthetic rejection sampling at mean
#         acceptance length 3.0 / 1.0), prefix prefix-off (prefix-heavy synthetic traces with
#         vLLM's prefix caching on / off), awq (Llama-3.1-8B AWQ W4A16, random 4-bit weights),
#         kv-fp8 (Llama-3.1-8B bf16 with an FP8 KV cache)
#         timeline (Llama-3.1-8B bf16, light to past saturation plus the prefill sweep, in one
#         engine: the runs that carry the engine thread's timestamps, 2026-12-02), timeline-small
#         (the same at max-num-seqs 64 / 2048 batched tokens), timeline-fp8 (FP8 W8A8 at 8, 20 req/s),
#         timeline-fp8b (FP8 W8A8 at 2, 40 req/s and the sweep), fp8-one-engine (all five FP8
#         runs in one engine; run right after `timeline` on the same machine, 2026-12-02, the
#         pair that replaces timeline-fp8 and timeline-fp8b, whose two engines launched at
#         speeds 30-40% apart, and the earlier llama8b-bf16 runs), timeline-moe (Qwen3-30B-A3B, light
#         to past saturation and the sweep; 2026-12-02, with big-bf16 re-run the same day)
#         long, long-sat (Llama-3.1-8B bf16 at max-model-len 131072: isolated prompts of
#         12k..123k tokens, then the first 40 s of the Mooncake sample, prefix caching on,
#         stretched 4x (long) and at its own rate, past saturation (long-sat); 2026-12-03)
#         sweep, sweep-moe (isolated prompts of 16..8192 tokens: single prefill steps on both
#         sides of the CUDA-graph capture size; Llama-3.1-8B bf16, fp8 and bf16 at
#         max-num-seqs 64, then Qwen3-30B-A3B), ops (the torch operator micro-profiler),
#         ops-vllm (vLLM's own kernels in it: Marlin W4A16 GEMMs, paged decode attention with a
#         16-bit and an FP8 KV cache)
#         stalls-32b stalls-14b (diagnostic, not calibration: Qwen2.5-32B at 8 req/s and
#         Qwen2.5-14B at 20 req/s with --diagnose, garbage collection and allocator events per
#         launch, then again with --gc-freeze), stalls-32b-host stalls-14b-host (the same runs
#         with the pinned-allocator counters added to --diagnose)
set -euo pipefail
DEST=$1; shift
T=profiles/calibration/measurements/traces
P="python3 -m simulator.profiler.vllm_replay"
for g in "$@"; do
  # The GPU's clocks and power every 100 ms while the group runs (simulator/profiler/clocks.py
  # lines them up with the steps); skipped where there is no nvidia-smi.
  # The clock-event mask (why the clock is held down) where the driver knows the field, and the
  # GPU's power limits and clock targets once per group.
  LOG=""
  if command -v nvidia-smi >/dev/null; then
    Q=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu
    for R in clocks_event_reasons.active clocks_throttle_reasons.active; do
      nvidia-smi --query-gpu=$Q,$R --format=csv,nounits >/dev/null 2>&1 && Q=$Q,$R && break
    done
    nvidia-smi -q -d POWER,CLOCK,PERFORMANCE > "$DEST/$g.gpu-info.txt" 2>&1 || true
    nvidia-smi --query-gpu=$Q --format=csv,nounits -lms 100 > "$DEST/$g.gpu.csv" 2>&1 & LOG=$!
  fi
  case $g in
    llama-bf16) $P --model llama-3.1-8b --trace $T/az-r2.jsonl --trace $T/az-r8.jsonl \
        --trace $T/az-r20.jsonl --trace $T/az-r40.jsonl --out $DEST/llama8b-bf16 ;;
    llama-fp8) $P --model llama-3.1-8b --quantization fp8 --trace $T/az-r2.jsonl \
        --trace $T/az-r8.jsonl --trace $T/az-r20.jsonl --trace $T/az-r40.jsonl --out $DEST/llama8b-fp8 ;;
    llama-small) $P --model llama-3.1-8b --max-num-seqs 64 --max-num-batched-tokens 2048 \
        --trace $T/az-r8.jsonl --trace $T/az-r20.jsonl --out $DEST/llama8b-bf16-s64-t2048 ;;
    moe) $P --model qwen3-30b-a3b --trace $T/az-r2.jsonl --trace $T/az-r8.jsonl \
        --trace $T/az-r20.jsonl --out $DEST/qwen3-30b-a3b-bf16 ;;
    big) $P --model qwen2.5-32b --quantization fp8 --trace $T/az-r2.jsonl --trace $T/az-r8.jsonl \
        --trace $T/az-r20.jsonl --out $DEST/qwen2.5-32b-fp8 ;;
    mid) $P --model qwen2.5-14b --trace $T/az-r2.jsonl --trace $T/az-r8.jsonl \
        --trace $T/az-r20.jsonl --trace $T/prefill-sweep.jsonl --out $DEST/qwen2.5-14b-bf16 ;;
    timeline) $P --model llama-3.1-8b --trace $T/az-r2.jsonl --trace $T/az-r8.jsonl \
        --trace $T/az-r20.jsonl --trace $T/az-r40.jsonl --trace $T/prefill-sweep.jsonl \
        --out $DEST/llama8b-bf16 ;;
    timeline-small) $P --model llama-3.1-8b --max-num-seqs 64 --max-num-batched-tokens 2048 \
        --trace $T/az-r8.jsonl --trace $T/az-r20.jsonl --trace $T/prefill-sweep.jsonl \
        --out $DEST/llama8b-bf16-s64-t2048 ;;
    timeline-fp8) $P --model llama-3.1-8b --quantization fp8 --trace $T/az-r8.jsonl \
        --trace $T/az-r20.jsonl --out $DEST/llama8b-fp8 ;;
    timeline-fp8b) $P --model llama-3.1-8b --quantization fp8 --trace $T/az-r2.jsonl \
        --trace $T/az-r40.jsonl --trace $T/prefill-sweep.jsonl --out $DEST/llama8b-fp8 ;;
    fp8-one-engine) $P --model llama-3.1-8b --quantization fp8 --trace $T/az-r2.jsonl \
        --trace $T/az-r8.jsonl --trace $T/az-r20.jsonl --trace $T/az-r40.jsonl \
        --trace $T/prefill-sweep.jsonl --out $DEST/llama8b-fp8 ;;
    timeline-moe) $P --model qwen3-30b-a3b --trace $T/az-r2.jsonl --trace $T/az-r8.jsonl \
        --trace $T/az-r20.jsonl --trace $T/prefill-sweep.jsonl --out $DEST/qwen3-30b-a3b-bf16 ;;
    big-bf16) $P --model qwen2.5-32b --trace $T/az-r2.jsonl --trace $T/az-r8.jsonl \
        --trace $T/az-r20.jsonl --out $DEST/qwen2.5-32b-bf16 ;;
    spec-l3|spec-l1) L=${g#spec-l}; $P --model llama-3.1-8b --speculative-config \
        "{\"method\": \"draft_model\", \"model\": \"llama-3.2-1b\", \"num_speculative_tokens\": 4, \"rejection_sample_method\": \"synthetic\", \"synthetic_acceptance_length\": $L.0}" \
        --trace $T/az-r2.jsonl --trace $T/az-r8.jsonl --out $DEST/llama8b-bf16-spec-d1b-k4-l$L ;;
    kv-fp8) $P --model llama-3.1-8b --kv-cache-dtype fp8 --trace $T/az-r8.jsonl \
        --trace $T/az-r20.jsonl --out $DEST/llama8b-bf16-kvfp8 ;;
    awq) $P --model llama-3.1-8b-awq --trace $T/az-r2.jsonl --trace $T/az-r8.jsonl \
        --trace $T/az-r20.jsonl --out $DEST/llama8b-awq ;;
    prefix) $P --model llama-3.1-8b --enable-prefix-caching --trace $T/prefix-s4.jsonl \
        --trace $T/prefix-s4-r4.jsonl --out $DEST/llama8b-bf16-prefix ;;
    prefix-off) $P --model llama-3.1-8b --no-enable-prefix-caching --trace $T/prefix-s4.jsonl \
        --trace $T/prefix-s4-r4.jsonl --out $DEST/llama8b-bf16-prefix-off ;;
    long) $P --model llama-3.1-8b --max-model-len 131072 --trace $T/long-sweep.jsonl \
        --trace $T/mc-x4.jsonl --out $DEST/llama8b-bf16-long ;;
    long-sat) $P --model llama-3.1-8b --max-model-len 131072 --trace $T/mc-x1.jsonl \
        --out $DEST/llama8b-bf16-long ;;
    sweep) $P --model llama-3.1-8b --trace $T/prefill-sweep.jsonl --out $DEST/llama8b-bf16
      $P --model llama-3.1-8b --quantization fp8 --trace $T/prefill-sweep.jsonl --out $DEST/llama8b-fp8
      $P --model llama-3.1-8b --max-num-seqs 64 --max-num-batched-tokens 2048 \
        --trace $T/prefill-sweep.jsonl --out $DEST/llama8b-bf16-s64-t2048 ;;
    configs-a|configs-b) # which engine flag slows the s64 engines' launches (2026-12-04):
      # default, s64 and each flag alone, engine after engine on one host, then repeated
      A=$T/az-r8.jsonl; S=$T/prefill-sweep.jsonl; R=""; [ $g = configs-b ] && R=-run2
      if [ $g = configs-a ]; then
        $P --model llama-3.1-8b --trace $A --trace $S --out $DEST/llama8b-bf16
        $P --model llama-3.1-8b --max-num-seqs 64 --max-num-batched-tokens 2048 --trace $A \
          --trace $S --out $DEST/llama8b-bf16-s64-t2048
        $P --model llama-3.1-8b --max-num-seqs 64 --trace $A --trace $S \
          --out $DEST/llama8b-bf16-s64-t8192
      else
        $P --model llama-3.1-8b --max-num-batched-tokens 2048 --trace $A --trace $S \
          --out $DEST/llama8b-bf16-s1024-t2048
        $P --model llama-3.1-8b --max-num-seqs 64 --max-num-batched-tokens 2048 --trace $A \
          --trace $S --out $DEST/llama8b-bf16-s64-t2048$R
        $P --model llama-3.1-8b --trace $A --trace $S --out $DEST/llama8b-bf16$R
      fi ;;
    sweep-moe) $P --model qwen3-30b-a3b --trace $T/prefill-sweep.jsonl --out $DEST/qwen3-30b-a3b-bf16 ;;
    stalls-14b-host) $P --model qwen2.5-14b --diagnose --trace $T/az-r20.jsonl \
        --out $DEST/diagnose-host/qwen2.5-14b-bf16 ;;
    stalls-32b-host) $P --model qwen2.5-32b --diagnose --trace $T/az-r8.jsonl \
        --out $DEST/diagnose-host/qwen2.5-32b-bf16 ;;
    stalls-32b|stalls-14b) M=qwen2.5-32b; R=az-r8; [ $g = stalls-14b ] && M=qwen2.5-14b && R=az-r20
      $P --model $M --diagnose --trace $T/$R.jsonl --out $DEST/diagnose/$M-bf16
      $P --model $M --diagnose --gc-freeze --trace $T/$R.jsonl --out $DEST/diagnose-gc-freeze/$M-bf16 ;;
    ops) O="python3 -m simulator.profiler.operators"
      $O --model llama-3.1-8b --fp8 --out $DEST/ops/llama-3.1-8b
      $O --model qwen3-30b-a3b --out $DEST/ops/qwen3-30b-a3b
      $O --model qwen2.5-32b --fp8 --out $DEST/ops/qwen2.5-32b ;;
    ops-vllm) O="python3 -m simulator.profiler.operators"
      $O --model llama-3.1-8b-awq --w4a16 --out $DEST/ops/llama-3.1-8b-awq
      $O --model llama-3.1-8b --paged-attn --out $DEST/ops/llama-3.1-8b-paged ;;
    *) echo "unknown group $g" >&2; exit 2 ;;
  esac 2>&1 | tee "$DEST/$g.log" | grep -v "^\(INFO\|WARNING\|DEBUG\)" | tail -20
  [ -n "$LOG" ] && kill "$LOG" 2>/dev/null || true
done
