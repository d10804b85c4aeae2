"""Five-point face alignment onto the ArcFace template: a similarity transform and an affine warp.

``align_face`` produces the 112x112 crop InsightFace's IJB-B/C evaluation feeds its networks: the
least-squares similarity (rotation, uniform scale, translation; never a reflection) taking the five
detected landmarks onto ``ARCFACE_DST``, applied to the BGR image with ``cv2.warpAffine`` (bilinear,
constant border 0), then converted to RGB.
"""

from __future__ import annotations

import numpy as np

# Where the five landmarks (left eye, right eye, nose tip, left and right mouth corners) of a face sit in
# InsightFace's 112x112 ArcFace crop (x, y in pixels).
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], dtype=np.float32)
CROP_SIZE = 112

# degenerate(): the five points must spread at least this far (root-mean-square distance from their
# centroid, pixels) ...
MIN_SPREAD = 1.0
# ... and the fitted similarity must not shrink by more than this factor (a face ~1000x larger than the
# 112-pixel template: eyes about 35,000 pixels apart, beyond any image).
MIN_SCALE = 1e-3


def similarity_transform(src, dst=ARCFACE_DST) -> np.ndarray:
    """The least-squares similarity taking the points ``src`` [N, 2] onto ``dst`` [N, 2]: ``[2, 3]`` float64
    ``M`` with ``dst ~ M[:, :2] @ p + M[:, 2]``, ``M[:, :2] = s * R`` (s > 0, R a rotation).

    Umeyama's closed form ("Least-squares estimation of transformation parameters between two point
    patterns", PAMI 1991, eqs. 34-43): centroids, the cross-covariance of the centred points, its SVD;
    the rotation is U diag(1, d) V^T with d = sign(det(U) det(V)) (never a reflection, also when the
    points are collinear), the scale tr(diag(1, d) S) / var(src), the translation what maps the centroids.

    The arithmetic runs in the common precision of ``src`` and ``dst``: float32 when both are float32,
    which is how InsightFace's pipeline calls scikit-image's ``SimilarityTransform.estimate`` (float32
    landmarks onto the float32 template); for such inputs the matrix equals scikit-image's bit for bit
    (the tests check it on random faces). Float64 inputs give the float64 least-squares solution.

    Raises ``ValueError`` for shapes other than two matching [N >= 2, 2], and when no transform exists
    (coordinates not finite, all points of ``src`` coincident).
    """
    src = np.asarray(src)
    dst = np.asarray(dst)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"expected two point sets of the same shape [N >= 2, 2], got {list(src.shape)} "
                         f"and {list(dst.shape)}")
    dtype = np.result_type(src.dtype, dst.dtype, np.float32)
    src = src.astype(dtype, copy=False)
    dst = dst.astype(dtype, copy=False)
    with np.errstate(all="ignore"):
        mean_src = src.mean(axis=0)  # eqs. 34-35
        mean_dst = dst.mean(axis=0)
        centred_src = src - mean_src
        centred_dst = dst - mean_dst
        var_src = centred_src.var(axis=0).sum()  # eq. 36
        cov = centred_dst.T @ centred_src / len(src)  # eq. 38
        if not np.isfinite(cov).all():
            raise ValueError("the points give no similarity transform (coordinates not finite)")
        u, sigma, vt = np.linalg.svd(cov)
        d = np.ones(2)
        if _det2(u) * _det2(vt) < 0:  # eqs. 39 and 43: a rotation, not a reflection
            d[1] = -1.0
        rotation = (u * d) @ vt  # eq. 40: U diag(d) V^T (scaling columns by +-1 is exact)
        # eq. 42 as written, 1 / var first: for float32 inputs that reciprocal is rounded to float32, as in
        # scikit-image; (sigma @ d) / var_src moves the matrix by up to 3e-5 (measured on 1000 faces)
        scale = 1 / var_src * (sigma @ d)
        matrix = np.empty((2, 3), dtype=np.float64)
        matrix[:, 2] = mean_dst - scale * (rotation @ mean_src)  # eq. 41
        matrix[:, :2] = scale * rotation
    if not np.isfinite(matrix).all():
        raise ValueError("the points give no similarity transform (coordinates not finite or all equal)")
    return matrix


def _det2(m: np.ndarray) -> float:
    return float(m[0, 0]) * float(m[1, 1]) - float(m[0, 1]) * float(m[1, 0])


