"""A custom evaluation grader as a user would write one (the contract of tuneplane/adapters/grader_functions.py):
1.0 for an answer that contains the reference's first word, else 0.0."""

from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    scores = []
    for item in event["items"]:
        words = str(item["reference"]).split()
        scores.append(1.0 if words and words[0] in str(item["answer"]) else 0.0)
    return {"scores": scores}
