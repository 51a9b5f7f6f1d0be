"""The SQL store (see `experiences`, where `Store` composes its parts)."""

from ..vocabulary import ADAPTER_STATUSES, JOB_STATUSES
from ..vocabulary import METHODS as ADAPTER_METHODS
from .adapters import ServingModeData
from .canaries import CanaryData
from .experiences import Store, Tally, Tx
from .keys import KeyData
from .records import AdapterData, ExperienceData, JobData, ScoringColumns
from .schema import SCHEMA_VERSION, AdapterRow
from .served import AnswerData
from .transfer import TenantRows, Written

__all__ = ["ADAPTER_METHODS", "AnswerData", "CanaryData", "KeyData",
           "ADAPTER_STATUSES", "JOB_STATUSES", "SCHEMA_VERSION", "AdapterData", "AdapterRow",
           "ExperienceData", "JobData", "ServingModeData", "Store", "ScoringColumns", "Tally", "TenantRows", "Tx",
           "Written"]
