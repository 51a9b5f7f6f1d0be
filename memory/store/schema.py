"""The tables. SQLite and PostgreSQL both enforce the partial unique indexes that keep one active adapter
and one running job per tenant."""

from __future__ import annotations

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = "1"


class Base(DeclarativeBase):
    pass


class InteractionRow(Base):
    __tablename__ = "interactions"
    __table_args__ = (UniqueConstraint("tenant", "ext_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    ext_id: Mapped[str] = mapped_column(String(200))
    user: Mapped[str | None] = mapped_column(String(200), index=True)
    session: Mapped[str | None] = mapped_column(String(200))
    timestamp: Mapped[float | None] = mapped_column(Float)
    record: Mapped[str] = mapped_column(Text)  # the native-schema JSON of the whole interaction
    status: Mapped[str] = mapped_column(String(20))  # experience | merged | filtered
    ingested_at: Mapped[float] = mapped_column(Float)


class FeedbackRow(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    interaction_id: Mapped[int] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"), index=True)
    turn: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    value: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str | None] = mapped_column(Text)


class ExperienceRow(Base):
    __tablename__ = "experiences"
    __table_args__ = (UniqueConstraint("tenant", "content_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    user: Mapped[str | None] = mapped_column(String(200), index=True)  # whose interaction gave the text
    content_hash: Mapped[str] = mapped_column(String(64))
    instruction: Mapped[str | None] = mapped_column(Text)  # the shared instruction the trigger carried
    trigger: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    lesson: Mapped[str | None] = mapped_column(Text)
    rejected: Mapped[str | None] = mapped_column(Text)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, unit norm
    alpha: Mapped[float] = mapped_column(Float)  # Beta posterior of utility
    beta: Mapped[float] = mapped_column(Float)
    support: Mapped[int] = mapped_column(Integer, default=1)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)  # time of the first supporting interaction
    last_seen_at: Mapped[float] = mapped_column(Float)  # time of the latest one
    consolidated_in: Mapped[str | None] = mapped_column(String(64))


class SourceRow(Base):
    """Which interactions support which experience (for merge counts and forgetting by user)."""

    __tablename__ = "experience_sources"
    experience_id: Mapped[int] = mapped_column(ForeignKey("experiences.id", ondelete="CASCADE"), primary_key=True)
    interaction_id: Mapped[int] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"),
                                                primary_key=True, index=True)


class AuthorRow(Base):
    """Users whose words an experience's text holds besides its creator (`ExperienceRow.user`): those who
    gave an answer that took the experience's place in a conflict swap. Forgetting any of them deletes it."""

    __tablename__ = "experience_authors"
    experience_id: Mapped[int] = mapped_column(ForeignKey("experiences.id", ondelete="CASCADE"), primary_key=True)
    user: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)


class RetrievalRow(Base):
    """Which experiences a logged interaction had in its prompt (its record's `metadata.retrieved`): the
    requests that used an experience and went well become more training inputs for it."""

    __tablename__ = "retrievals"
    interaction_id: Mapped[int] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"), primary_key=True)
    experience_id: Mapped[int] = mapped_column(ForeignKey("experiences.id", ondelete="CASCADE"), primary_key=True,
                                               index=True)


class ConflictRow(Base):
    """A different accepted answer to a near-duplicate trigger, with its own support."""

    __tablename__ = "conflicts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experience_id: Mapped[int] = mapped_column(ForeignKey("experiences.id", ondelete="CASCADE"), index=True)
    interaction_id: Mapped[int | None] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"))
    response: Mapped[str] = mapped_column(Text)


class InstructionRow(Base):
    __tablename__ = "instructions"
    tenant: Mapped[str] = mapped_column(String(200), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer)


class IndexStateRow(Base):
    """Per tenant, a counter bumped by every change to its vectors; an index file saved at another
    generation is stale and gets rebuilt from SQL."""

    __tablename__ = "index_state"
    tenant: Mapped[str] = mapped_column(String(200), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)


class ExperienceVersionRow(Base):
    """Per tenant, a counter bumped by every transaction that changes what a search reads of its experiences
    (utility, support, times, answers, consolidation, a row forgotten): what a process's rows held for searching
    are checked against (`Store.search_state`)."""

    __tablename__ = "experience_versions"
    tenant: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


EVERY_EXPERIENCE = 0  # an `ExperienceChangeRow.experience_id` that stands for all the tenant's (no row has id 0)


class ExperienceChangeRow(Base):
    """The experience ids each version of a tenant changed (`EVERY_EXPERIENCE`: all of them), so that a process
    holding rows of an older version drops those alone. Every version has at least one row; a version with none
    was truncated (`Store.truncate_changes`). Only ids: no text or vector of a forgotten experience stays here."""

    __tablename__ = "experience_changes"
    tenant: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    experience_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # no foreign key: outlives the row


class MetaRow(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class AdapterRow(Base):
    """A trained LoRA adapter of one tenant. Versions are "v1", "v2", ... numbered across the whole store, so
    that a version alone (`consolidated_in`, the CLI) names one adapter."""

    __tablename__ = "adapters"
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    base_model: Mapped[str] = mapped_column(String(500))
    method: Mapped[str] = mapped_column(String(20))  # sft | kd | sft+kd
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))  # promoted | rejected | stale (promoted, then data forgotten)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    previous: Mapped[str | None] = mapped_column(String(64))  # active before this one was activated
    parent: Mapped[str | None] = mapped_column(String(64))  # the adapter it was trained on from (None: the base)
    metrics: Mapped[str] = mapped_column(Text)  # JSON: the gate's figures
    covered: Mapped[str] = mapped_column(Text)  # JSON list of the experience ids its own job trained on (what
    # its weights hold is that and what its parents' hold: the lineage)
    holdout: Mapped[str | None] = mapped_column(Text)  # JSON list of the ids its gate held out (later jobs' slice)
    path: Mapped[str] = mapped_column(Text)  # the adapter's folder
    created_at: Mapped[float] = mapped_column(Float)
    stale_at: Mapped[float | None] = mapped_column(Float)  # when an experience it covers was forgotten


