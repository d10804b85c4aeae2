"""Datasets and loader: RecordIO, image folders and synthetic data give InsightFace's tensors; flips are
seeded per worker as InsightFace seeds them; the loader picks the dataset from the folder's content."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from converters.errors import UserError
from train.data.datasets import ImageFolderDataset, RecordDataset, SyntheticDataset
from train.data.loader import get_dataloader, make_dataset
from train.data.recordio import RecordIOError, RecordWriter
from train.data.sampler import DistributedSampler
from train.data.transforms import TrainTransform, decode_rgb, worker_seed


def expected_image(path: Path, flip: bool) -> np.ndarray:
    """The reference tensor computed by hand: OpenCV BGR -> RGB, optional flip, (v/255 - 0.5)/0.5, CHW."""
    rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    if flip:
        rgb = rgb[:, ::-1]
    x = (rgb.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    return x.transpose(2, 0, 1)


def source(small_dataset: Path) -> list[tuple[Path, int]]:
    lines = (small_dataset / "label.txt").read_text().splitlines()
    return [(small_dataset / p, int(c)) for p, c in (line.split("\t") for line in lines)]


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_record_dataset_items_equal_hand_computed_tensors(small_dataset, small_dataset_rec, flip_p):
    dataset = RecordDataset(small_dataset_rec, TrainTransform(flip_p=flip_p))
    assert len(dataset) == 10
    for i, (path, label) in enumerate(source(small_dataset)):
        image, got_label = dataset[i]
        assert image.dtype == np.float32 and image.shape == (3, 112, 112) and image.flags.c_contiguous
        np.testing.assert_array_equal(image, expected_image(path, flip=flip_p == 1.0))
        assert got_label.dtype == np.int64 and got_label == label


def test_flip_decisions_follow_the_injected_generator(small_dataset, small_dataset_rec):
    dataset = RecordDataset(small_dataset_rec, TrainTransform(seed=11))
    draws = np.random.default_rng(11).random(10) < 0.5
    assert 0 < draws.sum() < 10  # the seed gives both outcomes
    for i, (path, _) in enumerate(source(small_dataset)):
        np.testing.assert_array_equal(dataset[i][0], expected_image(path, flip=bool(draws[i])))
    dataset.reseed(11)
    np.testing.assert_array_equal(dataset[0][0], expected_image(source(small_dataset)[0][0], bool(draws[0])))


def test_worker_seed_is_insightfaces_formula():
    assert worker_seed(2048, rank=3, num_workers=2, worker_id=1) == 2048 + 1 + 3 * 2


def test_record_dataset_rejects_a_fractional_label_naming_the_key(tmp_path, small_dataset):
    jpeg = source(small_dataset)[0][0].read_bytes()
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write_image(0, 0.0, jpeg)
        writer.write_image(1, 1.25, jpeg)
        writer.write_image(2, -1.0, jpeg)
    dataset = RecordDataset(tmp_path)
    assert len(dataset) == 3 and dataset[0][1] == 0
    with pytest.raises(RecordIOError,
                       match=r"train\.rec: record key 1: label 1\.25 is not an integer class id"):
        dataset[1]
    with pytest.raises(RecordIOError, match=r"record key 2: label -1\.0 is not an integer"):
        dataset[2]


def test_multi_label_record_trains_on_its_first_label(tmp_path, small_dataset):
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write_image(5, [3.0, 0.7], source(small_dataset)[0][0].read_bytes())
    assert RecordDataset(tmp_path)[0][1] == 3


def test_undecodable_and_wrong_size_images_are_named():
    with pytest.raises(UserError, match=r"x\.rec: record key 4: cannot be decoded"):
        decode_rgb(b"\xff\xd8\xffnot a jpeg", "x.rec", "record key 4")
    ok, png = cv2.imencode(".png", np.zeros((50, 60, 3), np.uint8))
    with pytest.raises(UserError, match=r"image is 60x50 \(w x h\), training expects 112x112"):
        decode_rgb(png.tobytes(), "x.rec", "record key 4")


def test_image_folder_label_txt_with_and_without_final_newline(small_dataset, tmp_path):
    without = ImageFolderDataset(small_dataset, TrainTransform(flip_p=0.0))  # the sample has no final newline
    assert (small_dataset / "label.txt").read_bytes()[-1:] != b"\n"
    copy = tmp_path / "copy"
    shutil.copytree(small_dataset / "images", copy / "images")
    (copy / "label.txt").write_text((small_dataset / "label.txt").read_text() + "\n")
    with_newline = ImageFolderDataset(copy / "label.txt", TrainTransform(flip_p=0.0))
    assert len(without) == len(with_newline) == 10
    for i, (path, label) in enumerate(source(small_dataset)):
        for dataset in (without, with_newline):
            image, got = dataset[i]
            np.testing.assert_array_equal(image, expected_image(path, flip=False))
            assert got == label and got.dtype == np.int64


def test_image_folder_of_class_folders_labels_by_sorted_name(small_dataset, tmp_path):
    files = source(small_dataset)
    for name, picks in {"b": [0], "a": [1, 2], "c": [3]}.items():
        (tmp_path / name).mkdir()
        for i in picks:
            shutil.copy(files[i][0], tmp_path / name / files[i][0].name)
    dataset = ImageFolderDataset(tmp_path, TrainTransform(flip_p=0.0))
    assert [int(dataset[i][1]) for i in range(len(dataset))] == [0, 0, 1, 2]
    np.testing.assert_array_equal(dataset[3][0], expected_image(files[3][0], flip=False))


@pytest.mark.parametrize("text, problem", [
    ("a.jpg\t0\nb.jpg\t1.5\n", r"line 2: label '1\.5' is not an integer class id"),
    ("a.jpg 0\n", r"line 1: expected '<path>\\t<class id>'"),
    ("a.jpg\t0\t1\n", r"line 1: expected"),
    ("\n\n", "lists no images"),
])
def test_bad_label_txt_lines_are_named(tmp_path, text, problem):
    (tmp_path / "label.txt").write_text(text)
    with pytest.raises(UserError, match=r"label\.txt: " + problem):
        ImageFolderDataset(tmp_path)


def test_missing_listed_image_is_named_when_read(tmp_path):
    (tmp_path / "label.txt").write_text("images/gone.jpg\t0")
    dataset = ImageFolderDataset(tmp_path)
    with pytest.raises(UserError, match=r"images/gone\.jpg: cannot read listed image"):
        dataset[0]


def test_synthetic_dataset_is_one_fixed_image_with_label_one():
    dataset = SyntheticDataset(length=5, seed=3)
    rgb = np.random.default_rng(3).integers(0, 255, size=(112, 112, 3), dtype=np.uint8)
    expected = (rgb.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    expected = expected.transpose(2, 0, 1)
    assert len(dataset) == 5
    for i in (0, 4):
        image, label = dataset[i]
        np.testing.assert_array_equal(image, expected)
        assert label == 1 and label.dtype == np.int64
    assert expected.max() < 1.0  # values 0..254, as InsightFace draws them


def test_make_dataset_picks_from_what_the_folder_holds(small_dataset, small_dataset_rec, tmp_path):
    assert isinstance(make_dataset("synthetic"), SyntheticDataset)
    assert isinstance(make_dataset(small_dataset_rec), RecordDataset)
    assert isinstance(make_dataset(small_dataset), ImageFolderDataset)
    with pytest.raises(UserError, match="no such file or folder"):
        make_dataset(tmp_path / "absent")


def test_loader_batches_with_two_workers_cover_the_rank_shard(small_dataset_rec):
    loader = get_dataloader(small_dataset_rec, batch_size=2, rank=0, world_size=1, seed=5, num_workers=2)
    loader.batch_sampler.sampler.set_epoch(1)
    labels = []
    for images, batch_labels in loader:
        assert list(images.shape) == [2, 3, 112, 112] and str(images.dtype) == "paddle.float32"
        assert str(batch_labels.dtype) == "paddle.int64"
        labels += batch_labels.numpy().tolist()
    expected = DistributedSampler(10, 1, 0, seed=5)
    expected.set_epoch(1)
    assert labels == list(expected)  # the sample's labels equal their index
    del loader
    gc.collect()


def test_loader_worker_flips_follow_insightface_seeding(small_dataset, small_dataset_rec):
    """One persistent worker on rank 1 of 2: flips come from default_rng(seed + 0 + rank * 1), item after
    item, continuing into the next epoch; the order follows the sampler's epoch."""
    seed, rank = 9, 1
    loader = get_dataloader(small_dataset_rec, batch_size=2, rank=rank, world_size=2, seed=seed,
                            num_workers=1)
    files = source(small_dataset)
    flips = np.random.default_rng(worker_seed(seed, rank, 1, 0)).random(8) < 0.5
    for epoch in range(2):
        loader.batch_sampler.sampler.set_epoch(epoch)
        got = np.concatenate([images.numpy() for images, _ in loader])
        sampler = DistributedSampler(10, 2, rank, seed=seed)
        sampler.set_epoch(epoch)
        order = list(sampler)[:4]  # 5 per rank; drop_last keeps 2 batches of 2
        expected = np.stack([expected_image(files[i][0], bool(f)) for i, f in zip(order, flips[4 * epoch:])])
        np.testing.assert_array_equal(got, expected)
    del loader
    gc.collect()


