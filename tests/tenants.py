"""A tenant with every kind of row a memory holds (liked, merged, corrected and conflicting answers, a shared
instruction, a served answer with feedback, adapters with lineage on real PEFT files, a serving mode), and what it
answers: the fixtures of the export and import tests."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from logmem.memory import VectorMemory

NOW = 1_700_100_000.0  # searches are scored at this time: recency is the same in every home
QUERIES = ("How do I reverse a list in Python?", "undo the last git commit", "capital of Australia",
           "Summarise in one line: the sky on Mars", "What port does Redis use?")
INSTRUCTION = "You are a terse assistant for the ops team."


def records(tenant: str, *, user_b: str = "bob") -> list[dict[str, Any]]:
    """Logs of `tenant`: likes, a duplicate (merged), a correction (lesson and rejected answer), a conflicting
    answer, and requests that share a leading instruction."""
    def rec(i: str, q: str, a: str, kind: str = "like", user: str = "alice", ts: float = 1_700_000_000.0,
            more: list[dict[str, str]] | None = None) -> dict[str, Any]:
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}] + (more or [])
        feedback = [{"turn": 1, "kind": kind}] if kind else []
        return {"id": f"{tenant}-{i}", "tenant": tenant, "user": user, "timestamp": ts, "messages": messages,
                "feedback": feedback}

    out = [
        rec("1", "How do I reverse a list in Python?", "Use items[::-1] for a reversed copy."),
        rec("2", "How do I reverse a list in Python?", "Use items[::-1] for a reversed copy.", user=user_b,
            ts=1_700_000_500.0),
        rec("3", "How do I undo my last git commit but keep the changes?", "git reset --hard HEAD~1", kind="",
            more=[{"role": "user", "content": "No, that loses my changes. Use git reset --soft HEAD~1."},
                  {"role": "assistant", "content": "Right: git reset --soft HEAD~1 keeps them staged."},
                  {"role": "user", "content": "thanks!"}]),
        rec("4", "What is the capital of Australia?", "Canberra.", user=user_b, ts=1_700_001_000.0),
        rec("5", "What is the capital of Australia?", "Sydney is the capital.", kind="dislike"),
        rec("6", "Which port does Redis use by default?", "6379.", user=user_b),
    ]
    for i, topic in enumerate(("the sky on Mars", "tides", "rainbows", "auroras")):
        out.append(rec(f"i{i}", f"{INSTRUCTION}\n\nSummarise in one line: {topic}",
                       f"One line about {topic}.", ts=1_700_002_000.0 + i))
    return out


def real_lora(folder: Path, seed: int) -> Path:
    """A real PEFT LoRA adapter (safetensors + adapter_config.json) over a 1-layer Llama with a 64-token vocabulary."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                                    init_lora_weights=False))
    model.save_pretrained(str(folder))
    return folder


def build_tenant(memory: VectorMemory, tenant: str, adapters: Path, *, user_b: str = "bob") -> None:
    """Fill `tenant` in `memory` with every kind of row (see the module)."""
    memory.ingest(records(tenant, user_b=user_b))
    hits = memory.search("How do I reverse a list in Python?", tenant=tenant, now=NOW)
    memory.log_answer(tenant=tenant, interaction_id=f"{tenant}-served", user="alice", answer="Use items[::-1].",
                      messages=[{"role": "user", "content": "How do I reverse a list in Python?"}], hits=hits)
    memory.feedback(f"{tenant}-served", "like", tenant=tenant)
    ids = [e.id for e in memory.iter_experiences(tenant)]
    b_ids = [e.id for e in memory.iter_experiences(tenant) if e.user == user_b]
    first = memory.register_adapter(tenant=tenant, base_model="tiny", method="sft", seed=0, promoted=True,
                                    metrics={"nll": 1.5}, covered=[i for i in ids if i not in b_ids],
                                    path=str(real_lora(adapters / f"{tenant}-a", 0)), holdout=ids[:1])
    memory.activate_adapter(first, tenant=tenant)
    memory.mark_consolidated([i for i in ids if i not in b_ids], version=first, tenant=tenant)
    second = memory.register_adapter(tenant=tenant, base_model="tiny", method="kd", seed=1, promoted=True,
                                     metrics={"nll": 1.2}, covered=b_ids, parent=first,
                                     path=str(real_lora(adapters / f"{tenant}-b", 1)))
    memory.activate_adapter(second, tenant=tenant)
    memory.register_adapter(tenant=tenant, base_model="tiny", method="sft", seed=2, promoted=False,
                            metrics={"nll": 9.0}, covered=ids, parent=second,
                            path=str(real_lora(adapters / f"{tenant}-c", 2)))
    memory.record_serving_mode(tenant=tenant, mode="memory+adapter", adapter=second, metric="nll",
                               figures={"memory": 1.4, "memory+adapter": 1.2}, reason="lowest held-out NLL",
                               job_version=second)


def answers(memory: VectorMemory, tenant: str) -> dict[str, Any]:
    """What `tenant` answers and holds, free of this store's ids and version names: the hits of `QUERIES` with
    their scores, the active adapter and its weights, the lineage, the serving mode, the counts, a served answer."""
    adapters = memory.adapters(tenant)
    name = {a.version: (a.method, a.seed, a.created_at) for a in adapters}
    active = memory.active_adapter(tenant)
    counts = memory.store.counts(tenant=tenant)
    mode = memory.serving_mode(tenant)
    served = memory.answer(f"{tenant}-served", tenant=tenant) if tenant_has_served(memory, tenant) else None
    return {
        "hits": {q: [(h.trigger, h.response, h.lesson, h.rejected, h.support, h.instruction, round(h.score, 6))
                     for h in memory.search(q, k=5, tenant=tenant, now=NOW)] for q in QUERIES},
        "active": None if active is None else (name[active.version], weights(Path(active.path))),
        "lineage": [(name[a.version], a.status, name.get(a.parent or ""), name.get(a.previous or ""), a.metrics,
                     len(a.covered), len(a.holdout)) for a in adapters],
        "mode": None if mode is None else (mode.mode, name.get(mode.adapter or ""), mode.figures, mode.reason),
        "counts": {k: v for k, v in counts.items() if k not in ("utility", "last_seen", "adapters")},
        "utility": sorted(counts["utility"].round(9).tolist()),
        "feedback": memory.store.feedback_counts(tenant=tenant),
        "served": None if served is None else (served.status, served.record["feedback"],
                                               len(served.served["experiences"])),
        "consolidated": sorted(name.get(e.consolidated_in or "", ("-",))[0] for e in memory.iter_experiences(tenant)),
    }


def tenant_has_served(memory: VectorMemory, tenant: str) -> bool:
    try:
        memory.answer(f"{tenant}-served", tenant=tenant)
    except KeyError:
        return False
    return True


def weights(folder: Path) -> bytes:
    return (folder / "adapter_model.safetensors").read_bytes()


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def rewrite(path: Path, target: Path, changed: dict[str, bytes | None], *, fix_manifest: bool = False) -> Path:
    """A copy of the archive `path` at `target` with members replaced (None: removed); `fix_manifest` updates the
    manifest's sizes and checksums to match, as a careful forger would."""
    import hashlib

    files = {**members(path), **{k: v for k, v in changed.items() if v is not None}}
    files = {k: v for k, v in files.items() if changed.get(k, b"") is not None}
    if fix_manifest:
        manifest = json.loads(files["manifest.json"])
        for name, data in files.items():
            if name != "manifest.json":
                manifest["members"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        files["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return target