class AdapterFileRow(Base):
    """One file of an adapter's folder (its PEFT config, its weights), kept in the database where homes on other
    hosts share it (a database server): written with the adapter's row, gone with it."""

    __tablename__ = "adapter_files"
    version: Mapped[str] = mapped_column(String(64), ForeignKey("adapters.version", ondelete="CASCADE"),
                                         primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ServingModeRow(Base):
    """How a tenant is answered when a request names no mode: the mode its latest consolidation job measured best
    on its held-out slice (with the figures that say why), and the mode an operator pinned, which wins."""

    __tablename__ = "serving_modes"
    tenant: Mapped[str] = mapped_column(String(200), primary_key=True)
    mode: Mapped[str | None] = mapped_column(String(20))  # measured: memory | vote | consolidated | memory+adapter
    adapter: Mapped[str | None] = mapped_column(String(64))  # the tenant's active adapter when it was measured
    metric: Mapped[str | None] = mapped_column(String(20))  # accuracy (label-like answers) | nll
    figures: Mapped[str] = mapped_column(Text, default="{}")  # JSON: mode -> figure on the held-out slice
    reason: Mapped[str] = mapped_column(Text, default="")
    job_version: Mapped[str | None] = mapped_column(String(64))  # the adapter version the measuring job registered
    decided_at: Mapped[float | None] = mapped_column(Float)
    pinned: Mapped[str | None] = mapped_column(String(20))  # an operator's mode, served whatever was measured


# At most one active adapter per tenant, held by the database itself (SQLite and PostgreSQL both).
Index("one_active_adapter_per_tenant", AdapterRow.tenant, unique=True, sqlite_where=AdapterRow.active,
      postgresql_where=AdapterRow.active)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(40))
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)  # queued | running | succeeded | rejected | failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    message: Mapped[str | None] = mapped_column(Text)  # the latest progress line ("step 12/80 loss 1.23")
    params: Mapped[str] = mapped_column(Text)  # JSON
    metrics: Mapped[str | None] = mapped_column(Text)  # JSON
    error: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


