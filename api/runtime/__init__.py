"""`Runtime`: one assembly of memory, model, tokenizer, generator and adapters, built once from `Settings`,
with the operations both front ends need. The CLI and the HTTP routes only translate arguments and output.

One module per concept, each a part of the one `Runtime`: `assembly` (what is built, and `Caller`), `memory_ops`
(logs in, feedback, search, erasure), `serving` (answers with the local model, LoRAs by name), `admin` (adapters,
keys), `canaries` (canary adapters: their arms' counts and decisions; promote, stop, pin), `consolidation` (jobs
and the worker), `inspection` (the inspector page's reads)."""

from __future__ import annotations

from functools import cached_property

from logmem.memory.store import AdapterData, AnswerData, ExperienceData, JobData, KeyData

from ..answering import SERVED_MODEL, Answer, Backend, Caller, LocalBackend, UpstreamBackend
from ..push import Pushed
from .admin import AdapterChange
from .assembly import LoadModel
from .canaries import CanaryOps, CanaryView
from .consolidation import POLICY_MARK, Consolidation
from .inspection import Inspection, turn_view
from .serving import Conditioned, Serving

# the store's records the front ends read are re-exported here: no front end imports a store module
__all__ = ["POLICY_MARK", "SERVED_MODEL", "AdapterChange", "AdapterData", "Answer", "AnswerData", "CanaryView",
           "Caller", "Conditioned", "ExperienceData", "JobData", "KeyData", "LoadModel", "Pushed", "Runtime",
           "turn_view"]


class Runtime(Serving, Consolidation, Inspection, CanaryOps):
    """Everything one logmem process serves from, assembled lazily and once (`Assembly`), with every operation
    the CLI and the HTTP routes need."""

    @cached_property
    def backend(self) -> Backend:
        """What generates this process's answers: the upstream when the settings name one, else the local model."""
        return UpstreamBackend(self, self.upstream) if self.upstream is not None else LocalBackend(self)
