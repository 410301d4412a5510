"""The prompt template of MultiModal-GPT: the one home of its strings (reference.md section 5).

A conversation renders to a list of :class:`Segment`. Three kinds exist: prompt text (never trained),
response text (trained; the tokenizer closes each with EOS, which is trained too) and image placeholders
(exactly one ``<image>`` token each). Keeping them apart is what lets ``tokenize.py`` assign labels and
image positions without searching the text afterwards.

Rendered, with ``H`` the header below::

    H\\n\\n### Image:\\n<image>\\n\\n### Instruction:\\n{question}\\n\\n### Response:\\n{response}<EOS>
    \\n\\n### Instruction:\\n{question 2}\\n\\n### Response:\\n{response 2}<EOS>

``### Image:`` is left out for language-only conversations; ``\\n\\n### Input:\\n{input}`` follows the
instruction when a message has an input (Alpaca/Dolly context, multiple-choice options joined by ", ").
Beyond the paper: a later user turn that brings new images gets its own ``### Image:`` section, and several
images of one turn are separated by a newline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mmgpt.data.conversation import Conversation, Message
from mmgpt.tokens import IMAGE

HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
IMAGE_SECTION = "### Image:\n"
INSTRUCTION_SECTION = "### Instruction:\n"
INPUT_SECTION = "### Input:\n"
RESPONSE_SECTION = "### Response:\n"
SECTION_BREAK = "\n\n"
OPTIONS_SEPARATOR = ", "

# Paper Table 3: instructions that turn a caption into an instruction-following sample.
CAPTION_INSTRUCTIONS: tuple[str, ...] = (
    "Can you describe the image?",
    "Could you provide a description of the image?",
    "What do you see in this image?",
    "Share your thoughts on the content of the image.",
    "Please narrate what's happening in the picture.",
    "Can you give a brief explanation of the image?",
    "Describe the main elements and details present in the image.",
    "In your own words, what is depicted in the image?",
    "How would you describe the image's content in a caption?",
    "Can you suggest an insightful caption that highlights the underlying message of the image?",
)

# MiniGPT-4's stage-2 description requests, used for its cc_sbu_align captions.
DESCRIPTION_INSTRUCTIONS: tuple[str, ...] = (
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
)

# The short "why" follow-ups appended to A-OKVQA questions, whose targets carry a rationale.
REASON_QUESTIONS: tuple[str, ...] = (
    "Why?",
    "Why is this?",
    "And why?",
    "What is the reason?",
    "And can you tell me why?",
    "Can you tell me why?",
    "Can you tell me the reason?",
)


def template_texts() -> tuple[str, ...]:
    """The template's own text (header and section titles), for training a tiny tokenizer that knows them."""
    return (HEADER, IMAGE_SECTION + INSTRUCTION_SECTION + INPUT_SECTION + RESPONSE_SECTION)


def aokvqa_answer(choice: str, rationales: Sequence[str]) -> str:
    """A-OKVQA target text: ``The answer is {choice}. Because {rationales joined by spaces}``."""
    return f"The answer is {choice}. Because {' '.join(rationales)}"


def join_options(options: Sequence[str]) -> str:
    """Multiple-choice options as the ``### Input:`` text."""
    return OPTIONS_SEPARATOR.join(options)


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text. ``response`` segments are trained and, unless ``eos=False`` (the inner pieces
    of a pretraining Document), each followed by EOS."""

    text: str
    response: bool = False
    eos: bool = True

    @property
    def is_image(self) -> bool:
        """An image placeholder: becomes exactly one ``<image>`` token, bound to the next image in order."""
        return self.text == IMAGE and not self.response


def _user_segments(message: Message, *, first: bool) -> list[Segment]:
    segments: list[Segment] = []
    prefix = HEADER + SECTION_BREAK if first else SECTION_BREAK
    if message.images:
        segments.append(Segment(prefix + IMAGE_SECTION))
        for i, _ in enumerate(message.images):
            if i:
                segments.append(Segment("\n"))
            segments.append(Segment(IMAGE))
        prefix = SECTION_BREAK
    text = prefix + INSTRUCTION_SECTION + message.text
    if message.input:
        text += SECTION_BREAK + INPUT_SECTION + message.input
    segments.append(Segment(text + SECTION_BREAK + RESPONSE_SECTION))
    return segments


def render(conversation: Conversation) -> list[Segment]:
    """Segments of a whole conversation. If it ends with a user message, the last segment is the prompt
    ``...### Response:\\n`` that generation continues from (see :func:`render_prompt`)."""
    segments: list[Segment] = []
    for i, message in enumerate(conversation.messages):
        if message.role == "user":
            segments.extend(_user_segments(message, first=i == 0))
        else:
            segments.append(Segment(message.text, response=True))
    return segments


def require_prompt(conversation: Conversation) -> None:
    """A generation prompt ends with the user's new message (every prompt style's ``render_prompt`` checks)."""
    if not conversation.is_prompt:
        raise ValueError(
            "a generation prompt must end with the user's new message; add it with "
            "conversation.with_user_turn(text, images)"
        )


def render_prompt(conversation: Conversation) -> list[Segment]:
    """Segments for generation: the history plus the new user turn, ending with ``### Response:\\n``."""
    require_prompt(conversation)
    return render(conversation)


def render_text(conversation: Conversation, *, eos: str = "") -> str:
    """The rendered string (for display and debugging); ``eos`` is written after each response."""
    return "".join(s.text + (eos if s.response else "") for s in render(conversation))


def extract_response(generated: str) -> str:
    """The answer in a generated text: what follows the last ``### Response:`` and precedes a new section.

    The demo of the reference takes the text after the last ``### Response:``; a model that keeps going
    starts a new ``### Instruction:``, which is cut here too.
    """
    marker = RESPONSE_SECTION.rstrip("\n")
    answer = generated.rsplit(marker, 1)[-1]
    for stop in (SECTION_BREAK + "###", "\n###"):
        answer = answer.split(stop, 1)[0]
    return answer.strip()