# Two jobs never run on one tenant at once: a second start fails on this index, atomically, in both databases.
Index("one_running_job_per_tenant", JobRow.tenant, unique=True, sqlite_where=JobRow.status == "running",
      postgresql_where=JobRow.status == "running")


class AnswerRow(Base):
    """What a served answer needs beyond its interaction row: the experiences that conditioned it (with the
    parts of their scores), the adapter and timings, and the key under which the conversation, continued,
    finds it again. Its interaction is `answered` until feedback or the conversation's next turn judges it."""

    __tablename__ = "answers"
    interaction_id: Mapped[int] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"), primary_key=True)
    thread_key: Mapped[str] = mapped_column(String(64), index=True)  # hash of the request messages + the answer
    adapter: Mapped[str | None] = mapped_column(String(64))  # the adapter version that answered (None: base)
    served: Mapped[str] = mapped_column(Text)  # JSON: experiences with score parts, timings, model
    answered_at: Mapped[float] = mapped_column(Float)


class FeedbackEventRow(Base):
    """One feedback event on a served answer, by its event id: a retried event is recognised and ignored."""

    __tablename__ = "feedback_events"
    interaction_id: Mapped[int] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    received_at: Mapped[float] = mapped_column(Float)


class ApiKeyRow(Base):
    """An API key of the service, stored as its SHA-256 only. An admin key may act for any tenant it names."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to tell keys apart in lists
    tenant: Mapped[str | None] = mapped_column(String(200), index=True)  # None for an admin key
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class CanaryRow(Base):
    """A promoted adapter serving a share of its tenant's conversations (the canary arm) while the rest keep the
    active adapter and serving mode (the current arm), until the users' outcomes decide (memory/canary.py)."""

    __tablename__ = "canaries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[str] = mapped_column(String(64), ForeignKey("adapters.version", ondelete="CASCADE"))
    mode: Mapped[str] = mapped_column(String(20))  # the serving mode the canary arm answers in
    current: Mapped[str | None] = mapped_column(String(64))  # the active adapter when it started (None: the base)
    share: Mapped[float] = mapped_column(Float)  # of the tenant's conversations, by a hash of each
    config: Mapped[str] = mapped_column(Text)  # JSON: CanaryConfig's fields (error rates, minimum, budget)
    status: Mapped[str] = mapped_column(String(20), index=True)  # live | promoted | rolled_back | stopped
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)  # an operator holds it live: no automatic decision
    reason: Mapped[str] = mapped_column(Text, default="")  # why it started, then why it ended
    decision: Mapped[str | None] = mapped_column(Text)  # JSON: the last Decision (figures, e-values, verdict)
    started_at: Mapped[float] = mapped_column(Float)
    decided_at: Mapped[float | None] = mapped_column(Float)


# At most one live canary per tenant.
Index("one_live_canary_per_tenant", CanaryRow.tenant, unique=True, sqlite_where=CanaryRow.status == "live",
      postgresql_where=CanaryRow.status == "live")


class CanaryOutcomeRow(Base):
    """One conversation's rated outcomes under a canary: their sum and number (the conversation counts once, as the
    mean of its outcomes: two ratings in one conversation are not independent), on the arm that answered it."""

    __tablename__ = "canary_outcomes"
    canary_id: Mapped[int] = mapped_column(ForeignKey("canaries.id", ondelete="CASCADE"), primary_key=True)
    conversation: Mapped[str] = mapped_column(String(64), primary_key=True)
    arm: Mapped[str] = mapped_column(String(10))  # current | canary
    total: Mapped[float] = mapped_column(Float)  # the sum of its outcomes in [0, 1]
    n: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[float] = mapped_column(Float)  # when its first outcome came (the inspector's time axis)
