"""A generation runs on its config's thread count in the thread that asks, and leaves that thread's count as it was."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
import torch
from logmem.model.config import GeneratorConfig
from logmem.model.generator import MemoryGenerator
from logmem.model.threads import generation_threads, torch_threads
from transformers import StoppingCriteria, StoppingCriteriaList


class CountThreads(StoppingCriteria):
    """Records torch's thread count at every generated token (never stops the generation)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        self.seen.add(torch.get_num_threads())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def test_auto_leaves_one_core_and_a_setting_is_taken_as_it_is() -> None:
    assert generation_threads(0) == max(1, (os.cpu_count() or 1) - 1)
    assert generation_threads(3) == 3
    with pytest.raises(ValueError, match="threads"):
        GeneratorConfig(threads=-1)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_generation_runs_on_its_threads_in_the_asking_thread(tiny_lm: Any, threads: int) -> None:
    model, tokenizer = tiny_lm
    generator = MemoryGenerator(model, tokenizer, None, config=GeneratorConfig(threads=threads))
    seen: dict[str, Any] = {}

    def ask() -> None:
        torch.set_num_threads(3)  # whatever the thread had before
        counter = CountThreads()
        generator.chat([{"role": "user", "content": "hello"}], max_new_tokens=3,
                       stopping_criteria=StoppingCriteriaList([counter]))
        seen.update(during=counter.seen, after=torch.get_num_threads())
        with torch_threads(threads):
            seen["inside"] = torch.get_num_threads()

    worker = threading.Thread(target=ask)
    worker.start()
    worker.join()
    assert seen == {"during": {threads}, "after": 3, "inside": threads}
