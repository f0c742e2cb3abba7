"""The launch probe of ``vllm_replay --diagnose``: what it writes into a step record."""

from __future__ import annotations

import gc

from simulator.profiler.diagnose import ALLOC_KEYS, LaunchProbe


class FakeCuda:
    """Counters that move as a test says: ``memory_stats`` and ``host_memory_stats``."""

    def __init__(self) -> None:
        self.dev = dict.fromkeys(ALLOC_KEYS, 0)
        self.host = {"num_host_alloc": 3, "host_alloc_time.total": 10.0, "allocation.current": 7}

    def memory_stats(self) -> dict:
        return dict(self.dev)

    def host_memory_stats(self) -> dict:
        return dict(self.host)


def test_probe_counts_collections_and_allocator_events_inside_one_launch_only():
    cuda = FakeCuda()
    probe = LaunchProbe(cuda)
    try:
        gc.collect()  # before the launch: not counted
        cuda.host["num_host_alloc"] += 5
        probe.before()
        gc.collect()
        gc.collect(0)
        cuda.dev["num_device_alloc"] += 2
        cuda.host["num_host_alloc"] += 1
        cuda.host["host_alloc_time.total"] += 4.5
        cuda.host["allocation.current"] += 1  # a gauge, not a count: left out
        rec: dict = {}
        probe.after(rec)
    finally:
        probe.close()
    assert rec["gc_full"] == 1 and rec["gc_s"] > 0
    assert rec["alloc"] == {"num_device_alloc": 2, "num_device_free": 0, "num_alloc_retries": 0,
                            "num_sync_all_streams": 0}
    assert rec["host_alloc"] == {"num_host_alloc": 1, "host_alloc_time.total": 4.5}
    assert probe.gc._on not in gc.callbacks  # closed: no cost after the replay


def test_probe_without_cuda_records_collections_only():
    probe = LaunchProbe(None)
    probe.before()
    rec: dict = {}
    probe.after(rec)
    probe.close()
    assert set(rec) == {"gc_s", "gc_full"} and rec["gc_full"] == 0


def test_archived_diagnostic_runs_show_waits_only_at_new_batch_maxima():
    """The committed diagnostic runs (profiles/calibration/diagnostics): every launch that waited
    for its own batch in Qwen2.5-32B's az-r8 replay came at a step scheduling more sequences
    than any before it, with no garbage collection or device malloc inside; freezing the heap
    left the 19 waits as they were."""
    import importlib.util
    import tarfile

    from simulator.paths import profiles_dir

    here = profiles_dir() / "calibration" / "diagnostics"
    spec = importlib.util.spec_from_file_location("launch_syncs", here / "launch_syncs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with tarfile.open(here / "h200-vllm-0.25.1" / "stalls-32b.tgz") as tf:
        got = {}
        for run in ("diagnose", "diagnose-gc-freeze"):
            base = f"./{run}/qwen2.5-32b-bf16/az-r8/"
            got[run] = mod.summary(mod.rows(tf, base + "steps.jsonl"),
                                   mod.rows(tf, base + "requests.jsonl"))
    for row in got.values():
        assert row["synced"] == row["synced_at_new_max"] == 19 and row["new_max"] == 64
        assert row["synced_with_device_alloc"] == 0 and row["gc_in_launches_s"] < 0.2
    assert got["diagnose-gc-freeze"]["full_gcs"] == 0
