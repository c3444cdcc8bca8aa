"""The served model's tokenizer and chat template, so the gateway routes on the same token
ids the engines compute (prompts go to workers as token ids, never as text)."""

from __future__ import annotations

from typing import Any


class PromptTokenizer:
    def __init__(self, model_dir: str) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.eos_token_id: int | None = self._tokenizer.eos_token_id

    def chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
             ) -> list[int]:
        ids = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` alone, without special tokens."""
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        """A completion prompt, tokenized as vLLM's own /v1/completions does."""
        return list(self._tokenizer(text)["input_ids"])

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids)
