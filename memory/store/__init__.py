"""The SQL store (see `core`)."""

from .core import Store, Tally, Tx
from .records import AdapterData, ExperienceData, JobData
from .schema import ADAPTER_METHODS, ADAPTER_STATUSES, JOB_STATUSES, SCHEMA_VERSION, AdapterRow

__all__ = ["ADAPTER_METHODS", "ADAPTER_STATUSES", "JOB_STATUSES", "SCHEMA_VERSION", "AdapterData", "AdapterRow",
           "ExperienceData", "JobData", "Store", "Tally", "Tx"]
