"""Reading InsightFace's IJB-B/C layout: a hand-written layout, every bad input named by file and line,
and a generated layout whose numbers round-trip exactly (vectorised and line-by-line parsers agree)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import eval.ijb_layout as ijb_layout
from converters.errors import UserError
from eval.ijb_layout import IjbLayout, layout_paths, read_layout, read_table

FACES = """1.jpg 1 69544
2.jpg 1 69544
3.jpg 2 7
4.jpg 3 8
"""
POINT_ROWS = [
    ("1.jpg", "46.060 62.026 87.785 60.323 68.851 77.656 52.162 99.861 89.009 98.121", "0.999193"),
    ("2.jpg", "120.5 140.25 160 139 141.75 165.125 125.0 190.5 157.5 189.75", "0.87"),
    ("3.jpg", "-3.5 10.0 30.25 9.5 12 30 0.5 52.75 28 51.5", "1"),
    ("4.jpg", "4.606e+01 6.2026E1 87.78500000000001 60.323 68.851 77.656 52.162 99.861 89.009 98.121",
     "0.99919318"),
]
PAIRS = """1 2 0
1 3 1
2 3 0
"""


def points_text(rows=POINT_ROWS) -> str:
    return "".join(f"{name} {numbers} {score}\n" for name, numbers, score in rows)


def write_layout(root: Path, faces=FACES, points=None, pairs=PAIRS, target: str = "IJBC",
                 images: tuple[str, ...] | None = None) -> Path:
    """The layout under ``root`` with these file contents (str or bytes); images are empty files."""
    points = points_text() if points is None else points
    paths = layout_paths(root, target)
    paths.face_tid_mid.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((paths.face_tid_mid, faces), (paths.name_5pts_score, points),
                       (paths.template_pair_label, pairs)):
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    paths.loose_crop.mkdir(exist_ok=True)
    for name in images if images is not None else ("1.jpg", "2.jpg", "3.jpg", "4.jpg"):
        (paths.loose_crop / name).parent.mkdir(parents=True, exist_ok=True)
        (paths.loose_crop / name).write_bytes(b"")
    return root


def expected_points(rows=POINT_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """What InsightFace makes of the landmarks file: float(x) into float32, faceness str -> float32."""
    landmarks = np.array([[float(x) for x in numbers.split()] for _, numbers, _ in rows], dtype=np.float32)
    faceness = np.array([score for _, _, score in rows]).astype(np.float32)
    return landmarks.reshape(-1, 5, 2), faceness


def check_small(layout: IjbLayout, root: Path, target: str = "IJBC") -> None:
    assert layout.root == root and layout.target == target
    assert layout.names.tolist() == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    np.testing.assert_array_equal(layout.templates, [1, 1, 2, 3])
    np.testing.assert_array_equal(layout.medias, [69544, 69544, 7, 8])
    landmarks, faceness = expected_points()
    np.testing.assert_array_equal(layout.landmarks.view(np.uint32), landmarks.view(np.uint32))
    np.testing.assert_array_equal(layout.faceness.view(np.uint32), faceness.view(np.uint32))
    np.testing.assert_array_equal(layout.p1, [1, 1, 2])
    np.testing.assert_array_equal(layout.p2, [2, 3, 3])
    np.testing.assert_array_equal(layout.labels, [0, 1, 0])
    for array, dtype in ((layout.templates, np.int64), (layout.medias, np.int64), (layout.p1, np.int64),
                         (layout.p2, np.int64), (layout.labels, np.int8), (layout.landmarks, np.float32),
                         (layout.faceness, np.float32)):
        assert array.dtype == dtype
    assert layout.landmarks.shape == (4, 5, 2) and layout.num_images == 4 and layout.num_pairs == 3
    assert layout.image_path(2) == root / "loose_crop" / "3.jpg"


# --------------------------------------------------------------------------- reading
def test_small_layout_is_read_exactly(tmp_path):
    check_small(read_layout(write_layout(tmp_path), "IJBC"), tmp_path)
    assert read_layout(tmp_path, "ijbc").target == "IJBC"
    assert expected_points()[0][2, 0, 0] == np.float32(-3.5)  # the fixture has a negative coordinate


def test_ijbb_uses_its_own_file_names(tmp_path):
    write_layout(tmp_path, target="IJBB")
    check_small(read_layout(tmp_path, "IJBB"), tmp_path, "IJBB")
    paths = layout_paths(tmp_path, "IJBB")
    assert [p.name for p in paths[:3]] == ["ijbb_face_tid_mid.txt", "ijbb_template_pair_label.txt",
                                           "ijbb_name_5pts_score.txt"]
    assert paths.loose_crop == tmp_path / "loose_crop"
    with pytest.raises(UserError, match=r"ijbc_face_tid_mid.txt: missing"):
        read_layout(tmp_path, "IJBC")


def crlf_and_blanks(text: str) -> str:
    """CRLF line ends, blanks at line ends, tabs and double spaces between fields, no final newline but
    blank lines after the last one."""
    lines = text.rstrip("\n").split("\n")
    return "\r\n".join(line.replace(" ", "  \t", 1) + " \t" for line in lines) + "\r\n \r\n\n"


def test_crlf_tabs_trailing_blanks_and_missing_final_newline_are_accepted(tmp_path):
    write_layout(tmp_path, faces=crlf_and_blanks(FACES), points=crlf_and_blanks(points_text()),
                 pairs=PAIRS.rstrip("\n"))
    check_small(read_layout(tmp_path, "IJBC"), tmp_path)


def test_images_in_subfolders_and_images_false(tmp_path):
    faces = FACES.replace("3.jpg", "a/3.jpg").replace("4.jpg", "a/b/4.jpg")
    points = points_text().replace("3.jpg", "a/3.jpg").replace("4.jpg", "a/b/4.jpg")
    write_layout(tmp_path, faces=faces, points=points, images=("1.jpg", "2.jpg", "a/3.jpg", "a/b/4.jpg"))
    layout = read_layout(tmp_path, "IJBC")
    assert layout.names.tolist() == ["1.jpg", "2.jpg", "a/3.jpg", "a/b/4.jpg"]
    assert layout.image_path(3).is_file()
    (tmp_path / "loose_crop" / "a" / "b" / "4.jpg").unlink()
    with pytest.raises(UserError) as err:
        read_layout(tmp_path, "IJBC")
    assert str(err.value) == (f"{tmp_path}/meta/ijbc_name_5pts_score.txt: line 4: image "
                              f"{tmp_path}/loose_crop/a/b/4.jpg not found")
    assert read_layout(tmp_path, "IJBC", images=False).num_images == 4  # images are not looked at
    (tmp_path / "loose_crop" / "a" / "b").rmdir()
    (tmp_path / "loose_crop" / "a" / "3.jpg").unlink()
    (tmp_path / "loose_crop" / "a" / "3.jpg").mkdir()  # a folder is not an image
    with pytest.raises(UserError, match=r"line 3: image .*/loose_crop/a/3.jpg not found"):
        read_layout(tmp_path, "IJBC")


def test_integers_too_long_for_the_vectorised_parser_are_read_exactly(tmp_path):
    big = 2**63 - 1  # 19 digits
    faces = FACES.replace("69544\n2.jpg", f"{big}\n2.jpg").replace("4.jpg 3 8", f"4.jpg {10**18} 8")
    pairs = PAIRS.replace(" 3 ", f" {10**18} ")
    write_layout(tmp_path, faces=faces, pairs=pairs)
    layout = read_layout(tmp_path, "IJBC")
    np.testing.assert_array_equal(layout.medias, [big, 69544, 7, 8])
    np.testing.assert_array_equal(layout.templates, [1, 1, 2, 10**18])
    np.testing.assert_array_equal(layout.p2, [2, 10**18, 10**18])


# --------------------------------------------------------------------------- every bad input
def replace_line(text: str, number: int, line: str | None) -> str:
    lines = text.split("\n")
    if line is None:
        del lines[number - 1]
    else:
        lines[number - 1] = line
    return "\n".join(lines)


def point_line(name="2.jpg", numbers="120.5 140.25 160 139 141.75 165.125 125.0 190.5 157.5 189.75",
               score="0.87") -> str:
    return f"{name} {numbers} {score}"


FACE_FILE, POINT_FILE, PAIR_FILE = "ijbc_face_tid_mid.txt", "ijbc_name_5pts_score.txt", "ijbc_template_pair_label.txt"
BAD_INPUTS = {
    # id: (file to change, line, new line or None to delete it, file named, expected problem)
    "face fields": ("faces", 3, "3.jpg 2", FACE_FILE, "line 3: expected 3 fields (image name tid mid), found 2"),
    "face extra field": ("faces", 1, "1.jpg 1 69544 5", FACE_FILE,
                         "line 1: expected 3 fields (image name tid mid), found 4"),
    "tid float": ("faces", 3, "3.jpg 2.0 7", FACE_FILE, "line 3: tid '2.0' is not a non-negative integer"),
    "mid negative": ("faces", 4, "4.jpg 3 -8", FACE_FILE, "line 4: mid '-8' is not a non-negative integer"),
    "tid too large": ("faces", 2, "2.jpg 99999999999999999999 5", FACE_FILE,
                      "line 2: tid 99999999999999999999 is too large (above 2**63 - 1)"),
    "face blank line": ("faces", 2, "  ", FACE_FILE, "line 2: empty line (expected image name tid mid)"),
    "pair fields": ("pairs", 2, "1 3", PAIR_FILE, "line 2: expected 3 fields (tid1 tid2 label), found 2"),
    "pair float tid": ("pairs", 3, "2 3.0 0", PAIR_FILE, "line 3: tid2 '3.0' is not a non-negative integer"),
    "pair exponent tid": ("pairs", 1, "1e0 2 0", PAIR_FILE, "line 1: tid1 '1e0' is not a non-negative integer"),
    "label text": ("pairs", 2, "1 3 yes", PAIR_FILE, "line 2: label 'yes' is not a non-negative integer"),
    "label 2": ("pairs", 2, "1 3 2", PAIR_FILE, "line 2: label 2 is not 0 (impostor) or 1 (genuine)"),
    "label float": ("pairs", 3, "2 3 1.0", PAIR_FILE, "line 3: label '1.0' is not a non-negative integer"),
    "unknown template tid1": ("pairs", 3, "7 3 0", PAIR_FILE,
                              f"line 3: tid1 7 is not the template of any image in {FACE_FILE}"),
    "unknown template tid2": ("pairs", 2, "1 4 1", PAIR_FILE,
                              f"line 2: tid2 4 is not the template of any image in {FACE_FILE}"),
    "point fields": ("points", 2, point_line(score=""), POINT_FILE,
                     "line 2: expected 12 fields (image name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 faceness), found 11"),
    "landmark text": ("points", 2, point_line(numbers="120.5 140.25 160 139 abc 165.125 125.0 190.5 157.5 "
                                              "189.75"), POINT_FILE, "line 2: x3 'abc' is not a number"),
    "landmark two dots": ("points", 3, point_line("3.jpg", numbers="1.2.3 10.0 30.25 9.5 12 30 0.5 52.75 28 51.5"),
                          POINT_FILE, "line 3: x1 '1.2.3' is not a number"),
    "landmark nan": ("points", 2, point_line(numbers="120.5 nan 160 139 141.75 165.125 125.0 190.5 157.5 189.75"),
                     POINT_FILE, "line 2: y1 nan is not a finite float32 number"),
    "landmark inf": ("points", 4, point_line("4.jpg", numbers="1 2 3 4 5 6 7 8 9 -inf"), POINT_FILE,
                     "line 4: y5 -inf is not a finite float32 number"),
    "landmark float32 overflow": ("points", 1, point_line("1.jpg", numbers="1 2 3 4e39 5 6 7 8 9 10"),
                                  POINT_FILE, "line 1: y2 4e+39 is not a finite float32 number"),
    "faceness nan": ("points", 3, point_line("3.jpg", score="NaN"), POINT_FILE,
                     "line 3: faceness nan is not a finite float32 number"),
    "faceness text": ("points", 3, point_line("3.jpg", score="high"), POINT_FILE,
                      "line 3: faceness 'high' is not a number"),
    "degenerate": ("points", 3, point_line("3.jpg", numbers="50 50 50 50 50 50 50 50 50 50"), POINT_FILE,
                   "line 3: degenerate landmarks: the five points lie within 0 pixels of each other "
                   "(need at least 1)"),
    "degenerate sub-pixel": ("points", 2, point_line(numbers="50 50 50.5 50 50.2 50.3 50 50.6 50.5 50.6"),
                             POINT_FILE, "line 2: degenerate landmarks: the five points lie within 0.35 pixels of each "
                             "other (need at least 1)"),
    "name differs": ("points", 2, point_line("9.jpg"), POINT_FILE,
                     f"line 2: image '9.jpg' differs from '2.jpg' on line 2 of {FACE_FILE} (both files list "
                     "the same images in the same order)"),
    "line missing": ("points", 4, None, POINT_FILE,
                     f"has 3 lines but {FACE_FILE} has 4 (both files list the same images in the same order)"),
    "name outside": ("both", 2, "../2.jpg", POINT_FILE, "line 2: image name '../2.jpg' is not a path inside "
                     "loose_crop"),
    "name absolute": ("both", 3, "/etc/3.jpg", POINT_FILE, "line 3: image name '/etc/3.jpg' is not a path "
                      "inside loose_crop"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_names_file_and_line(tmp_path, case):
    which, number, line, named, problem = BAD_INPUTS[case]
    texts = {"faces": FACES, "points": points_text(), "pairs": PAIRS}
    if which == "both":  # an image name, changed in both image files
        old = f"{number}.jpg"
        texts["faces"] = texts["faces"].replace(old, line)
        texts["points"] = texts["points"].replace(old, line)
    else:
        texts[which] = replace_line(texts[which], number, line)
    write_layout(tmp_path, **texts)
    with pytest.raises(UserError) as err:
        read_layout(tmp_path, "IJBC")
    assert err.value.path == str(tmp_path / "meta" / named)
    assert err.value.problem.startswith(problem), err.value.problem
    assert str(err.value) == f"{err.value.path}: {err.value.problem}"


@pytest.mark.parametrize("which", ["faces", "points", "pairs"])
@pytest.mark.parametrize("content", ["", " \n\r\n\t"], ids=["zero bytes", "only blanks"])
def test_empty_files(tmp_path, which, content):
    write_layout(tmp_path, **{which: content})
    with pytest.raises(UserError, match=r"\.txt: empty file \(expected lines of "):
        read_layout(tmp_path, "IJBC")


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(UserError) as err:
        read_layout(tmp_path / "nowhere", "IJBC")
    assert str(err.value) == f"{tmp_path}/nowhere: no such folder (the IJB data root)"
    write_layout(tmp_path)
    with pytest.raises(UserError, match="unknown IJB target 'IJBA' \\(known: IJBB, IJBC\\)"):
        read_layout(tmp_path, "IJBA")
    (tmp_path / "loose_crop" / "4.jpg").unlink()
    with pytest.raises(UserError) as err:
        read_layout(tmp_path, "IJBC")
    assert str(err.value) == (f"{tmp_path}/meta/{POINT_FILE}: line 4: image {tmp_path}/loose_crop/4.jpg "
                              "not found")
    for path in (tmp_path / "loose_crop").iterdir():
        path.unlink()
    (tmp_path / "loose_crop").rmdir()
    with pytest.raises(UserError) as err:
        read_layout(tmp_path, "IJBC")
    assert str(err.value) == f"{tmp_path}/loose_crop: missing: the folder of the face images (loose crops)"
    assert read_layout(tmp_path, "IJBC", images=False).num_pairs == 3
    for name in (FACE_FILE, POINT_FILE, PAIR_FILE):
        moved = tmp_path / "meta" / (name + ".away")
        (tmp_path / "meta" / name).rename(moved)
        with pytest.raises(UserError) as err:
            read_layout(tmp_path, "IJBC", images=False)
        assert str(err.value) == f"{tmp_path}/meta/{name}: missing (expected in the IJB data root's meta folder)"
        moved.rename(tmp_path / "meta" / name)


@pytest.mark.parametrize("name, problem", [
    (b"2\xff.jpg", "line 2: image name '2\ufffd.jpg' is not valid UTF-8"),
    (b"2\x00.jpg", "line 2: image name contains a NUL byte"),
    (b"x" * 1025, "line 2: image name is longer than 1024 bytes"),
])
def test_bad_image_names(tmp_path, name, problem):
    write_layout(tmp_path, faces=FACES.encode().replace(b"2.jpg", name))
    with pytest.raises(UserError) as err:
        read_layout(tmp_path, "IJBC")
    assert str(err.value) == f"{tmp_path}/meta/{FACE_FILE}: {problem}"


def test_utf8_names(tmp_path):
    faces, points = FACES.replace("2.jpg", "Zoë/2.jpg"), points_text().replace("2.jpg", "Zoë/2.jpg")
    write_layout(tmp_path, faces=faces, points=points, images=("1.jpg", "Zoë/2.jpg", "3.jpg", "4.jpg"))
    assert read_layout(tmp_path, "IJBC").names[1] == "Zoë/2.jpg"


# --------------------------------------------------------------------------- a generated layout
def generated_layout(root: Path, images: int = 3000, pairs: int = 50_000, seed: int = 0):
    """A layout with varied number formats (fixed, exponent, 17 significant digits, negative, no decimal
    point); returns what InsightFace's parsing makes of it."""
    rng = np.random.default_rng(seed)
    templates = np.sort(rng.integers(0, 400, images)) * 1_000_003 + 7  # up to 10 digits
    medias = rng.integers(0, 10**17, images)
    names = [f"img/{i}_{rng.integers(10**6)}.jpg" for i in range(images)]
    template = np.array([38.2946, 51.6963, 73.5318, 51.5014, 56.0252, 71.7366, 41.5493, 92.3655, 70.7299, 92.2041])
    coords = template * rng.uniform(0.5, 4, (images, 1)) + np.tile(rng.uniform(-100, 300, (images, 2)), 5)
    formats = ["%.3f", "%.1f", "%r", "%.4e", "%.0f", "%.15g", "%.6E"]
    texts = []
    for row in coords:
        texts.append([(formats[j] % v) if formats[j] != "%r" else repr(float(v))
                      for j, v in zip(rng.integers(0, len(formats), 10), row)])
    scores = [f"{s:.{int(d)}f}" for s, d in zip(rng.uniform(0, 1, images), rng.integers(1, 12, images))]
    p1 = rng.choice(np.unique(templates), pairs)
    p2 = rng.choice(np.unique(templates), pairs)
    labels = (rng.random(pairs) < 0.1).astype(int)
    meta = root / "meta"
    meta.mkdir(parents=True)
    (meta / FACE_FILE).write_text("".join(f"{n} {t} {m}\n" for n, t, m in zip(names, templates, medias)))
    (meta / POINT_FILE).write_text("".join(f"{n} {' '.join(t)} {s}\n" for n, t, s in zip(names, texts, scores)))
    (meta / PAIR_FILE).write_text("".join(f"{a} {b} {c}\n" for a, b, c in zip(p1, p2, labels)))
    expected = {
        "names": names, "templates": templates, "medias": medias, "p1": p1, "p2": p2, "labels": labels,
        "landmarks": np.array([[float(x) for x in t] for t in texts], dtype=np.float32).reshape(-1, 5, 2),
        "faceness": np.array(scores).astype(np.float32),
    }
    return expected


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    return root, generated_layout(root)


