"""Generated classification tasks (topics for the drift benchmarks), made here from templates and slot fillers,
seeded; not collected.

- `intents`: a bank's chat requests, each one of 12 intents, from per-intent templates. Requests of one intent are
  paraphrases of each other and lie near each other, so the memory's vote does well on it, and its labels are new
  to a model trained on NFCats' question categories.
- `products`: a shop's customer messages, each about one product, asked which of 6 departments sells it. Every
  department shares the same 10 message templates (delivery, damage, returns, payment, ...), so a request's
  nearest logged requests are mostly the same template about another department's product: the vote is often
  wrong, while the answer follows from the product's name (36 products, 6 a department), which a model can learn.
- `flights`: a travel desk's requests, each naming two of 6 cities, asked which city the traveller flies to. A
  request from A to B reads almost as one from B to A to a sentence embedder, so a request's nearest logged
  requests answer A about as often as B and the vote is near a coin toss between them, while the answer follows
  from the words around each city ("from", "to", "leaving", "arriving in"), which a model can learn.
"""

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
PRODUCT_INSTRUCTION = "Which department sells the product this customer writes about? Answer with one of: {labels}."
PRODUCTS: dict[str, list[str]] = {
    "KITCHEN": ["blender", "toaster", "frying pan", "kettle", "coffee maker", "saucepan"],
    "CLOTHING": ["sweater", "rain jacket", "pair of jeans", "wool scarf", "winter coat", "hoodie"],
    "ELECTRONICS": ["laptop", "pair of headphones", "tablet", "smartphone", "computer monitor", "digital camera"],
    "GARDEN": ["lawn mower", "garden hose", "pair of pruning shears", "wheelbarrow", "leaf blower", "garden rake"],
    "TOYS": ["teddy bear", "jigsaw puzzle", "toy train set", "doll house", "kite", "set of building blocks"],
    "BOOKS": ["novel", "atlas", "dictionary", "biography", "poetry collection", "travel guide"],
}
ORDER_TEMPLATES = [
    "I ordered a {product} on {day} and it still has not arrived, can you check the delivery status of my order",
    "the {product} I received yesterday was damaged in the box, how do I get a replacement sent to me",
    "is the {product} in stock at the moment, and how soon could it be delivered to my address in {city}",
    "I would like to return the {product} I bought two weeks ago, it is not what I expected",
    "do you offer gift wrapping for the {product}? It is a birthday present for {person}",
    "can I pay for the {product} in three monthly installments instead of all at once",
    "the price of the {product} dropped the day after I bought it, can I get the difference refunded",
    "I was sent a {product} but the invoice lists a different item, what should I do now",
    "my order with the {product} was charged twice on my card on {day}, please fix this",
    "could you hold the {product} for me until {day} so I can pick it up at the store in {city}",
]
PRODUCT_FILLERS = {**FILLERS, "day": ["Monday", "Friday", "the weekend", "the 3rd", "the 17th", "Tuesday"]}
# each department's templates: the shared ones, about each of its products
PRODUCT_TEMPLATES = {label: [t.replace("{product}", p) for p in products for t in ORDER_TEMPLATES]
                     for label, products in PRODUCTS.items()}
FLIGHT_INSTRUCTION = "Which city does this traveller want to fly to? Answer with one of: {labels}."
CITIES = ["Cairo", "Chicago", "Madrid", "Oslo", "Rome", "Sydney"]
FLIGHT_TEMPLATES = [
    "book me a flight from {a} to {b}", "I need a ticket to {b}, I'm leaving from {a}",
    "flying out of {a} on {day}, what's the cheapest way into {b}", "my trip starts in {a} and ends in {b}",
    "can you find me a seat to {b} departing {a}", "I'm in {a} and have to be in {b} by {day}",
    "get me from {a} to {b} on {day}", "one way to {b}, departing from {a}",
    "arriving in {b}, coming from {a}, are there direct flights", "I want to fly into {b}, my home airport is {a}",
]
# each destination's templates: the shared ones, from each other city
FLIGHT_TEMPLATES_BY_CITY = {b.upper(): [t.replace("{a}", a).replace("{b}", b) for a in CITIES if a != b
                                        for t in FLIGHT_TEMPLATES] for b in CITIES}
# task -> (its instruction, label -> templates, slot -> fillers)
TASKS: dict[str, tuple[str, dict[str, list[str]], dict[str, list[str]]]] = {
    "intents": (INSTRUCTION, TEMPLATES, FILLERS), "products": (PRODUCT_INSTRUCTION, PRODUCT_TEMPLATES, PRODUCT_FILLERS),
    "flights": (FLIGHT_INSTRUCTION, FLIGHT_TEMPLATES_BY_CITY, PRODUCT_FILLERS)}
OPENINGS = ["", "hi, ", "hello, ", "hey there, ", "quick question: ", "good morning, ", "sorry to bother you, "]
CLOSINGS = ["", " please", " thanks", ", thank you", "?", " asap", "."]


def utterances(seed: int, task: str = "intents") -> list[tuple[str, str]]:
    """Every distinct (utterance, label) `task`'s templates make (40 fillings of each where a label has 5 templates,
    at least 3 where it has more), in a seeded order."""
    _, templates, fillers = TASKS[task]
    rng = random.Random(seed)
    per_template = max(3, 200 // max(len(ts) for ts in templates.values()))
    out: dict[str, str] = {}
    for label, ts in templates.items():
        for template in ts:
            for _ in range(per_template):
                text = template.format(**{k: rng.choice(v) for k, v in fillers.items()})
                out.setdefault(rng.choice(OPENINGS) + text + rng.choice(CLOSINGS), label)
    pairs = sorted(out.items())
    rng.shuffle(pairs)
    return pairs


def prompt(utterance: str, task: str = "intents") -> str:
    instruction, templates, _ = TASKS[task]
    return instruction.format(labels=", ".join(sorted(templates))) + "\n\n" + utterance


def generated_task(task: str, n_logs: int, n_eval: int, seed: int, start: float, user: str | None = None
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`task`'s (`n_logs` logged interactions, each a liked right answer, timestamped from `start`; `n_eval` new
    requests with their reference label, none of them logged), in the log schema and `read_eval`'s format."""
    if task not in TASKS:
        raise ValueError(f"unknown generated task {task!r}: expected one of {sorted(TASKS)}")
    pairs = utterances(seed, task)
    if n_logs + n_eval > len(pairs):
        raise ValueError(f"the {task} templates make {len(pairs)} utterances; {n_logs} + {n_eval} asked for")
    user = user or task
    logs = [{"id": f"{task}-{i}", "timestamp": start + i, "user": f"{user}{i % 50}",
             "messages": [{"role": "user", "content": prompt(u, task)}, {"role": "assistant", "content": label}],
             "feedback": [{"turn": 1, "kind": "like"}]} for i, (u, label) in enumerate(pairs[:n_logs])]
    items = [{"id": f"{task}-test-{i}", "messages": [{"role": "user", "content": prompt(u, task)}],
              "reference": [label]} for i, (u, label) in enumerate(pairs[n_logs:n_logs + n_eval])]
    return logs, items


def intent_task(n_logs: int, n_eval: int, seed: int, start: float, user: str = "intent"
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The intents task (`generated_task`), its ids as before."""
    logs, items = generated_task("intents", n_logs, n_eval, seed, start, user)
    for r in logs + items:
        r["id"] = r["id"].replace("intents-", "intent-")
    return logs, items
