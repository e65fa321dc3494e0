"""Per-sample augmentation parameters drawn from (seed, epoch, index), shared by the DALI and FFCV backends.

The PIL backend seeds torch's RNG per sample and lets torchvision draw. The DALI and FFCV backends
cannot seed their built-in random operators per sample, so they draw the parameters themselves:
`sample_seed(seed, epoch, index)` seeds a Mersenne Twister (numpy's `RandomState` in Python,
`np.random.seed` inside numba, which is the same generator and seeding), `N_UNIFORMS` uniforms are drawn
and the functions below turn them into a crop window, a flip, one 3x3 warp (rotation then perspective,
output -> input pixel coordinates) and a cutout rectangle. The distributions are torchvision's
(RandomResizedCrop, RandomHorizontalFlip, RandomRotation, RandomPerspective, RandomErasing).

Every function here is plain Python on numpy scalars and arrays (no BLAS, no numpy RNG objects), so
the FFCV operations compile the very same code with numba (`jitted()`): both backends give the same
parameters for the same sample, and a resumed run the same as an uninterrupted one.
"""

from __future__ import annotations

import functools
import math

import numpy as np

N_UNIFORMS = 64
# slots of the uniform vector
_CROP, _CROP_POS = 0, 20  # 10 attempts x (area, log-ratio); then row, column
_FLIP, _ROT_P, _ROT_ANGLE, _PERSP_P, _PERSP = 22, 23, 24, 25, 26  # perspective: 8 corner offsets
_CUT_P, _CUT, _CUT_POS = 34, 35, 55  # 10 attempts x (area, log-ratio); then row, column
_M32 = 1 << 32


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for (seed, epoch, index); integer arithmetic identical in Python and numba."""
    s = (seed % _M32) * 1_000_003 % _M32
    s = (s + epoch % _M32) * 10_000_019 % _M32
    return (s + index % _M32 + 0x9E3779B9) % _M32


def uniforms(seed: int, epoch: int, index: int) -> np.ndarray:
    """The sample's uniforms in [0, 1) (Python side; numba code draws them with np.random after np.random.seed)."""
    return np.random.RandomState(sample_seed(seed, epoch, index)).random_sample(N_UNIFORMS)


