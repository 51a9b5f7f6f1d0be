"""A generated intent-classification task (a second topic for the drift benchmarks): a bank's chat requests, each
one of 12 intents, made from per-intent templates and shared slot fillers, seeded. Generated here, not collected:
its utterances are templated paraphrases, so that requests of one intent lie near each other (the memory's vote
does well on it), and its labels are new to a model trained on NFCats' question categories."""

from __future__ import annotations

import random
from typing import Any

INSTRUCTION = "Which banking intent does this message express? Answer with one of: {labels}."
TEMPLATES: dict[str, list[str]] = {
    "BALANCE": ["how much money is in my {account}", "what is the balance of my {account}",
                "can you tell me what's left in my {account}", "show me my {account} balance",
                "do I have enough in my {account} to spend {amount}"],
    "TRANSFER": ["move {amount} from my {account} to my {other}", "transfer {amount} to {person}",
                 "I want to send {amount} to {person}", "can I wire {amount} to my {other}",
                 "put {amount} into my {other} from my {account}"],
    "LOST-CARD": ["I lost my {card}", "my {card} was stolen in {city}", "I can't find my {card} anywhere",
                  "someone took my wallet with my {card}", "block my {card}, it's gone"],
    "PIN": ["I forgot the pin of my {card}", "how do I change the pin on my {card}", "reset my {card} pin",
            "my pin is blocked after three tries", "I want a new pin for my {card}"],
    "DISPUTE": ["there is a charge from {merchant} I don't recognise", "{merchant} charged me twice",
                "I want to dispute a {amount} payment to {merchant}", "I never bought anything at {merchant}",
                "refund the wrong {merchant} charge of {amount}"],
    "ADDRESS": ["I moved to {city}, update my address", "change my home address please",
                "my address in {city} is wrong on file", "how do I update where you send my letters",
                "I have a new address in {city}"],
    "CLOSE-ACCOUNT": ["I want to close my {account}", "please shut down my {account}", "how do I cancel my {account}",
                      "terminate my {account} for good", "I'd like to end my {account} with you"],
    "ACTIVATE-CARD": ["how do I activate my new {card}", "my new {card} arrived, turn it on",
                      "activate the {card} I just received", "my {card} doesn't work yet, it's new",
                      "I need to start using my new {card}"],
    "LIMIT": ["raise the spending limit on my {card}", "can my {card} limit go up to {amount}",
              "I need a higher limit on my {card}", "increase my daily withdrawal limit",
              "my {card} keeps hitting its limit"],
    "TRAVEL": ["I'm travelling to {city} next week", "let you know I'll use my {card} in {city}",
               "set a travel notice for {city}", "will my {card} work abroad in {city}",
               "I'm going on holiday to {city}, don't block my {card}"],
    "BILL": ["pay my {merchant} bill of {amount}", "set up a payment to {merchant}", "I need to pay {merchant} today",
             "schedule {amount} to {merchant} every month", "how do I pay my {merchant} invoice"],
    "STATEMENT": ["send me the statement of my {account}", "where can I download my {account} statement",
                  "I need last month's statement for my {account}", "print the transactions of my {account}",
                  "email me a statement of my {account}"],
}
FILLERS: dict[str, list[str]] = {
    "account": ["checking account", "savings account", "joint account", "business account", "current account"],
    "other": ["savings", "checking account", "brokerage account", "holiday fund", "joint account"],
    "amount": ["$20", "$150", "$75.50", "$1,000", "200 euros", "$42"],
    "person": ["my sister", "John", "my landlord", "a friend", "my mom", "Alex"],
    "card": ["debit card", "credit card", "visa card", "mastercard", "business card"],
    "city": ["Paris", "Tokyo", "Lisbon", "Toronto", "Berlin", "Mexico City"],
    "merchant": ["Netflix", "the electric company", "Amazon", "a gas station", "Spotify", "the phone company"],
}
OPENINGS = ["", "hi, ", "hello, ", "hey there, ", "quick question: ", "good morning, ", "sorry to bother you, "]
CLOSINGS = ["", " please", " thanks", ", thank you", "?", " asap", "."]


def utterances(seed: int) -> list[tuple[str, str]]:
    """Every distinct (utterance, intent) the templates make, in a seeded order."""
    rng = random.Random(seed)
    out: dict[str, str] = {}
    for intent, templates in TEMPLATES.items():
        for template in templates:
            for _ in range(40):
                text = template.format(**{k: rng.choice(v) for k, v in FILLERS.items()})
                out.setdefault(rng.choice(OPENINGS) + text + rng.choice(CLOSINGS), intent)
    pairs = sorted(out.items())
    rng.shuffle(pairs)
    return pairs


def prompt(utterance: str) -> str:
    return INSTRUCTION.format(labels=", ".join(sorted(TEMPLATES))) + "\n\n" + utterance


def intent_task(n_logs: int, n_eval: int, seed: int, start: float, user: str = "intent"
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(`n_logs` logged interactions, each a liked right answer, timestamped from `start`; `n_eval` new requests with
    their reference intent, none of them logged), in the log schema and `read_eval`'s format."""
    pairs = utterances(seed)
    if n_logs + n_eval > len(pairs):
        raise ValueError(f"the templates make {len(pairs)} utterances; {n_logs} + {n_eval} asked for")
    logs = [{"id": f"intent-{i}", "timestamp": start + i, "user": f"{user}{i % 50}",
             "messages": [{"role": "user", "content": prompt(u)}, {"role": "assistant", "content": intent}],
             "feedback": [{"turn": 1, "kind": "like"}]} for i, (u, intent) in enumerate(pairs[:n_logs])]
    items = [{"id": f"intent-test-{i}", "messages": [{"role": "user", "content": prompt(u)}], "reference": [intent]}
             for i, (u, intent) in enumerate(pairs[n_logs:n_logs + n_eval])]
    return logs, items
