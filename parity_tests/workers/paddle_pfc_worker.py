"""Two-rank Paddle Partial FC worker: run under ``python -m paddle.distributed.launch --nproc_per_node 2``.

Usage: ``python -m paddle.distributed.launch --nproc_per_node 2 --log_dir LOG
parity_tests/workers/paddle_pfc_worker.py FOLDER``; reads FOLDER/inputs.npz and cases.json (see
``pfc_cases``), writes FOLDER/paddle_rank{r}.npz.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project from its root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import numpy as np

from converters.errors import run_cli
from converters.runtime import quiet_paddle_import


def main() -> None:
    quiet_paddle_import()
    import paddle
    import paddle.distributed as dist

    from parity_tests.workers.pfc_cases import read_inputs
    from train.losses import CombinedMarginLoss
    from train.partial_fc import PartialFC

    folder = Path(sys.argv[1])
    paddle.set_default_dtype("float64")
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    cases, arrays = read_inputs(folder)
    out = {}
    for i, case in enumerate(cases):
        batch = arrays[f"emb{i}"].shape[0] // world
        rows = slice(rank * batch, (rank + 1) * batch)
        scores = arrays[f"scores{i}_{rank}"]
        margin = CombinedMarginLoss(64.0, 1.0, case["m2"], case["m3"], case["t"], case["grad_mode"])
        # the gradient does not depend on the update mode; sparse also covers a rank with no rows
        update = "sparse" if case["grad_mode"] == "exact" or case["name"] == "rank1_has_no_columns" else "dense"
        pfc = PartialFC(margin, arrays[f"emb{i}"].shape[1], case["classes"], case["sample_rate"], update,
                        score_source=lambda n, s=scores: s.copy())
        pfc.weight.set_value(arrays[f"weight{i}"][pfc.class_start : pfc.class_start + pfc.num_local])
        emb = paddle.to_tensor(arrays[f"emb{i}"][rows], stop_gradient=False)
        loss = pfc(emb, paddle.to_tensor(arrays[f"labels{i}"][rows]))
        loss.backward()
        sample = pfc.last_sample
        out.update({
            f"loss{i}": np.array(float(loss)), f"d_emb{i}": emb.grad.numpy(), f"d_w{i}": pfc.shard_grad().numpy(),
            f"index{i}": np.arange(pfc.num_local) if sample.index is None else sample.index.numpy(),
            f"labels{i}": sample.labels.numpy(), f"class_start{i}": np.array(pfc.class_start),
        })
        if update == "sparse":
            pfc.sparse_step(0.1)  # must also work on a rank that used no rows
    np.savez(folder / f"paddle_rank{rank}.npz", **out)


if __name__ == "__main__":
    run_cli(lambda: main())
