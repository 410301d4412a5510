"""Message and Conversation: the one in-memory form of a sample.

Every path into the model goes through a :class:`Conversation`: a dataset row (``sources/*``), a chat turn
(``chat.py``), an evaluation question. Images stay references (a path or an already-open PIL image) until
``images.py`` decodes them, so building millions of conversations costs no image I/O.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Union

if TYPE_CHECKING:  # only for annotations: images.py is the one module that imports PIL
    from PIL.Image import Image as PILImage

Role = Literal["user", "assistant"]
ROLES: tuple[Role, ...] = ("user", "assistant")

# A lazy image: a file path, or an image the caller already holds (the chat UI, tests).
ImageRef = Union[str, "os.PathLike[str]", "PILImage"]


@dataclass(frozen=True)
class Message:
    """One turn. ``input`` is the template's optional ``### Input:`` section (Alpaca/Dolly context, or the
    options of a multiple-choice question); images belong to user turns and are shown before the instruction.
    """

    role: Role
    text: str
    images: Sequence[ImageRef] = field(default_factory=tuple)
    input: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"message role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.text, str):
            raise TypeError(f"message text must be a str, got {type(self.text).__name__}")
        if self.role == "assistant" and (self.images or self.input):
            raise ValueError("only user messages carry images or an input section; the assistant only answers")
        # A tuple keeps the frozen dataclass honestly immutable and hashable-ish for callers that cache.
        object.__setattr__(self, "images", tuple(self.images))


@dataclass(frozen=True)
class Conversation:
    """Alternating user/assistant messages, starting with the user.

    A training sample ends with an assistant message; a prompt for generation ends with a user message.
    ``source`` and ``id`` only travel along for reports ("llava_detail row 17 was dropped because ...").
    """

    messages: Sequence[Message]
    source: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        if not self.messages:
            raise ValueError("a conversation needs at least one message")
        for i, message in enumerate(self.messages):
            expected = ROLES[i % 2]
            if message.role != expected:
                raise ValueError(
                    f"message {i} of conversation {self.id or '(no id)'} is from {message.role!r}, expected "
                    f"{expected!r}: turns alternate user/assistant and start with the user"
                )

    @property
    def images(self) -> list[ImageRef]:
        """Every image in the order its ``<image>`` token appears in the rendered text."""
        return [image for message in self.messages for image in message.images]

    @property
    def is_prompt(self) -> bool:
        """True when the last message awaits an answer (the shape used for generation)."""
        return self.messages[-1].role == "user"

    def turns(self) -> list[tuple[Message, Message | None]]:
        """(user, assistant) pairs: messages 2k and 2k+1. The last answer is None for a prompt.

        Pairing 2k with 2k+1 is the fix for the reference's multi-turn bug, which paired i with i+1 and so
        trained half of the turns with the roles swapped (reference.md section 4).
        """
        m = self.messages
        return [(m[i], m[i + 1] if i + 1 < len(m) else None) for i in range(0, len(m), 2)]

    def with_user_turn(self, text: str, images: Sequence[ImageRef] = (), input: str | None = None) -> Conversation:
        """A new conversation with one more user message (the chat module's next prompt)."""
        return Conversation([*self.messages, Message("user", text, images, input)], self.source, self.id)

    def with_answer(self, text: str) -> Conversation:
        """A new conversation with the assistant's answer to the pending user message."""
        return Conversation([*self.messages, Message("assistant", text)], self.source, self.id)


def single_turn(
    question: str,
    answer: str | None,
    *,
    images: Sequence[ImageRef] = (),
    input: str | None = None,
    source: str = "",
    id: str = "",
) -> Conversation:
    """The common case: one question (with images / an input section) and its answer (None for a prompt)."""
    messages = [Message("user", question, images, input)]
    if answer is not None:
        messages.append(Message("assistant", answer))
    return Conversation(messages, source=source, id=id)