def _randint(u: float, n: int) -> int:
    """An integer in [0, n) from a uniform."""
    return min(int(math.floor(u * n)), n - 1)


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def crop_window(u, height: int, width: int, scale_lo: float, scale_hi: float, ratio_lo: float, ratio_hi: float):
    """torchvision RandomResizedCrop.get_params: (top, left, h, w) in source pixels."""
    area = height * width
    log_lo, log_hi = math.log(ratio_lo), math.log(ratio_hi)
    for k in range(10):
        target = area * (scale_lo + (scale_hi - scale_lo) * u[_CROP + 2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[_CROP + 2 * k + 1])
        w = _round(math.sqrt(target * aspect))
        h = _round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return _randint(u[_CROP_POS], height - h + 1), _randint(u[_CROP_POS + 1], width - w + 1), h, w
    in_ratio = width / height
    if in_ratio < ratio_lo:
        w, h = width, _round(width / ratio_lo)
    elif in_ratio > ratio_hi:
        h, w = height, _round(height * ratio_hi)
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_window(height: int, width: int, eval_resize: float):
    """Eval: the source window that `resize short side to size*eval_resize, center crop size` shows."""
    side = max(1, _round(min(height, width) / eval_resize))
    return (height - side) // 2, (width - side) // 2, side, side


def flips(u, p: float) -> bool:
    return u[_FLIP] < p


def _solve(a, b):
    """Gaussian elimination with partial pivoting for the 8x8 homography system (numba-friendly)."""
    n = b.shape[0]
    a, b = a.copy(), b.copy()
    for c in range(n):
        piv = c
        for r in range(c + 1, n):
            if abs(a[r, c]) > abs(a[piv, c]):
                piv = r
        if piv != c:
            for k in range(n):
                a[c, k], a[piv, k] = a[piv, k], a[c, k]
            b[c], b[piv] = b[piv], b[c]
        for r in range(c + 1, n):
            f = a[r, c] / a[c, c]
            for k in range(c, n):
                a[r, k] -= f * a[c, k]
            b[r] -= f * b[c]
    x = np.zeros(n)
    for r in range(n - 1, -1, -1):
        s = b[r]
        for k in range(r + 1, n):
            s -= a[r, k] * x[k]
        x[r] = s / a[r, r]
    return x


def _homography(src, dst):
    """3x3 H with H @ (src_i, 1) ~ (dst_i, 1) for four point pairs (rows of 4x2 arrays)."""
    a, b = np.zeros((8, 8)), np.zeros(8)
    for i in range(4):
        x, y, X, Y = src[i, 0], src[i, 1], dst[i, 0], dst[i, 1]
        a[2 * i, 0], a[2 * i, 1], a[2 * i, 2], a[2 * i, 6], a[2 * i, 7] = x, y, 1.0, -x * X, -y * X
        a[2 * i + 1, 3], a[2 * i + 1, 4], a[2 * i + 1, 5], a[2 * i + 1, 6], a[2 * i + 1, 7] = x, y, 1.0, -x * Y, -y * Y
        b[2 * i], b[2 * i + 1] = X, Y
    h = _solve(a, b)
    m = np.ones((3, 3))
    for k in range(8):
        m[k // 3, k % 3] = h[k]
    return m


def _matmul3(a, b):
    c = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            for k in range(3):
                c[i, j] += a[i, k] * b[k, j]
    return c


def warp_matrix(u, size: int, rot_p: float, degrees: float, persp_p: float, distortion: float):
    """(matrix, any): the output -> input map (pixel centres at integer coordinates) of a rotation about the
    centre followed by a perspective distortion, at the output size; `any` is False when neither applies."""
    m = np.eye(3)
    rotate = u[_ROT_P] < rot_p and degrees > 0
    distort = u[_PERSP_P] < persp_p and distortion > 0
    if distort:  # torchvision RandomPerspective: content at the corners moves to the end points
        half = size // 2
        d = int(distortion * half)
        last = float(size - 1)
        start = np.array([[0.0, 0.0], [last, 0.0], [last, last], [0.0, last]])
        off = np.zeros(8)
        for k in range(8):
            off[k] = _randint(u[_PERSP + k], d + 1)
        end = np.array([[off[0], off[1]], [last - off[2], off[3]], [last - off[4], last - off[5]],
                        [off[6], last - off[7]]])
        m = _homography(end, start)  # output (end) -> input (start)
    if rotate:
        theta = math.radians(-degrees + 2 * degrees * u[_ROT_ANGLE])
        c, s, mid = math.cos(theta), math.sin(theta), (size - 1) / 2
        r = np.array([[c, -s, mid - c * mid + s * mid], [s, c, mid - s * mid - c * mid], [0.0, 0.0, 1.0]])
        m = _matmul3(r, m)  # output -> (perspective inverse) -> rotated image -> (rotation inverse) -> input
    return m, rotate or distort


def cutout_box(u, size: int, p: float, scale_lo: float, scale_hi: float):
    """torchvision RandomErasing.get_params on a size x size image: (top, left, h, w), h = w = 0 for none."""
    if not u[_CUT_P] < p:
        return 0, 0, 0, 0
    area = size * size
    log_lo, log_hi = math.log(0.3), math.log(3.3)
    for k in range(10):
        target = area * (scale_lo + (scale_hi - scale_lo) * u[_CUT + 2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[_CUT + 2 * k + 1])
        h = _round(math.sqrt(target * aspect))
        w = _round(math.sqrt(target / aspect))
        if 0 < h < size and 0 < w < size:
            return _randint(u[_CUT_POS], size - h + 1), _randint(u[_CUT_POS + 1], size - w + 1), h, w
    return 0, 0, 0, 0


_NUMBA_FUNCTIONS = ("sample_seed", "_randint", "_round", "crop_window", "center_window", "flips", "_solve",
                    "_homography", "_matmul3", "warp_matrix", "cutout_box")


@functools.lru_cache(maxsize=None)
def jitted() -> dict:
    """numba-compiled copies of this module's functions (by name), calling each other's compiled versions;
    one set per process, so every FFCV loader reuses the compiled code."""
    import types

    from numba import njit

    space = dict(globals())
    for name in _NUMBA_FUNCTIONS:
        f = globals()[name]
        space[name] = njit(cache=False)(types.FunctionType(f.__code__, space, name, f.__defaults__))
    return {name: space[name] for name in _NUMBA_FUNCTIONS}
