"""Worker for the two-process training test: a few Trainer steps on per-rank batches, dumping per step the
loss, this rank's embeddings and labels, the Partial FC shard before the step and the backbone weights.

    python -m paddle.distributed.launch --nproc_per_node 2 parity_tests/workers/train_worker.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])

import numpy as np  # noqa: E402


def main(out: Path) -> None:
    from converters.runtime import set_threads

    set_threads(1)
    import paddle
    import paddle.distributed as dist

    from paddle_models import get_model
    from train.config import TrainConfig
    from train.engine import Trainer

    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    config = TrainConfig(network="mbf", embedding_size=64, num_classes=11, num_image=32, batch_size=4,
                         rec="synthetic", sample_rate=1.0, lr=0.05)
    paddle.seed(config.seed)
    backbone = get_model("mbf", num_features=64)
    trainer = Trainer(config, backbone, total_steps=6, warmup_steps=1,
                      score_source=np.random.default_rng(5).random)
    captured = {}
    backbone.register_forward_post_hook(lambda layer, inputs, output: captured.update(emb=output.numpy()))
    data = np.random.default_rng(100 + rank)  # different images and labels on each rank
    for step in range(3):
        images = data.uniform(-1, 1, (4, 3, 112, 112)).astype("float32")
        labels = data.integers(0, 11, 4)
        shard = trainer.pfc.weight.numpy().copy()
        result = trainer.train_step(paddle.to_tensor(images), paddle.to_tensor(labels))
        params = {k: p.numpy() for k, p in backbone.named_parameters() if not p.stop_gradient}  # not BN stats
        np.savez(out / f"rank{rank}_step{step}.npz", loss=result.loss, emb=captured["emb"], labels=labels,
                 shard=shard, world=world, **{f"param/{k}": v for k, v in params.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
