"""mPLUG-Owl's prompt style: its instruction transcript (prefix-systems.md A2; the released SFT jsonl's ``text``).

Rendered (``S`` the system line below, ``</s>`` the EOS after each answer)::

    <s>S\\nHuman: <image>\\nHuman: {question}\\nAI: {answer}</s>\\nHuman: {question 2}\\nAI: {answer 2}</s>

one ``Human: <image>`` line per image of a user turn, before its question (the release's multi-image form; two
images are two lines, so they are two images); no image line in a text-only conversation. A prompt ends with
``\\nAI: `` (with its trailing space). A message's ``input`` (Alpaca/Dolly context) follows its question on the
next line, as the release's text-only rows write it. BOS is prepended: mPLUG-Owl's tokenizer does not add one, its
training code prepends it explicitly (``bos`` below, read by ``data/tokenize.py``).

Tokenisation - one choice for training and generation. The original tokenised training text in chunks split on
``<image>``, ``AI: `` and ``\\nHuman: `` (each chunk with its own SentencePiece dummy prefix "▁"), but its inference
processor split only on ``<image>``, so the same history got other ids there (training has a lone ``▁`` before
each question and ``▁AI`` where the demo has ``AI``). Our segments ARE the training chunks (:func:`render`
below), and chat, evaluation and serving tokenise prompts with the same segments, so every prompt is token for token
what the released stage-2 weights were tuned on, and a conversation's history tokenises identically on every turn
(what the chat's KV-cache reuse needs). The consequence: our prompts differ from the original demo's by those
role-marker ids; the released model was never trained on the demo's form, so answers can differ from the original
demo's (not verified on real weights).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.templates import Segment, require_prompt
from mmgpt.tokens import IMAGE

SYSTEM = (
    "The following is a conversation between a curious human and AI assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
HUMAN = "\nHuman: "  # opens every user line (the original's chunk boundary)
AI = "AI: "  # opens every answer; the question's line ends with the "\n" before it
# A model that does not end its answer with EOS starts a new human turn: never part of an answer.
STOP = "\nHuman:"


def _user_segments(message: Message) -> list[Segment]:
    segments: list[Segment] = []
    for _ in message.images:
        segments += [Segment(HUMAN), Segment(IMAGE)]
    question = message.text + (f"\n{message.input}" if message.input else "")
    return [*segments, Segment(HUMAN), Segment(question + "\n"), Segment(AI)]


def render(conversation: Conversation) -> list[Segment]:
    """Segments of a whole conversation: the original's training chunks, in order (module docstring)."""
    segments = [Segment(SYSTEM)]
    for message in conversation.messages:
        if message.role == "user":
            segments += _user_segments(message)
        else:
            segments.append(Segment(message.text, response=True))
    return segments


def render_text(conversation: Conversation, *, eos: str = "") -> str:
    """The transcript as one string (the SFT jsonl's ``text`` for a training conversation, with ``eos=""``)."""
    return "".join(s.text + (eos if s.response and s.eos else "") for s in render(conversation))


def extract_response(generated: str) -> str:
    """The answer in generated text: everything before a new ``\\nHuman:`` turn, stripped."""
    return generated.split(STOP, 1)[0].strip()


@dataclass(frozen=True)
class MplugOwlStyle:
    """mPLUG-Owl's transcript (module docstring). Generation stops at EOS (``</s>``: the release's end of an
    answer) or when the model opens a new ``\\nHuman:`` turn (``stop_strings``; the original stopped at EOS only)."""

    name: str = "mplug-owl"
    system: str = "mPLUG-Owl"
    stop_strings: tuple[str, ...] = (STOP,)
    bos: bool = True  # prepend BOS whatever the tokenizer does (the original's training code did)

    def render(self, conversation: Conversation) -> list[Segment]:
        return render(conversation)

    def render_prompt(self, conversation: Conversation) -> list[Segment]:
        require_prompt(conversation)
        return render(conversation)

    def render_text(self, conversation: Conversation, *, eos: str = "") -> str:
        return render_text(conversation, eos=eos)

    def extract_response(self, generated: str) -> str:
        return extract_response(generated)
