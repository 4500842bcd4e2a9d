"""Writes local/data/demo.jsonl: a ticket-routing task a tiny random model learns in about a minute of CPU.

Each user turn is a short ticket with one keyword among filler words; the answer is the team that keyword belongs
to. The fillers vary, so the model has to find the keyword and learn to stop after the team name.

    python local/data/make_demo.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TEAMS = {
    "invoice": "billing",
    "password": "accounts",
    "delivery": "shipping",
    "crash": "engineering",
    "refund": "payments",
    "contract": "legal",
    "laptop": "helpdesk",
    "salary": "people",
}
FILLERS = (
    "please help today my the urgent again still since monday team hello thanks issue with about new old "
    "question broken missing wrong late order account customer yesterday week"
).split()
SYSTEM = "You route support tickets. Answer with the team name only."


def ticket(rng: random.Random, keyword: str) -> str:
    words = rng.sample(FILLERS, 4)
    words.insert(rng.randrange(len(words) + 1), keyword)
    return " ".join(words)


DEMO = Path(__file__).with_name("demo.jsonl")


def main(path: Path = DEMO, count: int = 240) -> None:
    rng = random.Random(7)
    keywords = list(TEAMS)
    lines: list[str] = []
    while len(lines) < count:  # no duplicates: the validator would warn about them
        keyword = keywords[len(lines) % len(keywords)]
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Ticket: {ticket(rng, keyword)}"},
            {"role": "assistant", "content": TEAMS[keyword]},
        ]
        line = json.dumps({"messages": messages})
        if line not in lines:
            lines.append(line)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
