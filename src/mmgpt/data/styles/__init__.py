"""Prompt styles: how each system writes a conversation for its model - a registry like the data sources'.

A style renders a :class:`~mmgpt.data.conversation.Conversation` to segments (prompt text, trained response
text, image placeholders: ``templates.Segment``), owns the stop strings that end an answer, and finds the answer
in generated text. Tokenisation (``data/tokenize.py``) turns segments into ids, each segment on its own, and takes
the ids of an image from the model (``PromptFormat``). A model names its style in ``ModelConfig.prompt_style``.

Where a new one goes: a module in this package with a class that has the attributes of :class:`PromptStyle`,
and one line in ``STYLES``.
"""

from __future__ import annotations

from typing import Protocol

from mmgpt.config import ConfigError, closest
from mmgpt.data.conversation import Conversation
from mmgpt.data.styles.minigpt4 import MiniGpt4Llama2Style, MiniGpt4Stage1Style, MiniGpt4Style
from mmgpt.data.styles.mplug_owl import MplugOwlStyle
from mmgpt.data.styles.multimodal_gpt import MultiModalGptStyle
from mmgpt.data.templates import Segment


class PromptStyle(Protocol):
    name: str
    system: str  # the system whose template it is (a title for what answers in it)
    stop_strings: tuple[str, ...]  # generation stops at these (besides EOS); the answer is cut before them
    # Whether a BOS starts every sequence (mPLUG-Owl's code prepends one its tokenizer does not add); None: as the
    # tokenizer does.
    bos: bool | None

    def render(self, conversation: Conversation) -> list[Segment]:
        """Segments of a whole conversation (training); ending with a user message, it is a prompt."""
        ...

    def render_prompt(self, conversation: Conversation) -> list[Segment]:
        """Segments for generation: the history plus the new user turn, ending where the answer starts."""
        ...

    def render_text(self, conversation: Conversation, *, eos: str = "") -> str:
        """The rendered string (for display); ``eos`` is written after each response."""
        ...

    def extract_response(self, generated: str) -> str:
        """The answer in a generated text."""
        ...


STYLES: dict[str, PromptStyle] = {
    style.name: style
    for style in (
        MultiModalGptStyle(),
        MiniGpt4Style(),
        MiniGpt4Stage1Style(),
        MiniGpt4Llama2Style(),
        MplugOwlStyle(),
    )
}


def get_style(name: str) -> PromptStyle:
    style = STYLES.get(name)
    if style is None:
        raise ConfigError(f"unknown prompt style {name!r}{closest(name, STYLES)}; styles: {', '.join(STYLES)}")
    return style


__all__ = ["STYLES", "PromptStyle", "get_style"]
