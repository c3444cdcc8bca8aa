"""Deterministic test prompts, tokenized with the served model's chat template."""

from __future__ import annotations

from functools import cache

from gateway.tokenizer import PromptTokenizer
from prfaas.model import DEFAULT_MODEL_DIR

TOPICS = ["rivers", "mountains", "libraries", "trains", "gardens", "bridges", "markets",
          "lighthouses", "orchards", "observatories"]


@cache
def tokenizer() -> PromptTokenizer:
    return PromptTokenizer(str(DEFAULT_MODEL_DIR))


def chat(text: str, system: str | None = None) -> list[int]:
    messages = [{"role": "system", "content": system}] if system else []
    return tokenizer().chat(messages + [{"role": "user", "content": text}])


def long_document(paragraphs: int) -> str:
    """Readable filler: numbered notes about places, a few dozen tokens each."""
    lines = []
    for i in range(paragraphs):
        topic = TOPICS[i % len(TOPICS)]
        lines.append(f"Note {i}: the town's {topic} were described in report {i * 7 % 101}, "
                     f"which counted {i * 13 % 97} visitors and {i * 3 % 11} repairs that year.")
    return "\n".join(lines)


def exactness_prompts() -> dict[str, list[int]]:
    """>= 5 prompts: short chats, one over 1000 tokens, two sharing a long prefix, and one
    of exactly two full blocks (256 tokens)."""
    shared = long_document(30)
    prompts = {
        "capital": chat("What is the capital of France?"),
        "colors": chat("Name three colors and one fruit of each color."),
        "long": chat(long_document(45) + "\nWhich note mentions the most visitors?"),
        "shared_a": chat(shared + "\nSummarize the notes about rivers.",
                         system="You are a careful archivist."),
        "shared_b": chat(shared + "\nHow many notes are about trains?",
                         system="You are a careful archivist."),
    }
    prompts["full_blocks"] = prompts["long"][:256]
    return prompts
