"""Cross-correlation shift measurement with sub-pixel peak interpolation.

Convention: `find_shifts(ref, img)` returns the shift (x, y) in pixels such that
img(p) ~ ref(p - shift), i.e. the content of `ref` moved by +shift appears in `img`.
"""

from __future__ import annotations

import numpy as np
import scipy.fft


def _parabolic(cm: np.ndarray, c0: np.ndarray, cp: np.ndarray) -> np.ndarray:
    """Vertex offset (-0.5..0.5) of the parabola through (-1, cm), (0, c0), (1, cp)."""
    denom = cm - 2.0 * c0 + cp
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(denom < 0, 0.5 * (cm - cp) / denom, 0.0)
    return np.clip(off, -0.5, 0.5)


def find_shifts(ref: np.ndarray, img: np.ndarray, *, max_shift: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shifts (..., 2) as (x, y) px with img(p) ~ ref(p - shift), and normalised peak scores (...,).

    `ref` and `img` are (..., y, x) stacks of equal shape (windowed by the caller; correlation is
    circular). The peak is searched within `max_shift` px (default: a quarter of the image) and
    refined by separable parabolic interpolation. The score is the peak correlation divided by the
    product of the image norms (1 = identical up to the shift).
    """
    ref = np.asarray(ref, dtype=np.float32)
    img = np.asarray(img, dtype=np.float32)
    h, w = ref.shape[-2:]
    cc = scipy.fft.irfft2(
        scipy.fft.rfft2(img, axes=(-2, -1), workers=-1) * np.conj(scipy.fft.rfft2(ref, axes=(-2, -1), workers=-1)),
        s=(h, w), axes=(-2, -1), workers=-1,
    )
    limit = min(h, w) / 4 if max_shift is None else max_shift
    ly = np.fft.fftfreq(h, 1.0 / h)
    lx = np.fft.fftfreq(w, 1.0 / w)
    outside = (np.abs(ly)[:, None] > limit) | (np.abs(lx)[None, :] > limit)
    masked = np.where(outside, -np.inf, cc)
    lead = cc.shape[:-2]
    flat = masked.reshape(lead + (h * w,))
    idx = np.argmax(flat, axis=-1)
    iy, ix = np.unravel_index(idx, (h, w))
    take = lambda dy, dx: np.take_along_axis(  # noqa: E731
        cc.reshape(lead + (h * w,)), np.expand_dims(((iy + dy) % h) * w + (ix + dx) % w, -1), axis=-1
    )[..., 0]
    c0 = take(0, 0)
    sub_x = _parabolic(take(0, -1), c0, take(0, 1))
    sub_y = _parabolic(take(-1, 0), c0, take(1, 0))
    shift = np.stack([lx[ix] + sub_x, ly[iy] + sub_y], axis=-1)
    norm = np.sqrt(np.sum(ref.astype(np.float64) ** 2, axis=(-2, -1)) * np.sum(img.astype(np.float64) ** 2, axis=(-2, -1)))
    score = np.where(norm > 0, c0 / np.where(norm > 0, norm, 1.0), 0.0)
    return shift, score
