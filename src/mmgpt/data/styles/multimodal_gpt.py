"""MultiModal-GPT's prompt style: the instruction template of ``data/templates.py`` (its one home)."""

from __future__ import annotations

from dataclasses import dataclass

from mmgpt.data.conversation import Conversation
from mmgpt.data.templates import Segment, extract_response, render, render_prompt, render_text


@dataclass(frozen=True)
class MultiModalGptStyle:
    """``### Image:`` / ``### Instruction:`` / ``### Response:`` sections after the Alpaca-style header; one
    image placeholder per image; generation stops at EOS or when the model starts a new section."""

    name: str = "multimodal-gpt"
    system: str = "MultiModal-GPT"
    stop_strings: tuple[str, ...] = ("\n###",)
    bos: bool | None = None  # as the tokenizer does

    def render(self, conversation: Conversation) -> list[Segment]:
        return render(conversation)

    def render_prompt(self, conversation: Conversation) -> list[Segment]:
        return render_prompt(conversation)

    def render_text(self, conversation: Conversation, *, eos: str = "") -> str:
        return render_text(conversation, eos=eos)

    def extract_response(self, generated: str) -> str:
        return extract_response(generated)