class FailingDataset:
    """10 tiny samples; sample 6 raises a UserError, a bug, or kills its worker process."""

    def __init__(self, how: str):
        self.how = how

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int):
        if index == 6:
            if self.how == "user":
                raise UserError("pack/train.rec", "record key 7: cannot be decoded")
            if self.how == "bug":
                raise KeyError("a bug in the dataset")
            if self.how == "kill":
                import os
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
        return np.zeros(3, np.float32), np.int64(index)


def _drain(loader) -> None:
    for _ in range(3):  # a few epochs: persistent workers are reused
        for _batch in loader:
            pass


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_failing_sample_stops_the_loader_with_its_own_error(workers):
    import time

    from paddle.io import BatchSampler

    from train.data.loader import CheckedDataLoader, DataLoaderWorkerBug

    for how in ("user", "bug"):
        loader = CheckedDataLoader(FailingDataset(how), source="pack/train.rec", num_workers=workers,
                                   batch_sampler=BatchSampler(range(10), batch_size=2),
                                   persistent_workers=workers > 0)
        started = time.monotonic()
        if how == "user":
            with pytest.raises(UserError) as err:
                _drain(loader)
            assert str(err.value) == "pack/train.rec: record key 7: cannot be decoded"
        else:
            with pytest.raises(DataLoaderWorkerBug, match="KeyError: 'a bug in the dataset'"):
                _drain(loader)
        assert time.monotonic() - started < 20
        del loader
        gc.collect()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_worker_stops_the_loader_within_seconds(workers):
    import time

    from paddle.io import BatchSampler

    from train.data.loader import CheckedDataLoader

    loader = CheckedDataLoader(FailingDataset("kill"), source="pack/train.rec", num_workers=workers,
                               batch_sampler=BatchSampler(range(10), batch_size=2), persistent_workers=True)
    started = time.monotonic()
    with pytest.raises(UserError, match=r"^pack/train\.rec: a data-loader worker died \(killed by SIGKILL\)"):
        _drain(loader)
    assert time.monotonic() - started < 20
    del loader
    gc.collect()
