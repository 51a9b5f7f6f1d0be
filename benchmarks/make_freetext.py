"""A free-text development set of facts no model can know, taught once each in logs and asked in other words.

    python benchmarks/make_freetext.py --out data/freetext            # the committed copy (seed 0)
    python benchmarks/make_freetext.py --out /tmp/ft --seed 3 --offices 12 --products 12

Made-up offices and products, each with facts of the same few kinds (a door code, a Wi-Fi password and a support
extension per office; a firmware version, a refund window and a warranty per product), so that the memory holds
many similar facts: every office has a door code, every product a firmware version, and the values of one kind
look alike. Every value is unique (no two facts share a number), so an answer that contains a fact's value states
that fact and not a neighbour's.

Each fact is taught once in `logs.jsonl` (logmem's native log schema): half by a liked right answer, half by a wrong
answer (another fact's value of the same kind, the likeliest confusion) that the user corrected with the right one
(a `{"kind": "correction", "text": ...}` feedback item on that turn), alternating within each kind. A few unrelated
helpdesk exchanges, liked, sit among them. `dev.eval.jsonl` asks each fact twice in phrasings that never appear in
the logs (`{"id", "messages", "reference", "taught", "fact"}`; `reference` is the bare value). Deterministic by seed.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

OFFICES = ["Lisbon", "Tampere", "Bergen", "Ghent", "Porto", "Graz", "Leeds", "Krakow", "Aarhus", "Bilbao",
           "Utrecht", "Brno", "Turku", "Cork", "Basel", "Lyon"]
PRODUCTS = ["Zephyr X2 router", "Orbit 5 thermostat", "Lumen Pro camera", "Nimbus hub", "Quill S tablet",
            "Aster mesh node", "Kestrel doorbell", "Vela speaker", "Corvid smart lock", "Tessel light strip",
            "Pallas air purifier", "Merlin baby monitor", "Sable dashcam", "Ferro smart plug", "Halcyon fan",
            "Juno scale"]
WORDS = ["amber", "falcon", "cedar", "violet", "harbor", "quartz", "maple", "copper", "lantern", "meadow", "orbit",
         "pepper", "raven", "saffron", "thistle", "willow", "juniper", "cobalt", "ember", "fjord"]

# kind -> (the entity it belongs to, how a user asks it in the logs, how it is asked at evaluation (other words),
# how an answer states it)
KINDS: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "door code": ("office",
                  ["What is the door code for the {e} office?", "door code {e} office?"],
                  ["I'm standing outside our {e} site, which keypad number lets me in?",
                   "Could you remind me how to unlock the front entrance in {e}?",
                   "Which digits open the entrance at the {e} branch?"],
                  ["The door code for the {e} office is {v}.", "It's {v} for the {e} office door."]),
    "Wi-Fi password": ("office",
                       ["What's the Wi-Fi password at the {e} office?", "wifi password for {e} office"],
                       ["My laptop wants a network key at the {e} branch, what do I type?",
                        "How do I get online on the wireless network in our {e} office?",
                        "Which passphrase joins the guest network at {e}?"],
                       ["The Wi-Fi password at the {e} office is {v}.", "Use {v} to join the {e} office Wi-Fi."]),
    "support extension": ("office",
                          ["What is the support extension for the {e} office?", "IT support extension {e}?"],
                          ["Which internal number do I dial for IT help at the {e} branch?",
                           "Who do I ring for tech support when I'm in {e}, what's the number?",
                           "Phone extension of the helpdesk that covers {e}?"],
                          ["The {e} office support extension is {v}.", "Dial extension {v} for support in {e}."]),
    "firmware version": ("product",
                         ["What is the latest firmware version for the {e}?", "current firmware {e}?"],
                         ["Which software release should my {e} be running after updating?",
                          "Is there a newer build for the {e}? What number is the newest one?",
                          "To what version should I upgrade my {e}?"],
                         ["The latest firmware for the {e} is version {v}.", "The {e} runs firmware {v} now."]),
    "refund window": ("product",
                      ["How long is the refund window for the {e}?", "refund period {e}?"],
                      ["How many days do I have to send back a {e} for my money?",
                       "Until when can I return my {e} and get reimbursed?",
                       "If I change my mind about the {e}, how long can I wait before returning it?"],
                      ["The {e} can be refunded within {v}.", "You have {v} to return the {e} for a refund."]),
    "warranty": ("product",
                 ["How long is the warranty on the {e}?", "warranty length {e}?"],
                 ["For how long is my {e} covered if it breaks?",
                  "My {e} stopped working, how long does the guarantee last?",
                  "What's the coverage period if the {e} is faulty?"],
                 ["The {e} has a warranty of {v}.", "The {e} is covered for {v}."]),
}
FILLER = [  # unrelated helpdesk exchanges (liked), as a real tenant's logs hold
    ("How do I book a meeting room?", "Open the calendar, choose Rooms, pick a free slot and add the room as a guest."),
    ("How can I reset my password?", "Go to the account page, choose Forgot password and follow the emailed link."),
    ("Where do I submit my expenses?", "Expenses go through the finance portal under Claims, with the receipts."),
    ("How do I request a new laptop?", "File a hardware request in the IT portal; your manager approves it."),
    ("Can I work from home on Fridays?", "Yes, remote Fridays are fine if your team calendar shows it."),
    ("How do I add a printer?", "Open Settings, Printers, Add, and pick the printer named after your floor."),
    ("Who approves holiday requests?", "Your line manager approves holidays in the HR system."),
    ("How do I join the all-hands call?", "The all-hands link is in the company calendar invite each month."),
]


@dataclass(frozen=True)
class Fact:
    id: str
    kind: str
    entity: str
    value: str
    taught: str  # "like" or "correction"


def values(kind: str, n: int, rng: random.Random, used: set[str]) -> list[str]:
    """`n` values for facts of `kind`, alike in shape and distinct from each other and from `used`."""
    out: list[str] = []
    while len(out) < n:
        if kind == "door code":
            v = f"{rng.randint(1000, 6999)}"
        elif kind == "support extension":
            v = f"{rng.randint(7000, 9999)}"
        elif kind == "Wi-Fi password":
            v = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{rng.randint(10, 99)}"
        elif kind == "firmware version":
            v = f"{rng.randint(2, 9)}.{rng.randint(0, 19)}.{rng.randint(1, 40)}"
        elif kind == "refund window":
            v = f"{rng.randint(8, 95)} days"
        else:
            v = f"{rng.randint(13, 59)} months"
        if v not in used:
            used.add(v)
            out.append(v)
    return out


def make_facts(offices: int, products: int, rng: random.Random) -> list[Fact]:
    facts, used = [], set()
    for kind, (owner, *_) in KINDS.items():
        entities = OFFICES[:offices] if owner == "office" else PRODUCTS[:products]
        for i, (e, v) in enumerate(zip(entities, values(kind, len(entities), rng, used))):
            facts.append(Fact(f"{kind.replace(' ', '-').lower()}:{e}", kind, e, v,
                              "like" if i % 2 == 0 else "correction"))
    return facts


def make_logs(facts: list[Fact], rng: random.Random) -> list[dict]:
    records = []
    for i, f in enumerate(facts):
        _, taught, _, stated = KINDS[f.kind]
        question = rng.choice(taught).format(e=f.entity)
        right = rng.choice(stated).format(e=f.entity, v=f.value)
        if f.taught == "like":
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": right}]
            feedback = [{"turn": 1, "kind": "like"}]
        else:  # the model said another fact's value of the same kind; the user gave the right answer
            other = rng.choice([g for g in facts if g.kind == f.kind and g.id != f.id])
            wrong = rng.choice(stated).format(e=f.entity, v=other.value)
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": wrong}]
            feedback = [{"turn": 1, "kind": "correction", "text": right}]
        records.append({"id": f"ft-{i:04d}", "user": f"u{rng.randint(1, 40)}", "timestamp": 1_700_000_000 + 3600 * i,
                        "messages": messages, "feedback": feedback})
    for j, (q, a) in enumerate(FILLER):
        records.append({"id": f"ft-filler-{j:02d}", "user": f"u{rng.randint(1, 40)}",
                        "timestamp": 1_700_000_000 + 1800 * (2 * j + 1),
                        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                        "feedback": [{"turn": 1, "kind": "like"}]})
    rng.shuffle(records)
    return records


def make_eval(facts: list[Fact], rng: random.Random, asks: int) -> list[dict]:
    items = []
    for f in facts:
        for j, q in enumerate(rng.sample(KINDS[f.kind][2], asks)):
            items.append({"id": f"{f.id}#{j}", "messages": [{"role": "user", "content": q.format(e=f.entity)}],
                          "reference": f.value, "taught": f.taught, "fact": f.id})
    return items


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/freetext", help="folder for logs.jsonl and dev.eval.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offices", type=int, default=8, help=f"at most {len(OFFICES)}")
    p.add_argument("--products", type=int, default=8, help=f"at most {len(PRODUCTS)}")
    p.add_argument("--asks", type=int, default=2, help="eval questions per fact (at most 3)")
    args = p.parse_args(argv)
    if not (2 <= args.offices <= len(OFFICES) and 2 <= args.products <= len(PRODUCTS) and 1 <= args.asks <= 3):
        p.error("--offices/--products must be 2..16 and --asks 1..3")
    rng = random.Random(args.seed)
    facts = make_facts(args.offices, args.products, rng)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs, items = make_logs(facts, rng), make_eval(facts, rng, args.asks)
    write_jsonl(out / "logs.jsonl", logs)
    write_jsonl(out / "dev.eval.jsonl", items)
    print(f"{len(facts)} facts, {len(logs)} log records, {len(items)} questions -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
