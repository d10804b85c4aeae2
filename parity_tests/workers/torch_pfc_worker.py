"""Two-rank PyTorch twin worker under gloo (torch.multiprocessing.spawn), the distributed reference.

Usage: ``python parity_tests/workers/torch_pfc_worker.py FOLDER PORT``; reads FOLDER/inputs.npz and
cases.json (see ``pfc_cases``), writes FOLDER/torch_rank{r}.npz. PORT is a free TCP port on 127.0.0.1.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project from its root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from converters.errors import run_cli
from parity_tests.workers.pfc_cases import WORLD, read_inputs
from torch_reference.losses import CombinedMarginLoss
from torch_reference.partial_fc import PartialFC


def _rank_main(rank: int, folder: str, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        cases, arrays = read_inputs(Path(folder))
        out = {}
        for i, case in enumerate(cases):
            batch = arrays[f"emb{i}"].shape[0] // WORLD
            rows = slice(rank * batch, (rank + 1) * batch)
            scores = arrays[f"scores{i}_{rank}"]
            margin = CombinedMarginLoss(64.0, 1.0, case["m2"], case["m3"], case["t"], case["grad_mode"])
            pfc = PartialFC(margin, arrays[f"emb{i}"].shape[1], case["classes"], case["sample_rate"],
                            score_source=lambda n, s=scores: s.copy()).double()
            with torch.no_grad():
                pfc.weight.copy_(torch.from_numpy(arrays[f"weight{i}"][pfc.class_start : pfc.class_start + pfc.num_local]))
            emb = torch.tensor(arrays[f"emb{i}"][rows], requires_grad=True)
            loss = pfc(emb, torch.tensor(arrays[f"labels{i}"][rows]))
            loss.backward()
            index = pfc.weight_index
            out.update({
                f"loss{i}": np.array(loss.item()), f"d_emb{i}": emb.grad.numpy(), f"d_w{i}": pfc.weight.grad.numpy(),
                f"index{i}": np.arange(pfc.num_local) if index is None else index.numpy(),
                f"labels{i}": pfc.local_labels.numpy(), f"class_start{i}": np.array(pfc.class_start),
            })
        np.savez(Path(folder) / f"torch_rank{rank}.npz", **out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    mp.spawn(_rank_main, args=(sys.argv[1], int(sys.argv[2])), nprocs=WORLD, join=True)


if __name__ == "__main__":
    run_cli(lambda: main())
