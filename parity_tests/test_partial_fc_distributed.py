"""Partial FC on two CPU ranks, float64: Paddle under paddle.distributed.launch (gloo) and the PyTorch twin
under torch.distributed (gloo) against one process on the global batch and the numpy reference.

Conventions checked (insightface_arcface.md §3.4): the loss is the same on both ranks and equals the
one-process loss; each rank's embedding gradient equals W times the one-process gradient rows of its own
samples (before the backbone's DataParallel averaging); each shard's centre gradient equals the matching
rows of the one-process centre gradient. The workers run as subprocesses with a timeout; their whole
process group is killed on timeout, so nothing is left running.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

import train.losses as pl
import train.partial_fc as pp
from parity_tests.workers.launch import free_port, run_workers
from parity_tests.workers.numpy_reference import (
    Margin,
    partial_fc,
    rel,
    sample_rows,
    shard_range,
    used_columns,
)
from parity_tests.workers.pfc_cases import BATCH_PER_RANK, CASES, WORLD, read_inputs, write_inputs

ROOT = Path(__file__).resolve().parents[1]
WORKERS = ROOT / "parity_tests" / "workers"
GATE = 1e-8
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    """Run both two-rank workers once; returns (cases, inputs, {"paddle": [rank0, rank1], "torch": [...]})."""
    folder = tmp_path_factory.mktemp("pfc_two_ranks")
    write_inputs(folder)
    logs = folder / "paddle_logs"
    run_workers([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(WORLD), "--log_dir", str(logs),
          str(WORKERS / "paddle_pfc_worker.py"), str(folder)], logs, TIMEOUT_S)
    run_workers([sys.executable, str(WORKERS / "torch_pfc_worker.py"), str(folder), str(free_port())], timeout=TIMEOUT_S)
    cases, inputs = read_inputs(folder)
    results = {}
    for framework in ("paddle", "torch"):
        results[framework] = []
        for rank in range(WORLD):
            with np.load(folder / f"{framework}_rank{rank}.npz") as data:
                results[framework].append({k: data[k] for k in data.files})
    return cases, inputs, results


def _margin(case: dict) -> Margin:
    return Margin(64.0, case["m2"], case["m3"], case["t"], case["grad_mode"])


def _reference(case: dict, inputs: dict, i: int):
    """numpy, one process, global batch, the union of both ranks' sampled columns."""
    labels = inputs[f"labels{i}"]
    scores = [inputs[f"scores{i}_{r}"] for r in range(WORLD)]
    columns = used_columns(labels, case["classes"], WORLD, case["sample_rate"], scores)
    return partial_fc(inputs[f"emb{i}"], inputs[f"weight{i}"], labels, _margin(case), columns)


def _compare_with_global_batch(rank_results, case, loss, d_emb, d_w, i) -> dict[str, float]:
    measured = {}
    for rank, res in enumerate(rank_results):
        start, count = shard_range(case["classes"], WORLD, rank)
        rows = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        measured[f"rank{rank} loss"] = rel(res[f"loss{i}"], loss)
        measured[f"rank{rank} d_emb vs W*ref"] = rel(res[f"d_emb{i}"], WORLD * d_emb[rows])
        measured[f"rank{rank} d_shard"] = rel(res[f"d_w{i}"], d_w[start : start + count])
    return measured


@pytest.mark.parametrize("framework", ["paddle", "torch"])
@pytest.mark.parametrize("i", range(len(CASES)), ids=[c["name"] for c in CASES])
def test_two_rank_loss_and_gradients_equal_numpy_on_global_batch(two_rank_results, framework, i):
    cases, inputs, results = two_rank_results
    case = cases[i]
    loss, d_emb, d_w = _reference(case, inputs, i)
    measured = _compare_with_global_batch(results[framework], case, loss, d_emb, d_w, i)
    print(framework, case["name"], f"loss {loss:.6f}", {k: f"{v:.1e}" for k, v in measured.items()})
    assert max(measured.values()) <= GATE, measured


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c["name"] for c in CASES])
def test_two_rank_paddle_sampling_equals_torch_twin_and_numpy(two_rank_results, i):
    cases, inputs, results = two_rank_results
    case, labels = cases[i], inputs[f"labels{i}"]
    for rank in range(WORLD):
        start, count = shard_range(case["classes"], WORLD, rank)
        local = np.where((labels >= start) & (labels < start + count), labels - start, -1)
        if case["sample_rate"] < 1.0:
            index, local = sample_rows(local, inputs[f"scores{i}_{rank}"], int(case["sample_rate"] * count))
        else:
            index = np.arange(count)
        for framework in ("paddle", "torch"):
            res = results[framework][rank]
            assert int(res[f"class_start{i}"]) == start
            np.testing.assert_array_equal(res[f"index{i}"], index)
            np.testing.assert_array_equal(res[f"labels{i}"], local)
    if case["name"] == "rank1_has_no_columns":
        assert results["paddle"][1][f"index{i}"].size == 0


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c["name"] for c in CASES])
def test_two_rank_paddle_equals_torch_twin_under_gloo(two_rank_results, i):
    _, _, results = two_rank_results
    measured = {}
    for rank in range(WORLD):
        paddle_res, torch_res = results["paddle"][rank], results["torch"][rank]
        for key in ("loss", "d_emb", "d_w"):
            measured[f"rank{rank} {key}"] = rel(paddle_res[f"{key}{i}"], torch_res[f"{key}{i}"])
    print(CASES[i]["name"], {k: f"{v:.1e}" for k, v in measured.items()})
    assert max(measured.values()) <= GATE, measured


@pytest.mark.parametrize("i", [i for i, c in enumerate(CASES) if c["sample_rate"] == 1.0],
                         ids=[c["name"] for c in CASES if c["sample_rate"] == 1.0])
def test_two_rank_paddle_equals_one_paddle_process_on_global_batch(two_rank_results, i):
    cases, inputs, results = two_rank_results
    case = cases[i]
    margin = pl.CombinedMarginLoss(64.0, 1.0, case["m2"], case["m3"], case["t"], case["grad_mode"])
    pfc = pp.PartialFC(margin, inputs[f"emb{i}"].shape[1], case["classes"], dtype="float64")
    pfc.weight.set_value(inputs[f"weight{i}"])
    emb = paddle.to_tensor(inputs[f"emb{i}"], stop_gradient=False)
    loss = pfc(emb, paddle.to_tensor(inputs[f"labels{i}"]))
    loss.backward()
    single = (float(loss), emb.grad.numpy(), pfc.weight.grad.numpy())
    measured = _compare_with_global_batch(results["paddle"], case, *single, i)
    print(case["name"], {k: f"{v:.1e}" for k, v in measured.items()})
    assert max(measured.values()) <= GATE, measured
