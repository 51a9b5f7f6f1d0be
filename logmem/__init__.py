"""logmem: turn a deployed language model's user logs into a vector memory and, periodically, into its weights.

The packages: `logmem.memory` (experiences: logs, outcomes, the store, the index), `logmem.model` (the language
model: loading, the `MemoryGenerator`, consolidation) and `logmem.api` (the `logmem` command and the HTTP
service). Importing `logmem` alone imports none of them.
"""

__all__: list[str] = []
