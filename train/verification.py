"""InsightFace's verification callback: every ``verbose`` steps, the ``val_targets`` packs beside the
training data are evaluated with eval/'s protocol and logged as InsightFace logs them."""

from __future__ import annotations

from pathlib import Path

from converters.binfile import read_bin
from eval.backends import PaddleEmbedder
from eval.protocol import evaluate_flip
from eval.results import insightface_lines
from eval.stream import embed_pack
from train.config import TrainConfig, data_path
from train.monitor import log

BATCH_SIZE = 10  # InsightFace's callback batch; eval-mode BN makes the result independent of it


class VerificationCallback:
    def __init__(self, config: TrainConfig, backbone, monitor):
        folder = data_path(config) if data_path(config).is_dir() else data_path(config).parent
        self.packs = []
        for name in config.val_targets:
            path = Path(folder) / f"{name}.bin"
            if path.is_file():
                self.packs.append((name, read_bin(path)))
            else:
                log.warning(f"val target {name}: {path} not found, skipped")
        self.embedder = PaddleEmbedder(backbone)
        self.monitor = monitor
        self.highest: dict[str, float] = {}

    def __call__(self, step: int) -> None:
        for name, pack in self.packs:
            embeddings = embed_pack(pack, self.embedder, BATCH_SIZE, flip=True, progress=False)
            result = evaluate_flip(embeddings.original, embeddings.flipped, pack.issame)
            self.highest[name] = max(self.highest.get(name, 0.0), result.accuracy)
            for line in insightface_lines(name, result, step):
                log.info(line)
            log.info(f"[{name}][{step}]Accuracy-Highest: {self.highest[name]:1.5f}")
            self.monitor.scalar(name, result.accuracy, step)
