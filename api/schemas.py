"""Request and response bodies of the HTTP API. The chat shapes follow OpenAI's Chat Completions API, with a
`logmem` object beside them; requests and responses are kept apart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from logmem.memory.errors import LogFormatError
from logmem.memory.logs import (
    MAX_FEEDBACK_TEXT,
    check_feedback_needs,
    check_feedback_text,
    check_feedback_value,
)
from logmem.memory.text import check_identifier, clean_text, require_text
from logmem.memory.vocabulary import (
    RATING_MAX,
    RATING_MIN,
    CanaryStatus,
    CanaryVerdict,
    FeedbackKind,
    LogFormat,
    Method,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

T = TypeVar("T")


def _boundary(check: Callable[[Any], T]) -> Callable[[Any], T]:
    """A check of the text boundary (memory/text.py, memory/logs.py) as a pydantic validator: its reason becomes
    the message (pydantic names the field, the app's 422 handler gives it as `param`)."""
    def validate(value: Any) -> T:
        try:
            return check(value)
        except LogFormatError as exc:
            raise ValueError(exc.reason) from None
    return validate


# The kinds of text field (memory/text.py says why): a request's strings are each one of these.
Identifier = Annotated[str, AfterValidator(_boundary(check_identifier))]  # ids, users, event ids: refused if unstorable
FreeText = Annotated[str, AfterValidator(clean_text)]  # what a person wrote: cleaned
RequiredText = Annotated[str, AfterValidator(_boundary(require_text))]  # cleaned, and not empty once cleaned


# --- requests ------------------------------------------------------------------------------------
class TextPart(BaseModel):
    type: Literal["text"]
    text: FreeText


class ChatMessage(BaseModel):
    """A message as OpenAI clients send it; `developer` counts as `system`, text parts are joined."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: FreeText | list[TextPart]
    name: str | None = None

    def plain(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """POST /v1/chat/completions. Greedy unless `temperature` > 0; `n` must be 1."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Identifier | None = Field(None, max_length=200)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        stops = None if value is None else [clean_text(s) for s in ([value] if isinstance(value, str) else value)]
        if stops is not None and (len(stops) > 4 or not all(stops)):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops

    @model_validator(mode="after")
    def _last_is_user(self) -> ChatRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be the user's")
        return self


class FeedbackIn(BaseModel):
    """A feedback item of the log schema, on one served answer. `event_id` (or the Idempotency-Key header)
    makes a retried call count once; by default the event's content is its id."""

    model_config = ConfigDict(extra="forbid")
    kind: FeedbackKind
    # checked as the log parser checks a logged feedback's (memory/logs.py); the bounds here document them
    value: Annotated[float | None, BeforeValidator(_boundary(check_feedback_value))] = Field(
        None, ge=RATING_MIN, le=RATING_MAX, validate_default=True,
        description=f"a rating's {RATING_MIN:g}-{RATING_MAX:g}")
    text: Annotated[str | None, BeforeValidator(_boundary(check_feedback_text))] = Field(
        None, max_length=MAX_FEEDBACK_TEXT, description="a correction's right answer")
    event_id: Identifier | None = Field(None, min_length=1, max_length=200)

    @field_validator("value")
    @classmethod
    def _rating_needs_value(cls, value: float | None, info: ValidationInfo) -> float | None:
        if "kind" not in info.data:  # the kind was refused already
            return value
        try:
            check_feedback_needs(info.data["kind"], value)
        except LogFormatError as exc:
            raise ValueError(exc.reason) from None
        return value

    @model_validator(mode="after")
    def _needs(self) -> FeedbackIn:
        if self.kind == "correction" and not (self.text or "").strip():
            raise ValueError("a correction needs text: the right answer")
        return self


class InteractionsIn(BaseModel):
    """POST /v1/interactions: log records (native, OpenAI or MemoryBench), stored under the caller's tenant."""

    records: list[Any] = Field(min_length=1)
    format: LogFormat = "auto"


class ConsolidationIn(BaseModel):
    """POST /v1/consolidations: `ConsolidationConfig` fields (method, epochs, max_steps, lr, ...)."""

    model_config = ConfigDict(extra="forbid")
    method: Method | None = None
    epochs: int = Field(1, ge=1, le=100)
    max_steps: int = Field(0, ge=0)
    # the early stop and the wall-time bound (None: ConsolidationConfig's defaults)
    eval_every: int | None = Field(None, ge=0)
    min_steps: int | None = Field(None, ge=0)
    patience: int | None = Field(None, ge=0)
    min_gain: float | None = Field(None, ge=0)
    max_seconds: float | None = Field(None, ge=0)
    with_memory: bool | None = None  # None: the job chooses (ConsolidationConfig.with_memory)
    lr: float | None = Field(None, gt=0, le=1)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    rebuild: bool = False
    # the gate's reference: "served" (default) what the tenant is served now; "base" the bare base model's NLL
    gate_reference: Literal["served", "base"] | None = None
    # a promoted adapter first answers this share of the tenant's conversations as its canary (None or 0: off)
    canary_share: float | None = Field(None, ge=0, lt=1)

    def params(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class CanaryPinIn(BaseModel):
    """POST /v1/canaries/pin: hold the live canary at its share with no automatic decision (false: release it)."""

    model_config = ConfigDict(extra="forbid")
    pinned: bool


class LoadLoraIn(BaseModel):
    """POST /v1/load_lora_adapter, as vLLM takes it."""

    model_config = ConfigDict(extra="ignore")
    lora_name: Identifier = Field(min_length=1, max_length=200)
    lora_path: str = Field(min_length=1, max_length=4096, description="a PEFT folder this server can read")


class UnloadLoraIn(BaseModel):
    """POST /v1/unload_lora_adapter, as vLLM takes it."""

    model_config = ConfigDict(extra="ignore")
    lora_name: Identifier = Field(min_length=1, max_length=200)


# --- responses -----------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


class UsedExperience(BaseModel):
    id: int
    score: float
    sim: float
    util: float
    rec: float
    cos: float
    utility: float


class LogmemInfo(BaseModel):
    interaction_id: str
    adapter: str | None
    experiences: list[UsedExperience]
    chosen_by: str
    mode: str  # the mode it was answered in (logmem.model.modes): memory, vote, auto, consolidated, memory+adapter
    retrieval_ms: float
    model_ms: float


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    logmem: LogmemInfo


class LoraOut(BaseModel):
    message: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str | None = None  # the base model (a LoRA adapter's: the folder it was loaded from), as vLLM lists it
    parent: str | None = None  # a LoRA adapter's base model; None for a base model


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class IngestOut(BaseModel):
    read: int
    stored: int
    skipped: int
    rejected: int
    experiences: int
    merged: int
    conflicts: int
    filtered: int
    errors: list[str]
    rejected_records: list[dict[str, Any]]


class FeedbackOut(BaseModel):
    interaction_id: str
    kind: str
    success: float
    credited: int
    experiences: int
    merged: int
    conflicts: int
    status: str
    duplicate: bool


class HitOut(BaseModel):
    id: int
    score: float
    trigger: str
    response: str
    lesson: str | None
    rejected: str | None
    support: int
    utility: float
    parts: dict[str, float] | None = None  # with explain=true: sim, util, rec, cos


class SearchOut(BaseModel):
    hits: list[HitOut]


class ExperienceOut(BaseModel):
    id: int
    trigger: str
    response: str
    lesson: str | None
    rejected: str | None
    utility: float
    support: int
    uses: int
    created_at: float
    last_seen_at: float
    consolidated_in: str | None


class ExperiencePage(BaseModel):
    total: int
    limit: int
    offset: int
    data: list[ExperienceOut]


class ForgetOut(BaseModel):
    removed: dict[str, int]


class ImportOut(BaseModel):
    """What an import did: rows added and rows already present (kept as they were), per table."""

    tenant: str  # the tenant written
    source: str  # the tenant the archive was exported from
    added: dict[str, int]
    kept: dict[str, int]
    adapters: dict[str, str]  # the archive's adapter versions -> their versions here
    reembedded: bool  # the vectors were computed here (another embedder), not carried
    left_out: list[dict[str, str]]  # adapters the export left out, and why


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    progress: float
    message: str | None
    params: dict[str, Any]
    metrics: dict[str, Any] | None
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None


class AdapterOut(BaseModel):
    version: str
    status: str
    active: bool
    previous: str | None
    method: str
    base_model: str
    metrics: dict[str, Any]
    covered: int
    created_at: float
    stale_at: float | None


class ActiveOut(BaseModel):
    active: str | None


class PushedOut(BaseModel):
    """What a push to the `push_to` server did."""

    tenant: str
    active: str | None  # the tenant's active adapter version (None: the base model)
    name: str | None  # the name it is served under there
    loaded: bool  # loaded now (False: it was there already, or there is none)
    unloaded: list[str]  # the tenant's other versions taken out
    canary: str | None = None  # the name its live canary is served under there (None: none is live)


class CanaryArmOut(BaseModel):
    n: int  # rated conversations (each counts once: the mean of its rated answers)
    good: float  # the sum of their outcomes in [0, 1]
    rate: float | None  # the good-outcome rate (None before any outcome)


class ArmCountsOut(BaseModel):
    good: float
    n: float


class CanaryDecisionOut(BaseModel):
    """What the arms' outcomes decide (memory/canary.py): an e-value per direction against its threshold."""

    verdict: CanaryVerdict
    reason: str
    canary: ArmCountsOut
    current: ArmCountsOut
    e_better: float  # against "the canary is not better": promotes at promote_threshold (1 / alpha_promote)
    e_worse: float  # against "the canary is not worse": rolls back at rollback_threshold
    promote_threshold: float
    rollback_threshold: float
    min_outcomes: int
    budget: int
    rated: int
    canary_rate: float | None
    current_rate: float | None


class CanaryOut(BaseModel):
    """A canary: the adapter answering a share of the tenant's conversations, its arms' counts, its decision (live:
    what its outcomes decide now; ended: the one it ended with, None where an activation, rollback or erasure ended
    it)."""

    id: int
    version: str
    mode: str
    current: str | None  # the active adapter when it started
    share: float
    status: CanaryStatus
    pinned: bool
    reason: str
    started_at: float
    decided_at: float | None
    arms: dict[str, CanaryArmOut]  # "canary" and "current"
    decision: CanaryDecisionOut | None
    pushed: PushedOut | None = None  # a promotion with the push_to setting: what that server serves now
