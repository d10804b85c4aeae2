"""Training datasets (``paddle.io.Dataset``): RecordIO packs, image folders and synthetic data.

Every item is ``(image [3, 112, 112] float32 RGB in [-1, 1], label int64)``, as InsightFace's datasets give.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from paddle.io import Dataset

from converters.errors import UserError
from converters.folders import list_images, read_image_file
from converters.images import normalize

from .layout import read_layout
from .recordio import RecordReader, require_class_id
from .transforms import TrainTransform


class _EncodedImages(Dataset):
    """Base of the datasets of encoded images: the training transform and its per-worker re-seeding."""

    def __init__(self, transform: TrainTransform | None):
        self.transform = transform or TrainTransform()

    def reseed(self, seed: int) -> None:
        """Restart the flip decisions (the loader calls it in each worker with InsightFace's seed)."""
        self.transform.reseed(seed)


class RecordDataset(_EncodedImages):
    """An InsightFace RecordIO pack (``train.rec``/``train.idx``): images as ``MXFaceDataset`` finds them."""

    def __init__(self, root: str | Path, transform: TrainTransform | None = None):
        super().__init__(transform)
        self.reader = RecordReader.open(root)
        self.image_keys = read_layout(self.reader).image_keys

    def __len__(self) -> int:
        return len(self.image_keys)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64]:
        key = int(self.image_keys[index])
        record = self.reader.read_record(key)
        label = require_class_id(record.header.label, self.reader.rec_path, key)
        image = self.transform(record.payload, self.reader.rec_path, f"record key {key}")
        return image, np.int64(label)


class ImageFolderDataset(_EncodedImages):
    """Images listed by arcface_paddle's ``label.txt`` or stored one sub-folder per class."""

    def __init__(self, root: str | Path, transform: TrainTransform | None = None):
        super().__init__(transform)
        self.images = list_images(root)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64]:
        path = self.images.paths[index]
        image = self.transform(read_image_file(path), path, "image")
        return image, np.int64(self.images.labels[index])


class SyntheticDataset(Dataset):
    """InsightFace's speed-test data: one fixed random image (values 0..254) and label 1, ``length`` times."""

    def __init__(self, length: int = 1_000_000, seed: int = 0, image_size: tuple[int, int] = (112, 112)):
        if length <= 0:
            raise UserError(None, f"synthetic dataset length must be positive, got {length}")
        self.length = length
        rgb = np.random.default_rng(seed).integers(0, 255, size=(*image_size, 3), dtype=np.uint8)
        self.image = normalize(rgb)

    def __len__(self) -> int:
        return self.length

    def reseed(self, seed: int) -> None:  # nothing random per item
        return None

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64]:
        return self.image, np.int64(1)
