"""--pipeline-parallel-size: layers split over stages (weights and KV per GPU shrink), every
step still crosses all layers plus the stage-to-stage sends, and a replica keeps one batch in
flight per stage."""

from __future__ import annotations

import pytest

from simulator.config import SimulationConfig
from simulator.deployment import resolve
from simulator.errors import InputError
from simulator.request import Request
from simulator.run import run_simulation


def cfg(tp: int, pp: int, gpu: str = "h100x4", model: str = "llama-3.1-70b"):
    return SimulationConfig(gpu=gpu, model=model, engine={"tensor_parallel_size": tp,
                                                          "pipeline_parallel_size": pp})


def test_stages_split_weights_and_kv_but_not_the_step():
    tp4, pp2 = resolve(cfg(4, 1)), resolve(cfg(2, 2))
    assert tp4.replicas == pp2.replicas == 1 and pp2.describe()["pipeline_parallel_size"] == 2
    tp2 = resolve(cfg(2, 1, gpu="h100x2"))
    assert pp2.weight_bytes_per_gpu == pytest.approx(tp2.weight_bytes_per_gpu / 2)
    assert pp2.kv_bytes_per_token == pytest.approx(tp2.kv_bytes_per_token / 2)
    # A lone request crosses every layer: PP does not cut per-token latency, TP does.
    one = {k: run_simulation(cfg(*k), [Request("a", 0, 1000, 200)]).requests[0].tpot
           for k in ((4, 1), (2, 2), (1, 4))}
    assert one[(4, 1)] < one[(2, 2)] < one[(1, 4)]
    send = next(r for r in pp2.roofline.explain(8, 8 * 1000, [], 8) if r.name.startswith("pp_send"))
    assert send.count == 1 and send.wire_bytes == pytest.approx(8 * 8192 * 2 / 2)


def test_a_replica_keeps_one_batch_in_flight_per_stage():
    """Two requests on PP2 run in two pipelined batches: each at the lone-request pace."""
    c = cfg(1, 2, gpu="h100x2", model="llama-3.1-8b")
    alone = run_simulation(c, [Request("a", 0, 500, 300)]).requests[0].tpot
    pair = run_simulation(c, [Request("a", 0, 500, 300), Request("b", 0, 500, 300)]).requests
    assert all(r.replica in (0, 1) for r in pair) and pair[0].replica != pair[1].replica
    assert pair[0].tpot == pytest.approx(alone, rel=1e-6)


def test_bad_pipeline_shapes_are_refused():
    with pytest.raises(InputError, match="6 GPUs do not split into 4 pipeline stages"):
        resolve(cfg(1, 4, gpu="h100x6"))
    with pytest.raises(InputError, match="disaggregation with pipeline parallelism"):
        resolve(SimulationConfig(gpu="h100x4", disaggregate="1:1",
                                 engine={"pipeline_parallel_size": 2}))


def test_explain_shows_the_stage_sends():
    from tests.test_cli import simulate

    p = simulate("explain", "--gpu", "h100x4", "--model", "llama-3.1-70b", "-tp", "2", "-pp", "2",
                 "--decode", "16x1000")
    assert p.returncode == 0 and "pp_send(nvlink)" in p.stdout
