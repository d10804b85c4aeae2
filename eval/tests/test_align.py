"""Five-point alignment: the similarity transform against a linear least-squares solve and scikit-image,
the warp against a face pasted at a known transform, and the degenerate-landmark rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from eval.align import (
    ARCFACE_DST,
    CROP_SIZE,
    align_face,
    degenerate,
    degenerate_reason,
    similarity_transform,
)

skimage_transform = pytest.importorskip("skimage.transform")


def skimage_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """scikit-image's estimate as InsightFace calls it (``SimilarityTransform().estimate(src, dst)``)."""
    cls = skimage_transform.SimilarityTransform
    if hasattr(cls, "from_estimate"):  # scikit-image >= 0.26 deprecates estimate(); same computation
        return np.asarray(cls.from_estimate(src, dst).params)[:2]
    tform = cls()
    assert tform.estimate(src, dst)
    return tform.params[:2]


def least_squares_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 4-parameter model u = a x - b y + tx, v = b x + a y + ty solved with np.linalg.lstsq (float64).

    [[a, -b], [b, a]] has determinant a^2 + b^2 >= 0: a similarity, never a reflection."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    rows = []
    for (x, y) in src:
        rows.append([x, -y, 1.0, 0.0])
        rows.append([y, x, 0.0, 1.0])
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def random_faces(rng: np.random.Generator, count: int, noise: float = 3.0, spread: float = 400.0,
                 dtype=np.float32) -> np.ndarray:
    """``count`` landmark sets: the template rotated, scaled, shifted, with per-point noise."""
    faces = []
    for _ in range(count):
        angle = rng.uniform(-0.8, 0.8)
        scale = rng.uniform(0.4, 5.0)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = ARCFACE_DST.astype(np.float64) @ rot.T + rng.uniform(0, spread, 2)
        faces.append(points + rng.normal(0, noise, (5, 2)))
    return np.array(faces).astype(dtype)