def _spread_and_scale(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per face: the RMS distance of the points from their centroid, and the scale of the least-squares
    similarity onto ``ARCFACE_DST`` (float64; NaN or inf where the coordinates are not usable)."""
    points = np.asarray(landmarks, dtype=np.float64)
    dst = ARCFACE_DST.astype(np.float64)
    dst = dst - dst.mean(axis=0)
    with np.errstate(all="ignore"):
        centred = points - points.mean(axis=-2, keepdims=True)
        var = np.square(centred).sum(axis=(-2, -1)) / len(dst)
        cov = np.einsum("ki,...kj->...ij", dst, centred) / len(dst)
        # the least-squares similarity's linear part is [[a, -b], [b, a]] / var (no SVD needed in 2-D)
        a = cov[..., 0, 0] + cov[..., 1, 1]
        b = cov[..., 1, 0] - cov[..., 0, 1]
        return np.sqrt(var), np.hypot(a, b) / var


def degenerate(landmarks) -> np.ndarray:
    """Which faces' five landmarks ``[..., 5, 2]`` cannot be aligned meaningfully: a bool array ``[...]``.

    A face is degenerate when
    - any coordinate is NaN or infinite;
    - its points lie within ``MIN_SPREAD`` = 1 pixel (root-mean-square distance from their centroid) of
      each other: the crop would blow a pixel or two up to the whole 112x112 face (the template's own
      spread is 23 pixels, so the scale would exceed ~23); coincident points give no transform;
    - the scale of the fitted similarity is not finite (coordinates so large that the arithmetic
      overflows) or below ``MIN_SCALE`` = 1e-3 (a face ~1000x the template's size, or points whose best
      rotation-only fit to the template is nothing: the crop would be a smear of one source pixel).

    Collinear points are not degenerate by themselves: two distinct points already determine a
    similarity, and ``similarity_transform`` returns its least-squares fit.
    """
    points = np.asarray(landmarks)
    if points.ndim < 2 or points.shape[-2:] != (5, 2):
        raise ValueError(f"expected landmarks of shape [..., 5, 2], got {list(points.shape)}")
    spread, scale = _spread_and_scale(points)
    finite = np.isfinite(points).all(axis=(-2, -1))
    return ~finite | ~(spread >= MIN_SPREAD) | ~np.isfinite(scale) | ~(scale >= MIN_SCALE)


def degenerate_reason(landmarks) -> str | None:
    """Why ``degenerate`` rejects one face's landmarks [5, 2] (a short phrase), or None if it does not."""
    points = np.asarray(landmarks, dtype=np.float64)
    if not degenerate(points):
        return None
    if not np.isfinite(points).all():
        return "a coordinate is not a finite number"
    spread, scale = _spread_and_scale(points)
    if not spread >= MIN_SPREAD:
        return f"the five points lie within {spread:.3g} pixels of each other (need at least {MIN_SPREAD:g})"
    if not np.isfinite(scale):
        return "coordinates too large for the similarity transform"
    return f"the similarity onto the ArcFace template would scale by {scale:.3g} (need at least {MIN_SCALE:g})"


def align_face(bgr: np.ndarray, landmarks) -> np.ndarray:
    """The aligned ``[112, 112, 3]`` uint8 RGB crop of a BGR uint8 image ``[H, W, 3]`` whose face has the
    five ``landmarks`` [5, 2] (x, y pixels; taken as float32, as InsightFace parses them).

    ``cv2.warpAffine(bgr, similarity_transform(landmarks), (112, 112), borderValue=0.0)`` (bilinear; what
    falls outside the image is black), then BGR -> RGB. ``ValueError`` for a wrong image dtype or shape,
    wrong landmark shape, or ``degenerate`` landmarks.
    """
    import cv2

    if not isinstance(bgr, np.ndarray) or bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        found = f"{bgr.dtype} {list(bgr.shape)}" if isinstance(bgr, np.ndarray) else type(bgr).__name__
        raise ValueError(f"expected a uint8 BGR image of shape [H, W, 3], got {found}")
    if bgr.shape[0] < 1 or bgr.shape[1] < 1:
        raise ValueError(f"the image is empty ({list(bgr.shape)})")
    points = np.asarray(landmarks, dtype=np.float32)
    if points.shape != (5, 2):
        raise ValueError(f"expected landmarks of shape [5, 2], got {list(points.shape)}")
    if degenerate(points):
        raise ValueError(f"degenerate landmarks: {degenerate_reason(points)}")
    matrix = similarity_transform(points, ARCFACE_DST)
    crop = cv2.warpAffine(bgr, matrix, (CROP_SIZE, CROP_SIZE), borderValue=0.0)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