def assert_matches(layout: IjbLayout, expected: dict) -> None:
    assert layout.names.tolist() == expected["names"]
    for key in ("templates", "medias", "p1", "p2", "labels"):
        np.testing.assert_array_equal(getattr(layout, key), expected[key])
    for key in ("landmarks", "faceness"):  # bit for bit
        np.testing.assert_array_equal(getattr(layout, key).view(np.uint32), expected[key].view(np.uint32))


def test_generated_layout_round_trips_exactly(generated):
    root, expected = generated
    assert_matches(read_layout(root, "IJBC", images=False), expected)


def test_well_formed_files_never_fall_back_to_the_line_by_line_parser(generated, monkeypatch):
    """The vectorised parser reads all of it (the fallback is over 10x slower: minutes for IJB-C)."""
    root, expected = generated

    def refuse(*args):
        raise AssertionError("fell back to the line-by-line parser")

    monkeypatch.setattr(ijb_layout, "_parse_slow", refuse)
    assert_matches(read_layout(root, "IJBC", images=False), expected)
    monkeypatch.setattr(ijb_layout, "CHUNK_BYTES", 5000)
    assert_matches(read_layout(root, "IJBC", images=False), expected)


def test_small_chunks_and_the_line_by_line_parser_give_the_same_arrays(generated, monkeypatch):
    root, expected = generated
    monkeypatch.setattr(ijb_layout, "CHUNK_BYTES", 5000)  # ~40-400 lines a chunk, lines across boundaries
    assert_matches(read_layout(root, "IJBC", images=False), expected)
    monkeypatch.setattr(ijb_layout, "_parse_fast", lambda body, columns: None)
    assert_matches(read_layout(root, "IJBC", images=False), expected)


def test_error_lines_are_counted_across_chunks(tmp_path, monkeypatch):
    rows = [f"{k} {k + 1} {k % 2}" for k in range(1, 3001)]
    rows[2345] = "2346 2347 x"
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(rows) + "\n")
    for chunk in (64, 1000, ijb_layout.CHUNK_BYTES):
        monkeypatch.setattr(ijb_layout, "CHUNK_BYTES", chunk)
        with pytest.raises(UserError) as err:
            read_table(path, ijb_layout.PAIR_COLUMNS)
        assert str(err.value) == f"{path}: line 2346: label 'x' is not a non-negative integer"
    rows[2345] = "2346 2347 " + "1" * 100  # a line longer than a 64-byte chunk, then an error
    path.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(ijb_layout, "CHUNK_BYTES", 64)
    with pytest.raises(UserError, match=r"line 2346: label 1111111111.* is too large"):
        read_table(path, ijb_layout.PAIR_COLUMNS)