def textured_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, (max(height // 12, 2), max(width // 12, 2), 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(field + rng.normal(0, 10, field.shape), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- the transform
def test_float64_transform_is_the_least_squares_similarity_and_scikit_images():
    rng = np.random.default_rng(0)
    dst64 = ARCFACE_DST.astype(np.float64)
    worst_lstsq = worst_skimage = 0.0
    for src in random_faces(rng, 300, dtype=np.float64):
        m = similarity_transform(src, dst64)
        assert m.dtype == np.float64 and m.shape == (2, 3)
        worst_lstsq = max(worst_lstsq, np.abs(m - least_squares_matrix(src, dst64)).max())
        worst_skimage = max(worst_skimage, np.abs(m - skimage_matrix(src, dst64)).max())
    assert worst_lstsq < 1e-9 and worst_skimage < 1e-9, (worst_lstsq, worst_skimage)


def test_float64_transform_between_arbitrary_point_sets():
    rng = np.random.default_rng(1)
    for n in (2, 3, 5, 9):
        src, dst = rng.normal(0, 50, (n, 2)), rng.normal(0, 50, (n, 2))
        np.testing.assert_allclose(similarity_transform(src, dst), least_squares_matrix(src, dst),
                                   rtol=0, atol=1e-9)


def test_exact_similarity_is_recovered():
    angle, scale, shift = 0.4, 2.5, np.array([130.0, -20.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = ARCFACE_DST.astype(np.float64)
    src = (dst - shift) @ np.linalg.inv(rot).T  # rot @ src + shift == dst
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m[:, 2], shift, rtol=0, atol=1e-10)


def test_mirrored_landmarks_give_a_rotation_not_a_reflection():
    rng = np.random.default_rng(2)
    dst = ARCFACE_DST.astype(np.float64)
    for src in random_faces(rng, 50, dtype=np.float64):
        mirrored = src * np.array([-1.0, 1.0])  # the best fit with a reflection would be exact-ish
        m = similarity_transform(mirrored, dst)
        assert m[0, 0] == pytest.approx(m[1, 1], abs=1e-12) and m[0, 1] == pytest.approx(-m[1, 0], abs=1e-12)
        np.testing.assert_allclose(m, least_squares_matrix(mirrored, dst), rtol=0, atol=1e-9)


def test_collinear_landmarks_give_the_least_squares_fit():
    dst = ARCFACE_DST.astype(np.float64)
    for direction in ([1.0, 0.0], [0.6, 0.8], [0.0, 1.0]):
        src = 100 + np.outer(np.array([-2.0, -1.0, 0.0, 1.0, 2.5]) * 17, direction)
        m = similarity_transform(src, dst)
        np.testing.assert_allclose(m, least_squares_matrix(src, dst), rtol=0, atol=1e-9)
        assert m[0, 0] == pytest.approx(m[1, 1], abs=1e-12)


def test_float32_transform_equals_scikit_images_bit_for_bit():
    """InsightFace estimates from float32 landmarks onto the float32 template: scikit-image then computes
    in float32, which shifts the matrix by up to ~4e-5 from the float64 solution (enough to move a few
    crop pixels by 1); computed in the same precision, the matrices are identical (measured: 1000/1000)."""
    rng = np.random.default_rng(3)
    faces = random_faces(rng, 1000)
    identical = sum(np.array_equal(similarity_transform(src), skimage_matrix(src, ARCFACE_DST)) for src in faces)
    assert identical == len(faces)
    far = max(np.abs(similarity_transform(src) - similarity_transform(src.astype(np.float64), ARCFACE_DST.astype(
        np.float64))).max() for src in faces[:200])
    assert 1e-7 < far < 1e-3  # the precision does matter, a little


def test_transform_refuses_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        similarity_transform(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="same shape"):
        similarity_transform(np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="no similarity transform"):
        similarity_transform(np.full((5, 2), 7.0))  # coincident
    bad = ARCFACE_DST.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="no similarity transform"):
        similarity_transform(bad)


# --------------------------------------------------------------------------- degenerate landmarks
def test_degenerate_flags_unusable_landmarks():
    rng = np.random.default_rng(4)
    good = random_faces(rng, 200)
    assert not degenerate(good).any()
    tiny = ARCFACE_DST * 0.01 + 50  # spread ~0.2 px
    small_but_fine = (ARCFACE_DST - ARCFACE_DST.mean(0)) * 0.1 + 50  # spread ~2 px
    huge = ARCFACE_DST * 1e4  # a face 10,000x the template: scale 1e-4
    overflow = ARCFACE_DST.astype(np.float64) * 1e300  # the variance overflows
    collinear = 100 + np.outer(np.arange(5.0) * 10, [0.6, 0.8])
    with_nan, with_inf = ARCFACE_DST.copy(), ARCFACE_DST.copy()
    with_nan[0, 0], with_inf[4, 1] = np.nan, np.inf
    cases = np.stack([tiny, small_but_fine, huge, overflow, collinear, with_nan, with_inf,
                      np.full((5, 2), 30.0), ARCFACE_DST])
    np.testing.assert_array_equal(degenerate(cases), [True, False, True, True, False, True, True, True, False])
    assert degenerate(cases.reshape(3, 3, 5, 2)).shape == (3, 3)
    assert degenerate(ARCFACE_DST).shape == ()
    assert "within 0.2" in degenerate_reason(tiny)
    assert "scale by 0.0001" in degenerate_reason(huge)
    assert "not a finite number" in degenerate_reason(with_nan)
    assert degenerate_reason(ARCFACE_DST) is None
    with pytest.raises(ValueError, match=r"\[\.\.\., 5, 2\]"):
        degenerate(np.zeros((4, 2)))


def test_degenerate_bound_is_at_one_pixel_of_spread():
    centred = ARCFACE_DST.astype(np.float64) - ARCFACE_DST.mean(0)
    rms = np.sqrt(np.square(centred).sum(1).mean())
    assert degenerate(centred / rms * 0.99 + 10) and not degenerate(centred / rms * 1.01 + 10)


# --------------------------------------------------------------------------- the warp
def test_align_recovers_a_face_pasted_at_a_known_similarity():
    rng = np.random.default_rng(5)
    pattern_rgb = textured_image(rng, CROP_SIZE, CROP_SIZE)
    pattern_rgb[..., 0] = np.clip(pattern_rgb[..., 0].astype(int) + 60, 0, 255)  # channels tell apart
    angle, scale = 0.35, 1.8
    paste = np.zeros((2, 3))
    paste[:, :2] = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    paste[:, 2] = [-40.0, 60.0]  # the crop's left part lands left of the image
    height, width = 300, 280
    image = cv2.warpAffine(np.ascontiguousarray(pattern_rgb[..., ::-1]), paste, (width, height),
                           flags=cv2.INTER_CUBIC, borderValue=0.0)  # BGR, image(paste p) = pattern(p)
    landmarks = (ARCFACE_DST.astype(np.float64) @ paste[:, :2].T + paste[:, 2]).astype(np.float32)

    np.testing.assert_allclose(similarity_transform(landmarks)[:, :2] @ paste[:, :2], np.eye(2), atol=1e-5)
    crop = align_face(image, landmarks)
    assert crop.dtype == np.uint8 and crop.shape == (CROP_SIZE, CROP_SIZE, 3)

    ys, xs = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE]
    src_x = paste[0, 0] * xs + paste[0, 1] * ys + paste[0, 2]
    src_y = paste[1, 0] * xs + paste[1, 1] * ys + paste[1, 2]
    outside = (src_x < -1.1) | (src_x > width + 0.1) | (src_y < -1.1) | (src_y > height + 0.1)
    inside = (src_x > 2) & (src_x < width - 3) & (src_y > 2) & (src_y < height - 3)
    inside &= (xs > 1) & (xs < CROP_SIZE - 2) & (ys > 1) & (ys < CROP_SIZE - 2)
    assert outside.sum() > 1000 and inside.sum() > 5000
    assert (crop[outside] == 0).all()
    error = np.abs(crop[inside].astype(int) - pattern_rgb[inside].astype(int))
    swapped = np.abs(crop[inside].astype(int) - pattern_rgb[..., ::-1][inside].astype(int))
    # two interpolations of a textured field: measured mean 1.6, max 11; the same crop shifted by one
    # pixel: mean 13.4, max 72
    assert error.mean() < 3.0 and error.max() < 25, (error.mean(), error.max())
    assert swapped.mean() > 20  # RGB, not BGR


def test_align_equals_insightfaces_steps_pixel_for_pixel():
    """InsightFace: scikit-image's matrix from float32 landmarks, warpAffine on BGR, then BGR->RGB."""
    rng = np.random.default_rng(6)
    differing = differing_float64 = 0
    for _ in range(60):
        height, width = rng.integers(150, 400, 2)
        image = textured_image(rng, int(height), int(width))
        landmarks = random_faces(rng, 1, noise=2.0, spread=float(min(height, width)) * 0.5)[0]
        expected = cv2.cvtColor(cv2.warpAffine(image, skimage_matrix(landmarks, ARCFACE_DST), (112, 112),
                                               borderValue=0.0), cv2.COLOR_BGR2RGB)
        differing += int((align_face(image, landmarks) != expected).sum())
        # control: the float64 least-squares matrix (off by ~1e-5) moves some values by 1
        matrix64 = similarity_transform(landmarks.astype(np.float64), ARCFACE_DST.astype(np.float64))
        crop64 = cv2.cvtColor(cv2.warpAffine(image, matrix64, (112, 112), borderValue=0.0), cv2.COLOR_BGR2RGB)
        differing_float64 += int((crop64 != expected).sum())
    assert differing == 0  # measured: identical (the matrices are bit-identical)
    assert differing_float64 > 20  # measured: 163 values over these 60 crops


def test_align_takes_landmarks_as_float32():
    rng = np.random.default_rng(7)
    image = textured_image(rng, 200, 200)
    landmarks = random_faces(rng, 1, spread=60.0, dtype=np.float64)[0]
    np.testing.assert_array_equal(align_face(image, landmarks), align_face(image, landmarks.astype(np.float32)))


def test_align_refuses_bad_inputs():
    image = np.zeros((120, 120, 3), np.uint8)
    face = ARCFACE_DST + 4
    for bad in (image.astype(np.float32), image[..., 0], np.zeros((120, 120, 4), np.uint8), [[1, 2, 3]]):
        with pytest.raises(ValueError, match="uint8 BGR image"):
            align_face(bad, face)
    with pytest.raises(ValueError, match="empty"):
        align_face(np.zeros((0, 10, 3), np.uint8), face)
    with pytest.raises(ValueError, match=r"shape \[5, 2\]"):
        align_face(image, face[:4])
    with pytest.raises(ValueError, match="degenerate landmarks: the five points lie within"):
        align_face(image, np.full((5, 2), 3.0))
    face[1, 0] = np.nan
    with pytest.raises(ValueError, match="degenerate landmarks: a coordinate is not a finite number"):
        align_face(image, face)
