"""Registration of a golden board to the board under test.

A defect is where the board differs from its golden board, so the two must first be aligned:
a scanner never puts two boards at exactly the same spot. DeepPCB's own "aligned" pairs are
off by 0.5 px in the median and by more than 2 px in about one pair in ten; a line's golden
board, scanned on another day, is off by more, and may be slightly rotated.

Method (OpenCV, no TensorFlow):

1. Both images are brought to the board's size (the golden board is cropped or padded with its
   border colour) and, for speed on large boards, downscaled so the longer side is at most
   ``max_side`` pixels.
2. Phase correlation (``cv2.phaseCorrelate``) finds the translation; it is robust to the
   few pixels that defects change and has no local minima.
3. ECC (``cv2.findTransformECC``, Euclidean motion) refines translation and rotation from
   there, on the downscaled images and then near the solution at full resolution. A board
   over :data:`REFINE_MAX_PIXELS` (ECC holds about 60 bytes a pixel: 4 GB on an 8000 x 8000
   board) is shrunk by a whole factor for the starts, and refined at full resolution on a few
   patches spread over it, a Euclidean motion fitted to their matches; where too few patches
   have copper, on the whole board shrunk to :data:`REFINE_MAX_PIXELS`.
4. The score is the normalised cross-correlation of the board and the warped golden board over
   the pixels both cover, on the grid of step 3 (the shrunk grid for a board over
   :data:`REFINE_MAX_PIXELS`). A golden board that is not the same design (another
   product, turned 90 degrees, the wrong side) scores far below :data:`MIN_SCORE` and is
   refused with :class:`AlignmentError` rather than compared: comparing it would paint the
   whole board as defects.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import cv2
import numpy as np

#: Normalised cross-correlation below which a golden board is taken as "not the same board".
#: Aligned boards of one design score 0.85-0.99 (binarised scans, JPEG noise and defects included);
#: different designs, or a board turned by 90 degrees, score below 0.3.
MIN_SCORE = 0.5
#: Share of the board that the aligned golden board must cover.
MIN_OVERLAP = 0.8
#: Gray-level standard deviation under which an image counts as bare (no copper to align
#: on): a 640 px DeepPCB tile that is all substrate but for one small defect has about 5-8.
FLAT_STD = 12.0
#: Score above which a start is taken as aligned and no further start is tried.
GOOD_SCORE = 0.9
#: Longest side at which the coarse estimate runs; larger boards are downscaled for it.
MAX_SIDE = 1024
#: Longest side of the quick screen that refuses a hopeless golden board before the other starts run
#: at full size (each of them is as costly as the first, and on a golden board that does not match
#: ECC never converges: it runs all its steps).
SCREEN_SIDE = 256
#: Best score, from the first start at full size and from every start on the screen, below
#: which a golden board is refused without trying the other starts at full size: well under
#: :data:`MIN_SCORE`, where unrelated designs score (aligned boards score 0.85-0.99).
SCREEN_SCORE = 0.3
#: Most pixels ECC over the whole board works on. A larger board is refined on full-resolution
#: patches instead (:func:`_refine_on_patches`), or, where too few of them have copper, at the
#: whole scale that has at most this many pixels (an 8000 x 8000 board at a quarter of its
#: side); either way the memory registration needs stays about 0.3 GB whatever the board's
#: size (README "Benchmarks").
REFINE_MAX_PIXELS = 4 * 2**20
#: Boards over :data:`REFINE_MAX_PIXELS` are refined at full resolution on a grid of this many
#: patches a side (those with copper to align on), each up to :data:`PATCH_SIDE` pixels.
PATCHES = 3
PATCH_SIDE = 512
#: A board too narrow for patches of this side (a quarter of its shorter side), or whose shorter
#: side would shrink below :data:`MIN_SHRUNK_SIDE` for the starts, a long strip, is refined on
#: the grid instead, as before.
MIN_PATCH_SIDE = 256
MIN_SHRUNK_SIDE = 64
#: Most a patch's match may sit off the motion fitted to all of them before it is dropped. ECC
#: matches a patch with copper edges every way to about a hundredth of a pixel; one whose edges
#: run mostly one way can slide along them by a fifth of a pixel, which over an 8000 px board
#: would tilt the fit by a tenth of a pixel at the corners.
PATCH_TOLERANCE_PX = 0.1
#: Largest rotation that registration will report as a match, in degrees.
MAX_ROTATION_DEG = 5.0


class AlignmentError(ValueError):
    """The golden board cannot be aligned to the board (not the same design or side)."""

    def __init__(self, message: str, score: float) -> None:
        super().__init__(message)
        self.score = score


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Where the golden board sits relative to the board.

    ``matrix`` (2x3, float32) maps board pixel coordinates to golden pixel coordinates:
    ``golden(matrix @ [x, y, 1]) ~ board(x, y)``. ``dx``, ``dy`` are its translation and
    ``rotation_deg`` its rotation (counter-clockwise positive, image axes).
    """

    dx: float
    dy: float
    rotation_deg: float
    score: float
    matrix: np.ndarray
    #: Share of the board's pixels that the aligned golden board covers.
    overlap: float = 1.0

    def as_dict(self) -> dict[str, float]:
        """The JSON form: translation and rotation rounded for people, and the score."""
        return {
            "dx": round(self.dx, 3),
            "dy": round(self.dy, 3),
            "rotation_deg": round(self.rotation_deg, 4),
            "score": round(self.score, 4),
        }


