"""Shared instructions: a leading paragraph that many of a tenant's requests open with (a system prompt pasted
into every request) is counted at ingest and, once common (`MemoryConfig.shared_min_count`), stripped before a
request is embedded, so that requests are compared by what they ask, not by the instruction they share."""

from __future__ import annotations

from collections.abc import Sequence

from .config import MemoryConfig
from .distill import Candidate, distill, leading_paragraph, split_instruction, text_hash
from .logs import parse_record
from .store import Store, Tx


class SharedInstructions:
    """Each tenant's known shared instructions, read from the store once and kept while they do not change."""

    def __init__(self, store: Store, config: MemoryConfig) -> None:
        self.store, self.config = store, config
        self._known: dict[str, set[str]] = {}

    def known(self, tenant: str) -> set[str]:
        """The tenant's shared instructions."""
        if tenant not in self._known:
            self._known[tenant] = self.store.instructions(tenant=tenant, min_count=self.config.shared_min_count)
        return self._known[tenant]

    def split(self, tenant: str, text: str) -> tuple[str | None, str]:
        """(the shared instruction `text` opens with or None, the rest: what is embedded)."""
        return split_instruction(text, self.known(tenant))

    def learn(self, tx: Tx, tenant: str, cands: Sequence[Candidate]) -> None:
        """Count the leading paragraphs of `cands` in the tenant's tally, in the transaction `tx`."""
        if not self.config.strip_shared_instructions:
            return
        counts = count_heads(cands)
        if counts:
            self.store.count_instructions(tx, tenant=tenant, counts=counts)
            self._known[tenant] = self.store.instructions(tenant=tenant, min_count=self.config.shared_min_count,
                                                          tx=tx)

    def drop(self, tenant: str) -> None:
        """Forget what is known of the tenant's (a rolled-back transaction or an erasure may have changed it)."""
        self._known.pop(tenant, None)

    def tally(self, record: dict) -> dict[str, int]:
        """The leading paragraphs (hash -> n) that ingesting `record` added to its tenant's tally."""
        counts: dict[str, int] = {}
        if not self.config.strip_shared_instructions:
            return counts
        for c in distill(parse_record(record, format="native"), self.config):
            head = leading_paragraph(c.trigger)
            if head is not None:
                counts[text_hash(head)] = counts.get(text_hash(head), 0) + 1
        return counts


def count_heads(cands: Sequence[Candidate]) -> dict[str, tuple[str, int]]:
    """The leading paragraphs of `cands`' triggers: hash -> (the paragraph, how many open with it)."""
    counts: dict[str, tuple[str, int]] = {}
    for c in cands:
        head = leading_paragraph(c.trigger)
        if head is not None:
            h = text_hash(head)
            counts[h] = (head, counts.get(h, (head, 0))[1] + 1)
    return counts
