"""`logmem demo`: the whole loop on the bundled sample logs, through the same runtime the service uses."""

from __future__ import annotations

import json
from importlib import resources

from .runtime import Caller, Runtime

DEMO_TENANT = "acme"
# ~13 experiences: a few steps of 16 pairs, under a minute here; a bare student, since step 7 asks the adapter with no
# memory in the prompt (left to itself, a job trains a memory+adapter student where the memory lowers its NLL)
DEMO_CONSOLIDATION = {"epochs": 6, "with_memory": False}
DEMO_QUESTIONS = [
    ("acme", "how can I reverse a python list?"),
    ("acme", "How do I remove a branch from the remote in git?"),
    ("globex", "How do I reverse a list in Python?"),
]


def run_demo(runtime: Runtime, *, max_new_tokens: int = 48) -> None:
    """Ingest the sample logs, answer with and without memory side by side, take feedback, show stats,
    consolidate one tenant's memory into a gated adapter and answer with it (printing each step)."""
    sample = resources.files("logmem.api").joinpath("data/sample_logs.jsonl")
    with resources.as_file(sample) as path:
        print(f"== 1. ingest {path.name}")
        report = runtime.ingest_file(path, progress=True)
    print("   " + " ".join(f"{k}={v}" for k, v in report.to_json().items() if isinstance(v, int)))
    print("== 2. load the generator (the first run converts the bundled GGUF once, ~20 s)")
    runtime.tokenizer  # noqa: B018  # loads the model now, so that step 3's timings are the answers'
    replies = []
    for tenant, question in DEMO_QUESTIONS:
        messages = [{"role": "user", "content": question}]
        bare = runtime.chat(Caller(tenant, None), messages, model=runtime.base_model, max_tokens=max_new_tokens,
                            use_memory=False).reply
        reply = runtime.chat(Caller(tenant, None), messages, max_tokens=max_new_tokens).reply
        replies.append((tenant, reply))
        print(f"\n== 3. [{tenant}] {question}")
        print(f"   without memory: {one_line(bare.text)}")
        print(f"   with memory:    {one_line(reply.text)}")
        for h in reply.experiences[-2:]:
            print(f"      used [{h.id}] score={h.score:.3f} (sim={h.sim:.3f} util={h.util:+.3f}): "
                  f"{one_line(h.response, 70)}")
    print("\n== 4. feedback: like the first answer, dislike the second")
    for (tenant, reply), kind in zip(replies, ("like", "dislike")):
        result = runtime.feedback(Caller(tenant, None), reply.interaction_id, kind)
        conflict = ", a conflict with an earlier answer recorded" if result.conflicts else ""
        print(f"   {kind}: {result.credited} experience(s) credited, {result.experiences + result.merged} "
              f"stored{conflict}")
    print("\n== 5. stats")
    for key, value in runtime.stats(None).to_json().items():
        print(f"{key:>20}: {json.dumps(value) if isinstance(value, dict) else value}")
    print(f"\n== 6. consolidate {DEMO_TENANT}'s experiences into a LoRA adapter, gated on held-out ones")
    _consolidation(runtime, max_new_tokens)


def _consolidation(runtime: Runtime, max_new_tokens: int) -> None:
    """Train (or reuse, on a second run) the demo tenant's adapter; answer one of its taught questions
    without memory, with the base model and with the adapter."""
    caller = Caller(DEMO_TENANT, None)
    active = runtime.active_adapter(caller)
    if active is None:
        runtime.recover_jobs()
        job = runtime.run_job(runtime.submit_consolidation(caller, DEMO_CONSOLIDATION).id, progress=True)
        print(f"   job {job.id} {job.status}: {(job.metrics or {}).get('gate') or job.error}")
        if job.status != "succeeded":
            print("   the base model stays; the adapter is kept on disk, marked rejected (`logmem adapters`)")
            return
        active = runtime.active_adapter(caller)
        assert active is not None  # a succeeded job activated its adapter
        print(f"   adapter {active.version} active; {len(active.covered)} experiences consolidated in it")
    else:
        print(f"   adapter {active.version} already active (an earlier run; `make clean` starts over)")
    question = runtime.experience(caller, min(active.covered)).trigger
    messages = [{"role": "user", "content": question}]
    bare = runtime.chat(caller, messages, model=runtime.base_model, max_tokens=max_new_tokens, use_memory=False)
    taught = runtime.chat(caller, messages, max_tokens=max_new_tokens, use_memory=False)
    print(f"\n== 7. [{DEMO_TENANT}] {question}  (no memory in either prompt)")
    print(f"   base model:       {one_line(bare.reply.text)}")
    print(f"   with the adapter: {one_line(taught.reply.text)}")


def one_line(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
