"""Global colour and texture features and the JEC distance of Makadia et al. (2008).

"A New Baseline for Image Annotation" (ECCV 2008) showed that a few simple global features,
each compared with a fitting distance and combined with equal weights ("Joint Equal
Contribution", JEC), find neighbours good enough to transfer tags from. We follow it:
RGB and HSV joint histograms (16 bins a channel, L1), a LAB joint histogram (KL divergence),
Gabor filter magnitudes (3 scales x 4 orientations, 16 bins each, L1) and Haar wavelet energies
(3 scales x 3 orientations, L1). Each distance is divided by its largest value over the
candidates, then the five are averaged.
"""
from __future__ import annotations

import hashlib
import io
import logging
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

SIZE = 128  # images are compared at SIZE x SIZE: global features need no more
LOAD_SIDE = 2 * SIZE  # images are loaded (JPEGs drafted) no larger than this before the resize
BINS = 16  # per colour channel, as in the paper
GABOR_FREQUENCIES = (0.25, 0.125, 0.0625)  # cycles per pixel
GABOR_ORIENTATIONS = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GABOR_EDGES = np.concatenate([[0.0], np.geomspace(1e-3, 0.5, BINS - 1)])  # fixed, so histograms compare
HAAR_SCALES = 3
_EPS = 1e-6

Features = dict[str, np.ndarray]
FEATURE_NAMES = ("rgb", "hsv", "lab", "gabor", "haar")
FEATURES_VERSION = 1  # bump when a descriptor changes, so cached features of the old kind are not read

log = logging.getLogger(__name__)


class FeatureCache:
    """An image's features, computed once and kept in the response cache's store, keyed by the image's
    identity (its URL, or the sha256 of a local file): later runs read them instead of decoding the image."""

    def __init__(self, cache: Any):
        self.cache = cache  # a prompting.cache.ResponseCache: its backend and its image identity

    def key(self, image: str) -> str:
        material = f"jec-features/v{FEATURES_VERSION}/{SIZE}/{self.cache.image_identity(image)}"
        return hashlib.sha256(material.encode()).hexdigest()

    def get(self, key: str) -> Optional[Features]:
        try:
            data = self.cache.backend.read(key)
            if data is None:
                return None
            with np.load(io.BytesIO(data)) as stored:
                return {name: stored[name] for name in FEATURE_NAMES}
        except Exception as exc:  # a cache must never fail a run: recompute
            log.warning("feature cache entry %s unreadable (%s); computing the features again", key[:12], type(exc).__name__)
            return None

    def put(self, key: str, features: Features) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **features)
        try:
            self.cache.backend.write(key, buffer.getvalue())
        except Exception as exc:
            log.warning("feature cache write failed (%s); kept for this run only", type(exc).__name__)


def image_features(image: Image.Image) -> Features:
    """The five JEC descriptors of one image, each a float32 vector."""
    image = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    rgb = np.asarray(image, dtype=np.uint8)
    hsv = np.asarray(image.convert("HSV"), dtype=np.uint8)
    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return {
        "rgb": _joint_histogram(rgb // (256 // BINS)),
        "hsv": _joint_histogram(hsv // (256 // BINS)),
        "lab": _joint_histogram(_lab_bins(rgb)),
        "gabor": _gabor(gray),
        "haar": _haar(gray),
    }


def stack_features(candidates: Sequence[Features]) -> dict[str, np.ndarray]:
    """One candidates x dims array per descriptor, built once so each query only subtracts."""
    return {name: np.stack([c[name] for c in candidates]) if candidates else np.zeros((0, 1), np.float32) for name in FEATURE_NAMES}


def jec_distances(query: Features, stacked: Mapping[str, np.ndarray]) -> np.ndarray:
    """Equal-weight combination of the five normalised distances from `query` to each row of `stacked`."""
    total = np.zeros(len(stacked[FEATURE_NAMES[0]]), dtype=np.float64)
    for name in FEATURE_NAMES:
        rows = stacked[name]
        distance = _kl(query[name], rows) if name == "lab" else np.abs(rows - query[name]).sum(axis=1, dtype=np.float64)
        largest = distance.max() if len(distance) else 0.0
        total += distance / largest if largest > 0 else distance
    return total / len(FEATURE_NAMES)


def _joint_histogram(bins: np.ndarray) -> np.ndarray:
    """A normalised BINS^3 histogram of an H x W x 3 array of per-channel bin indices."""
    b = bins.reshape(-1, 3).astype(np.int64)
    index = (b[:, 0] * BINS + b[:, 1]) * BINS + b[:, 2]
    counts = np.bincount(index, minlength=BINS**3).astype(np.float32)
    return counts / counts.sum()


def _lab_bins(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of sRGB pixels, binned: L over [0, 100], a and b over [-110, 110]."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array(
        [[0.4124564, 0.2126729, 0.0193339], [0.3575761, 0.7151522, 0.1191920], [0.1804375, 0.0721750, 0.9503041]]
    )
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)
    low, high = np.array([0.0, -110.0, -110.0]), np.array([100.0, 110.0, 110.0])
    scaled = (lab - low) / (high - low) * BINS
    return np.clip(scaled, 0, BINS - 1).astype(np.int64)


def _gabor_bank() -> list[np.ndarray]:
    """Frequency-domain Gabor filters (peak gain 1), one per scale and orientation."""
    u = np.fft.fftfreq(SIZE)[None, :]
    v = np.fft.fftfreq(SIZE)[:, None]
    bank = []
    for f0 in GABOR_FREQUENCIES:
        sigma = f0 / 2
        for theta in GABOR_ORIENTATIONS:
            along = u * np.cos(theta) + v * np.sin(theta)
            across = -u * np.sin(theta) + v * np.cos(theta)
            bank.append(np.exp(-((along - f0) ** 2 + across**2) / (2 * sigma**2)))
    return bank


_GABOR_BANK = _gabor_bank()


def _gabor(gray: np.ndarray) -> np.ndarray:
    """Per filter, a normalised histogram of response magnitudes over fixed log-spaced bins."""
    spectrum = np.fft.fft2(gray - gray.mean())
    parts = []
    for kernel in _GABOR_BANK:
        magnitude = np.abs(np.fft.ifft2(spectrum * kernel))
        counts, _ = np.histogram(np.clip(magnitude, 0, GABOR_EDGES[-1]), bins=GABOR_EDGES)
        parts.append(counts / counts.sum())
    return (np.concatenate(parts) / len(parts)).astype(np.float32)


def _haar(gray: np.ndarray) -> np.ndarray:
    """Mean absolute Haar wavelet detail (horizontal, vertical, diagonal) at 3 scales."""
    energies = []
    level = gray
    for _ in range(HAAR_SCALES):
        a, b = level[0::2, 0::2], level[0::2, 1::2]
        c, d = level[1::2, 0::2], level[1::2, 1::2]
        energies += [np.abs(a + b - c - d).mean() / 4, np.abs(a - b + c - d).mean() / 4, np.abs(a - b - c + d).mean() / 4]
        level = (a + b + c + d) / 4
    return np.array(energies, dtype=np.float32)


def _kl(query: np.ndarray, stacked: np.ndarray) -> np.ndarray:
    """KL(query || candidate) per row, both smoothed so empty bins stay finite."""
    q = (query + _EPS) / (query + _EPS).sum()
    p = (stacked + _EPS) / (stacked + _EPS).sum(axis=1, keepdims=True)
    return (q * (np.log(q) - np.log(p))).sum(axis=1)
