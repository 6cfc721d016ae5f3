"""The one rule that turns params.yaml's ``seed`` into random streams.

Every random draw of the pipeline (generated data, the split) comes from a NumPy
generator seeded by (seed, name): each dataset and each purpose gets its own
stream, and the same seed gives the same bytes on every platform.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["make_rng"]


def make_rng(seed: int, name: str) -> np.random.Generator:
    """A generator seeded by (seed, name): independent streams per dataset and purpose."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])
