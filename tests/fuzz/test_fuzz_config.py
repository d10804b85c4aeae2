"""Fuzz the training config parser: ``load_config`` on mutated config files and random text.

Property: a ``TrainConfig`` or a one-line ``UserError``; never another exception, and nothing in the
file runs (a config is parsed, never executed).
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz._harness import profile, read_or_user_error, seeded_or_random, target
from train.config import TrainConfig, load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "train" / "configs"
SEEDS = [p.read_bytes() for p in sorted(CONFIG_DIR.glob("*.py"))] + [
    b'extends = "base"\nbatch_size = 8\n', b"lr = 1e-1\nmargin_list = (1.0, 0.5, 0.0)\n",
    b"num_classes = 10\nnum_epoch = 1\nrec = '/nonexistent'\n"]
LINES = st.sampled_from([b"batch_size = 0", b"lr = -1", b"num_classes = 10**11", b"num_epoch = [[[[1]]]]",
                         b"margin_list = (", b"x = __import__('os').system('true')", b"extends = 'base'",
                         b"extends = 'fuzz'", b"embedding_size = 1e400", b"network = 'r' * 10**9",
                         b"fp16 = True", b"sample_rate = float('nan')", b"lr = 0.1 if True else 0",
                         b"\xff\xfe", b"\t  indented = 1", b"dali = None", b"[" * 200 + b"]" * 200])


@st.composite
def config_text(draw):
    base = draw(seeded_or_random(SEEDS, 256))
    extra = draw(st.lists(LINES, max_size=3))
    return base + b"\n" + b"\n".join(extra)


@target
@profile()
@given(data=config_text())
@example(data=b"(" * 100_000)
@example(data=b"a = " + b"[" * 100_000 + b"]" * 100_000)
@example(data=b"a = 1\n" * 50_000)
@example(data=b"\xef\xbb\xbfbatch_size = 8\n")
def test_fuzz_load_config(workdir, data):
    config = read_or_user_error(workdir / "fuzz.py", data, lambda path: load_config(str(path)), names_file=False)
    if config is None:
        return
    assert isinstance(config, TrainConfig)
