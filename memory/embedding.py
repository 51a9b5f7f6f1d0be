"""The embedding boundary: `memory/` needs vectors, not a framework.

The default implementation (MiniLM through sentence-transformers) lives in `logmem.model.embedding`,
so this package never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    @property
    def dim(self) -> int:
        """Width `d` of every vector this embedder returns."""
        ...

    @property
    def name(self) -> str:
        """A stable identifier of the model (stored with the memory to catch mixed embedders)."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`.

        Returns:
            float32 array of shape (len(texts), dim), each row of unit L2 norm (zero rows for empty text).
        """
        ...
