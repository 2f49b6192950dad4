"""Camera content for the benches: 1600x900 colour gradients with uniform noise, whose JPEGs
have realistic sizes (the entropy decoder's cost grows with the noise)."""
from __future__ import annotations

import numpy as np

#: +- grey levels of noise of the "typical" images: ~200 kB JPEGs at quality 85, the size of
#: nuScenes' 1600x900 camera JPEGs (bench/node_io.py's noisy worst case uses 20: ~361 kB)
TYPICAL_NOISE = 11


def gradient_images(rng: np.random.Generator, amplitude: int, n: int) -> list[np.ndarray]:
    """``n`` (900, 1600, 3) uint8 RGB images: the same gradients, each with its own noise in
    [-amplitude, amplitude) drawn from ``rng``."""
    yy, xx = np.mgrid[0:900, 0:1600]
    base = np.stack([(xx / 7) % 255, (yy / 4) % 255, (xx + yy) / 10 % 255], -1).astype(np.int16)
    return [np.clip(base + rng.integers(-amplitude, amplitude, base.shape), 0, 255).astype(np.uint8)
            for _ in range(n)]
