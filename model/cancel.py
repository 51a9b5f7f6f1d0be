"""Stopping a generation from outside it: a client that went away, a server that is shutting down."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from logmem.memory.errors import GenerationCancelled
from transformers import StoppingCriteria

__all__ = ["Cancel"]


class Cancel(StoppingCriteria):
    """A `generate` stopping criterion that raises `GenerationCancelled` at the next token once any of `events` is set,
    so that nothing after the generation (logging the answer) runs for an answer nobody will read.

    Args:
        events: the events that cancel (None entries are skipped).
    """

    def __init__(self, events: Iterable[threading.Event | None]) -> None:
        self.events = [e for e in events if e is not None]

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        if any(e.is_set() for e in self.events):
            raise GenerationCancelled("the generation was cancelled: its client went away or the server is stopping")
        import torch

        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
