"""Bodies of the routes the inspector page needs beyond the rest of the API (`routes/inspector_api.py`): served
answers newest first, activity over time, an experience's history, the prompt a request would get, an answer
without memory, the users of a tenant, a canary's arms over time. Requests and responses are kept apart."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .schemas import AdapterOut, ExperienceOut, RequiredText


# --- requests ------------------------------------------------------------------------------------
class BaselineIn(BaseModel):
    """POST /v1/memory/baseline: one user message, answered by the served model with no memory in its prompt."""

    model_config = ConfigDict(extra="forbid")
    q: RequiredText = Field(min_length=1, max_length=20_000)
    max_tokens: int = Field(64, ge=1)


# --- responses -----------------------------------------------------------------------------------
class FeedbackItem(BaseModel):
    turn: int
    kind: str
    value: float | None = None
    text: str | None = None


class AnswerSummary(BaseModel):
    """A served answer: the request it answered, the answer, the feedback it got, what conditioned it."""

    id: str
    user: str | None
    status: str  # answered (awaits judgement) | experience | merged | filtered
    request: str
    answer: str
    feedback: list[FeedbackItem]
    adapter: str | None
    experiences: list[int]  # the experiences in its prompt
    chosen_by: str | None
    answered_at: float


class AnswerPage(BaseModel):
    total: int
    limit: int
    offset: int
    data: list[AnswerSummary]


class Histogram(BaseModel):
    edges: list[float]  # bins + 1 edges
    counts: list[int]


class ActivityOut(BaseModel):
    days: list[float]  # each day's start (UTC midnight, epoch seconds), oldest first
    answers: list[int]  # answers served per day
    feedback: dict[str, list[int]]  # feedback events per kind per day
    utility: Histogram  # the experiences' utility over [0, 1]


class UseOut(BaseModel):
    """A judged interaction that had the experience in its prompt."""

    id: str
    user: str | None
    status: str
    served: bool  # a served answer (else an ingested log that named it as retrieved)
    request: str
    answer: str
    feedback: list[FeedbackItem]
    success: float | None  # its judged outcome, in [0, 1]
    explicit: bool  # explicit feedback decided it (else the conversation's next turn)
    at: float
    judged_at: float | None
    parts: dict[str, float] | None  # the experience's score parts when it was served


class ExperienceHistory(BaseModel):
    experience: ExperienceOut
    uses: list[UseOut]
    adapters: list[AdapterOut]  # the adapters trained on it


class PromptHit(BaseModel):
    """A retrieved experience with the parts of its score, in MMR order (`rank` 1 first)."""

    rank: int
    in_prompt: bool  # it fit the prompt's budgets
    id: int
    score: float
    sim: float
    util: float
    rec: float
    cos: float
    utility: float
    trigger: str
    response: str
    lesson: str | None
    support: int


class PromptOut(BaseModel):
    hits: list[PromptHit]
    prompt: str  # exactly what the model would see
    prompt_tokens: int
    memory_tokens: int
    lessons: list[str]


class BaselineOut(BaseModel):
    text: str
    adapter: str | None  # the adapter that answered (None: the base model)
    completion_tokens: int
    finish_reason: str
    prompt: str
    model_ms: float


class UserOut(BaseModel):
    user: str
    interactions: int
    experiences: int
    last_seen_at: float



class ArmSeries(BaseModel):
    """One arm's cumulative good-outcome rate after each of its rated conversations (thinned to a few hundred)."""

    at: list[float]  # when the conversation's first outcome came (epoch seconds)
    n: list[int]  # the arm's rated conversations by then
    rate: list[float]  # the arm's good-outcome rate by then


class CanaryTimeline(BaseModel):
    canary: ArmSeries
    current: ArmSeries