def _fit_to(golden: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crops or pads ``golden`` (top-left anchored) to ``shape``, padding with its median."""
    h, w = shape
    rh, rw = min(h, golden.shape[0]), min(w, golden.shape[1])
    if (rh, rw) == (h, w):
        # No padding: a view, not a copy (64 MB on an 8000 x 8000 board), and no median.
        return golden[:h, :w]
    out = np.full((h, w), np.median(golden), dtype=golden.dtype)
    out[:rh, :rw] = golden[:rh, :rw]
    return out


def _matrix(dx: float, dy: float, angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s, dx], [s, c, dy]], dtype=np.float32)


def _ecc(board: np.ndarray, golden: np.ndarray, warp: np.ndarray, iters: int) -> np.ndarray:
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iters, 1e-7)
    try:
        _, warp = cv2.findTransformECC(  # type: ignore[call-overload]
            board, golden, warp.copy(), cv2.MOTION_EUCLIDEAN, criteria, None, 5
        )
    except cv2.error:
        # ECC does not converge on unrelated images; keep the phase-correlation estimate and
        # let the score decide.
        pass
    return warp


def _score(board: np.ndarray, warped: np.ndarray, valid: np.ndarray) -> float:
    b = board[valid].astype(np.float64)
    r = warped[valid].astype(np.float64)
    if b.size < 64:
        return 0.0
    b -= b.mean()
    r -= r.mean()
    denom = math.sqrt(float((b * b).sum()) * float((r * r).sum()))
    return float((b * r).sum() / denom) if denom > 0 else 0.0


def estimate_alignment(
    board: np.ndarray, golden: np.ndarray, max_side: int = MAX_SIDE
) -> Alignment:
    """Estimates the Euclidean motion that aligns ``golden`` to ``board``.

    Args:
        board: ``(H, W)`` uint8 grayscale board under test.
        golden: ``(H', W')`` uint8 grayscale golden board, about the same size.
        max_side: Longest side for the coarse estimate.

    Returns:
        The alignment, with its score (it does not raise on a poor score: see
        :func:`register`).
    """
    return _estimate(board, golden, max_side)[0]


def _estimate(
    board: np.ndarray, golden: np.ndarray, max_side: int
) -> tuple[Alignment, np.ndarray]:
    """:func:`estimate_alignment`, and the golden board warped onto the board's grid with it
    (which scoring computed anyway, so :func:`register` need not warp it again)."""
    if board.ndim != 2 or golden.ndim != 2:
        raise ValueError(
            f"board and golden board must be 2-D grayscale. Received shapes {board.shape} and "
            f"{golden.shape}"
        )
    h, w = board.shape
    golden = _fit_to(golden, (h, w))
    if min(_std(board), _std(golden)) < FLAT_STD:
        # A (nearly) bare spot of a board has nothing to align on, and any alignment is as
        # good: keep the identity, and score how much of the two agree, so that a bare
        # golden board for a board full of copper (or the reverse) is still refused.
        differs = float(np.mean(cv2.absdiff(board, golden) > 100))
        identity = _matrix(0.0, 0.0, 0.0)
        return Alignment(0.0, 0.0, 0.0, max(0.0, 1.0 - 10.0 * differs), identity), golden
    scale = min(1.0, max_side / max(h, w))
    # The grid of the fine estimate and the score: the board's own up to REFINE_MAX_PIXELS.
    fine = min(1.0, math.sqrt(REFINE_MAX_PIXELS / (h * w)))
    if fine < 1.0 and min(h, w) // 4 >= MIN_PATCH_SIDE and (
        min(h, w) // math.ceil(max(h, w) / max_side) >= MIN_SHRUNK_SIDE
    ):
        return _estimate_large(board, golden, max_side)
    board_f, golden_f = _scaled(board, fine), _scaled(golden, fine)
    bs = _scaled(board_f, scale / fine).astype(np.float32)
    rs = _scaled(golden_f, scale / fine).astype(np.float32)
    window = cv2.createHanningWindow((bs.shape[1], bs.shape[0]), cv2.CV_32F)
    # phaseCorrelate(a, b) returns the shift s with b(x) ~ a(x - s); golden = board
    # shifted by s means board(x) ~ golden(x + s): the matrix's translation is s.
    (sx, sy), _ = cv2.phaseCorrelate(bs, rs, window)
    # Slight blur widens ECC's basin on binarised, sharp-edged scans.
    bs_b = cv2.GaussianBlur(bs, (5, 5), 1.0)
    rs_b = cv2.GaussianBlur(rs, (5, 5), 1.0)
    def starts() -> Iterator[np.ndarray]:
        return _starts(bs, rs, window, sx, sy)

    if scale < fine:
        b_fine = cv2.GaussianBlur(board_f.astype(np.float32), (5, 5), 1.0)
        r_fine = cv2.GaussianBlur(golden_f.astype(np.float32), (5, 5), 1.0)
    screened = _screen(bs_b, rs_b, starts(), SCREEN_SIDE)
    if screened[0] < SCREEN_SCORE:
        # Nothing aligns the two even roughly: the starts at full size would only confirm
        # the refusal, at many times the cost (ECC runs all its steps on a golden board that does
        # not match). The screen's best is the answer, scored on the screen's grid.
        score, warp, overlap = screened
        warp = warp.copy()
        warp[:, 2] /= scale
        warped, _ = _warp(golden, warp, (h, w), with_valid=False)
        angle = math.degrees(math.atan2(float(warp[1, 0]), float(warp[0, 0])))
        return Alignment(float(warp[0, 2]), float(warp[1, 2]), angle, score, warp,
                         overlap), warped
    best: tuple[float, np.ndarray, np.ndarray, float] | None = None
    for start in starts():
        warp = _ecc(bs_b, rs_b, start, 300)
        if scale < fine:
            warp[:, 2] *= fine / scale
            # More steps where the fine grid is not the board's own: they are cheap there.
            warp = _ecc(b_fine, r_fine, warp, 20 if fine == 1.0 else 50)
        warped, valid = _warp(golden_f, warp, board_f.shape)
        overlap = float(valid.mean())
        # A correlation over a small overlap means little: a board turned by 180 degrees
        # can match itself well over a quarter of its area. Such starts rank low.
        score = _score(board_f, warped, valid) * min(1.0, overlap / MIN_OVERLAP)
        if best is None or score > best[0]:
            best = (score, warp, warped, overlap)
        if best[0] > GOOD_SCORE:
            break
    assert best is not None
    score, warp, warped, overlap = best
    if fine < 1.0:
        warp = warp.copy()
        warp[:, 2] /= fine
        warped, _ = _warp(golden, warp, (h, w), with_valid=False)
    angle = math.degrees(math.atan2(float(warp[1, 0]), float(warp[0, 0])))
    alignment = Alignment(float(warp[0, 2]), float(warp[1, 2]), angle, score,
                          warp.astype(np.float32), overlap)
    return alignment, warped


def _starts(bs: np.ndarray, rs: np.ndarray, window: np.ndarray, sx: float,
            sy: float) -> Iterator[np.ndarray]:
    """The starts of ECC on the coarse grid (float32 ``bs``, ``rs``), in the order tried.

    Periodic layouts (rows of identical pads) can give phase correlation (``sx``, ``sy``) a
    wrong peak, and a rotation weakens its true one: the identity is the second start, and
    phase correlations of the golden board turned by a few angles come after, only while no start
    has aligned the two well. The best-scoring ECC result wins.
    """

    def rotated_start(angle: float) -> np.ndarray:
        hs, ws = bs.shape
        cx, cy = (ws - 1) / 2, (hs - 1) / 2
        a = math.radians(angle)
        c, sn = math.cos(a), math.sin(a)
        rot = np.array([[c, -sn, cx - c * cx + sn * cy], [sn, c, cy - sn * cx - c * cy]])
        turned = cv2.warpAffine(rs, rot, (ws, hs), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        # board(p) ~ turned(p + s) = golden(rot (p + s)).
        (tx, ty), _ = cv2.phaseCorrelate(bs, turned, window)
        start = rot.copy()
        start[:, 2] = rot[:, :2] @ np.array([tx, ty]) + rot[:, 2]
        return start.astype(np.float32)

    yield _matrix(sx, sy, 0.0)
    yield _matrix(0.0, 0.0, 0.0)
    for angle in (-1.5, 1.5, -3.0, 3.0):
        yield rotated_start(angle)


def _estimate_large(
    board: np.ndarray, golden: np.ndarray, max_side: int
) -> tuple[Alignment, np.ndarray]:
    """:func:`_estimate` for a board over :data:`REFINE_MAX_PIXELS` (``golden`` already fitted to
    its size): coarse to fine.

    The starts run on the board shrunk by a whole factor (about ``max_side`` a side; an area
    resize at a whole ratio is a plain block mean, several times faster than at any other),
    and the best start is scored there. The winner is then refined at full resolution on a few
    patches spread over the board (:func:`_refine_on_patches`), which costs a fraction of ECC
    over a whole downscaled grid and is more accurate (full-resolution pixels); where too few
    patches have copper to align on, or they disagree, it is refined on the grid of
    :data:`REFINE_MAX_PIXELS` as smaller boards are.
    """
    h, w = board.shape
    k = math.ceil(max(h, w) / max_side)
    bs_u8, rs_u8 = _shrunk(board, k), _shrunk(golden, k)
    bs, rs = bs_u8.astype(np.float32), rs_u8.astype(np.float32)
    window = cv2.createHanningWindow((bs.shape[1], bs.shape[0]), cv2.CV_32F)
    (sx, sy), _ = cv2.phaseCorrelate(bs, rs, window)
    bs_b = cv2.GaussianBlur(bs, (5, 5), 1.0)
    rs_b = cv2.GaussianBlur(rs, (5, 5), 1.0)
    screened = _screen(bs_b, rs_b, _starts(bs, rs, window, sx, sy), SCREEN_SIDE)
    if screened[0] < SCREEN_SCORE:
        # As in _estimate: nothing aligns the two even roughly; the screen's best answers.
        score, warp, overlap = screened
        warp = _on_grid(warp, k, to_full=True)
        warped, _ = _warp(golden, warp, (h, w), with_valid=False)
        angle = math.degrees(math.atan2(float(warp[1, 0]), float(warp[0, 0])))
        return Alignment(float(warp[0, 2]), float(warp[1, 2]), angle, score, warp,
                         overlap), warped
    best: tuple[float, np.ndarray] | None = None
    for start in _starts(bs, rs, window, sx, sy):
        warp = _ecc(bs_b, rs_b, start, 300)
        score, _ = _coarse_score(bs_u8, rs_u8, warp)
        if best is None or score > best[0]:
            best = (score, warp)
        if best[0] > GOOD_SCORE:
            break
    assert best is not None
    warp = _on_grid(best[1], k, to_full=True)
    refined = _refine_on_patches(board, golden, warp)
    warp = refined if refined is not None else _refine_on_grid(board, golden, warp)
    # The score and overlap of the warp reported, on the coarse grid.
    score, overlap = _coarse_score(bs_u8, rs_u8, _on_grid(warp, k, to_full=False))
    warped, _ = _warp(golden, warp, (h, w), with_valid=False)
    angle = math.degrees(math.atan2(float(warp[1, 0]), float(warp[0, 0])))
    return Alignment(float(warp[0, 2]), float(warp[1, 2]), angle, score, warp, overlap), warped


def _coarse_score(board: np.ndarray, golden: np.ndarray,
                  warp: np.ndarray) -> tuple[float, float]:
    """``(score, overlap)`` of ``warp`` on one grid: the correlation, ranked down over a small
    overlap (a board turned by 180 degrees can match itself well over a quarter of its area)."""
    warped, valid = _warp(golden, warp, board.shape)
    overlap = float(valid.mean())
    return _score(board, warped, valid) * min(1.0, overlap / MIN_OVERLAP), overlap


def _shrunk(image: np.ndarray, k: int) -> np.ndarray:
    """``image`` shrunk by the whole factor ``k`` (block means; the last rows and columns that
    do not fill a block are left out). Pixel ``i`` of the result is the mean of pixels
    ``k i .. k i + k - 1``: its centre is at ``k i + (k - 1) / 2`` on the full grid."""
    h, w = image.shape
    return cv2.resize(image[: h // k * k, : w // k * k], (w // k, h // k),
                      interpolation=cv2.INTER_AREA)


def _on_grid(warp: np.ndarray, k: int, *, to_full: bool) -> np.ndarray:
    """``warp`` moved between the full grid and the grid of :func:`_shrunk` by ``k``.

    A full-grid point ``q = k q' + c`` (``c = (k - 1) / 2``) maps to ``A q + t``, which is
    ``k (A q' + t') + c`` with ``t' = (t + (A - I) c) / k``.
    """
    out = warp.astype(np.float32)
    c = (k - 1) / 2
    offset = (out[:, :2] - np.eye(2, dtype=np.float32)) @ np.array([c, c], dtype=np.float32)
    if to_full:
        out[:, 2] = k * out[:, 2] - offset
    else:
        out[:, 2] = (out[:, 2] + offset) / k
    return out


def _refine_on_patches(board: np.ndarray, golden: np.ndarray,
                       warp: np.ndarray) -> np.ndarray | None:
    """Refines ``warp`` (full grid, within a few pixels) on full-resolution patches.

    On each of :data:`PATCHES` x :data:`PATCHES` patches spread over the board that has copper
    to align on, the golden board is warped onto the patch by ``warp`` and ECC finds the residual
    translation there; a Euclidean motion is fitted to the patches' centres and their matches,
    dropping the worst patch while any is off the fit by more than :data:`PATCH_TOLERANCE_PX`
    (a defect or a periodic layout can mislead one patch).

    Returns:
        The refined warp, or ``None`` when fewer than 3 patches agree.
    """
    h, w = board.shape
    side = min(PATCH_SIDE, min(h, w) // 4)
    a, t = warp[:, :2].astype(np.float64), warp[:, 2].astype(np.float64)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-7)
    centre = (side - 1) / 2
    board_pts: list[np.ndarray] = []
    golden_pts: list[np.ndarray] = []
    for fy in (np.arange(PATCHES) + 0.5) / PATCHES:
        for fx in (np.arange(PATCHES) + 0.5) / PATCHES:
            y0 = min(h - side, max(0, round(fy * h - side / 2)))
            x0 = min(w - side, max(0, round(fx * w - side / 2)))
            patch = board[y0 : y0 + side, x0 : x0 + side]
            if _std(patch) < FLAT_STD:
                continue  # bare: nothing to align on
            origin = np.array([x0, y0], dtype=np.float64)
            corners = (a @ (origin + np.array([[0, 0], [side, 0], [0, side], [side, side]])).T
                       ).T + t
            if corners.min() < 0 or (corners.max(axis=0) > golden.shape[1::-1]).any():
                continue  # partly off the golden board: its border would pull ECC
            m = np.hstack([a, (a @ origin + t)[:, None]]).astype(np.float32)
            seen = cv2.warpAffine(golden, m, (side, side),
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE)
            try:
                _, shift = cv2.findTransformECC(  # type: ignore[call-overload]
                    cv2.GaussianBlur(patch.astype(np.float32), (5, 5), 1.0),
                    cv2.GaussianBlur(seen.astype(np.float32), (5, 5), 1.0),
                    np.eye(2, 3, dtype=np.float32), cv2.MOTION_TRANSLATION, criteria, None, 5,
                )
            except cv2.error:
                continue  # no convergence on this patch
            # ECC: seen(p + u) ~ patch(p), and seen(p) = golden(A (p + origin) + t).
            q = origin + centre
            board_pts.append(q)
            golden_pts.append(a @ (q + shift[:, 2].astype(np.float64)) + t)
    q_all, r_all = np.array(board_pts), np.array(golden_pts)
    while len(q_all) >= 3:
        fitted = _fit_euclidean(q_all, r_all)
        off = np.linalg.norm(q_all @ fitted[:, :2].T + fitted[:, 2] - r_all, axis=1)
        if off.max() <= PATCH_TOLERANCE_PX:
            return fitted.astype(np.float32)
        keep = np.arange(len(off)) != int(np.argmax(off))
        q_all, r_all = q_all[keep], r_all[keep]
    return None


def _fit_euclidean(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The rotation and translation ``[R | t]`` (2x3) that best map points ``q`` to ``r``
    (least squares; ``(n, 2)`` each)."""
    qm, rm = q.mean(axis=0), r.mean(axis=0)
    qc, rc = q - qm, r - rm
    angle = math.atan2(float((qc[:, 0] * rc[:, 1] - qc[:, 1] * rc[:, 0]).sum()),
                       float((qc * rc).sum()))
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return np.hstack([rot, (rm - rot @ qm)[:, None]])


def _refine_on_grid(board: np.ndarray, golden: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """Refines ``warp`` (full grid) by ECC over both images shrunk to at most
    :data:`REFINE_MAX_PIXELS`: slower than the patches, but needs no patch to have copper."""
    h, w = board.shape
    k = math.ceil(math.sqrt(h * w / REFINE_MAX_PIXELS))
    b_fine = cv2.GaussianBlur(_shrunk(board, k).astype(np.float32), (5, 5), 1.0)
    r_fine = cv2.GaussianBlur(_shrunk(golden, k).astype(np.float32), (5, 5), 1.0)
    refined = _ecc(b_fine, r_fine, _on_grid(warp, k, to_full=False), 50)
    return _on_grid(refined, k, to_full=True)


def _screen(board: np.ndarray, golden: np.ndarray, starts: Iterator[np.ndarray],
            side: int) -> tuple[float, np.ndarray, float]:
    """A quick look at both images downscaled to ``side`` pixels: ECC from each start in turn,
    until one scores :data:`SCREEN_SCORE` (``board`` and ``golden`` are the coarse
    estimate's float32 images; the starts' translations are on their grid).

    Returns:
        ``(score, warp on the coarse grid, overlap)`` of the best start.
    """
    factor = min(1.0, side / max(board.shape))
    small_b, small_r = _scaled(board, factor), _scaled(golden, factor)
    best: tuple[float, np.ndarray, float] | None = None
    for start in starts:
        warp = start.copy()
        warp[:, 2] *= factor
        warp = _ecc(small_b, small_r, warp, 100)
        warped, valid = _warp(small_r, warp, small_b.shape)
        overlap = float(valid.mean())
        score = _score(small_b, warped, valid) * min(1.0, overlap / MIN_OVERLAP)
        if best is None or score > best[0]:
            found = warp.copy()
            found[:, 2] /= factor
            best = (score, found, overlap)
        if score >= SCREEN_SCORE:
            break
    assert best is not None
    return best


def _std(image: np.ndarray) -> float:
    # cv2 in one pass: numpy's std would hold two float64 copies (1 GB on 8000 x 8000).
    return float(cv2.meanStdDev(image)[1][0, 0])


def _scaled(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` resized by ``factor`` (area averaging), or itself at 1."""
    if factor >= 1.0:
        return image
    h, w = image.shape
    size = (max(8, round(w * factor)), max(8, round(h * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _warp(
    golden: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...], with_valid: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(golden, matrix, (w, h), flags=flags,
                            borderMode=cv2.BORDER_REPLICATE)
    if not with_valid:
        return warped, np.empty((0, 0), dtype=bool)
    ones = np.ones(golden.shape, dtype=np.uint8)
    valid = cv2.warpAffine(ones, matrix, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return warped, valid


def warp_golden(golden: np.ndarray, alignment: Alignment,
                   shape: tuple[int, int]) -> np.ndarray:
    """Warps ``golden`` onto the board's pixel grid (``shape`` = the board's ``(H, W)``).

    Pixels that the golden board does not cover are filled from its nearest border, so they
    read as "no change" rather than as a defect.
    """
    golden = _fit_to(golden, shape)
    warped, _ = _warp(golden, alignment.matrix, shape)
    return warped


def register(
    board: np.ndarray,
    golden: np.ndarray,
    min_score: float = MIN_SCORE,
    max_rotation_deg: float = MAX_ROTATION_DEG,
) -> tuple[np.ndarray, Alignment]:
    """Aligns ``golden`` to ``board`` and returns it on the board's grid.

    Args:
        board: ``(H, W)`` uint8 board under test.
        golden: ``(H', W')`` uint8 golden board of the same design.
        min_score: Smallest accepted normalised cross-correlation.
        max_rotation_deg: Largest accepted rotation.

    Returns:
        ``(warped_golden (H, W) uint8, alignment)``.

    Raises:
        AlignmentError: When the two score below ``min_score`` or needs a larger rotation.
    """
    h, w = board.shape[:2]
    rh, rw = golden.shape[:2]
    # Overlap counts against the larger of the two: a small board inside a large golden board
    # (or the reverse) covers a corner of the design, however well that corner matches.
    larger = max(h * w, rh * rw)
    at_best = min(h, rh) * min(w, rw)
    if at_best / larger < MIN_OVERLAP:
        raise AlignmentError(
            f"the board is {w}x{h} px and the golden board {rw}x{rh} px: aligned at best, they "
            f"share {at_best / larger:.0%} of the larger (expected >= {MIN_OVERLAP:.0%}): "
            "another design or a different crop of the board",
            0.0,
        )
    alignment, warped = _estimate(board, golden, MAX_SIDE)
    # The share of the larger image that the aligned images have in common (the estimate's
    # overlap counts a smaller golden board's padding as covered: bounded by the sizes).
    overlap = min(alignment.overlap * h * w, at_best) / larger
    if alignment.score < min_score:
        raise AlignmentError(
            f"the golden board does not match the board (alignment score {alignment.score:.3f}, "
            f"expected >= {min_score}): another design, rotated, or the wrong side",
            alignment.score,
        )
    if overlap < MIN_OVERLAP:
        raise AlignmentError(
            f"the board and the golden board share only {overlap:.0%} of the larger once aligned "
            f"(shifted by {alignment.dx:.1f}, {alignment.dy:.1f} px; expected >= "
            f"{MIN_OVERLAP:.0%}): another design or a different crop of the board",
            alignment.score,
        )
    if abs(alignment.rotation_deg) > max_rotation_deg:
        raise AlignmentError(
            f"the golden board is rotated by {alignment.rotation_deg:.2f} degrees relative to the "
            f"board (expected at most {max_rotation_deg})",
            alignment.score,
        )
    return warped, alignment
