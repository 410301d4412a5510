"""MiniGPT-4's prompt styles: the one home of its template strings (prefix-systems.md A1 and F).

Three styles, each the rendering the original used at that place:

- ``minigpt4`` (Vicuna v0 releases). **Training** (``render``: stage 2, ``train_configs/minigpt4_stage2_finetune.yaml``)
  is ``###Human: <Img><ImageHere></Img> {instruction} ###Assistant: `` + answer + ``###`` - no system text, a space
  before ``###Assistant:`` and one after it, which SentencePiece turns into a lone ``▁`` before the answer's own
  first piece (the released model was trained so: kept), and ``###`` (``end_sym``) instead of EOS.
  **Generation** (``render_prompt``: what chat, the API and evaluation use) is the demo's ``CONV_VISION``
  (``conversation.py@322ed18``)::

      {SYSTEM}###Human: <Img><ImageHere></Img> {q1}###Assistant: {a1}###Human: {q2}###Assistant:

  The two differ (system line, spacing) in the original itself: the released model was trained on the first and
  served with the second. We keep both, each where the original used it, so training reproduces the released
  training and chatting reproduces the released demo. Every image is its own ``Human`` message (the demo's
  ``upload_img``); the question joins the last one (``ask``). Generation stops at ``###`` (``STOP``), whatever
  tokens spell it (``▁###``, ``##`` + ``#``, ``.###``...): a stop string, matched per row on the decoded text.
- ``minigpt4-stage1``: stage 1's captions - no prompt at all, ``[BOS][image]`` + caption + ``\\n`` (``end_sym``
  ``\\n``); the instruction of a caption conversation is dropped. Generation: the image alone, stop at ``\\n``.
- ``minigpt4-llama2`` (the LLaMA-2 release, HEAD ``d94738a``). **Training** (``eval_configs/
  minigpt4_llama2_eval.yaml``'s ``prompt_template``, ``end_sym: "</s>"``): ``[INST] <Img><ImageHere></Img> {q}
  [/INST] `` + answer + EOS. **Generation**: the HEAD demo's ``CONV_VISION_LLama2`` (roles ``<s>[INST] `` and
  `` [/INST] ``, no separator)::

      {SYSTEM}<s>[INST] <Img><ImageHere></Img> {q1} [/INST] {a1}<s>[INST] {q2} [/INST]

  The roles write BOS as the text ``<s>``, which the slow tokenizer split out as the BOS id, giving the text after it
  its own dummy prefix (``mmgpt.llama_tokenizer`` does the same). Images and the question join as in the demo above;
  generation stops at EOS or ``###`` (the demo's stop ids spell ``###`` for both releases).

Text between two images is one segment, as the original split its prompt on ``<ImageHere>`` and tokenised each
piece on its own (``data/tokenize.py`` adds the one BOS). The history of a conversation renders to the same text
at every later turn, so the tokens a chat cached stay a prefix of the next turn's prompt (``chat/cache.py``).
``render_text`` writes an image as ``<ImageHere>``: the exact strings of the original.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.templates import Segment, require_prompt
from mmgpt.tokens import IMAGE

SYSTEM = (
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to "
    "you. Please answer my questions."
)
SEP = "###"  # between messages, and the end of a trained answer (stage 2's end_sym)
HUMAN, ASSISTANT = "Human", "Assistant"
IMG_OPEN, IMG_CLOSE = "<Img>", "</Img>"
IMAGE_HERE = "<ImageHere>"  # how the original wrote an image position in its prompt strings (render_text)
STAGE1_END = "\n"  # stage 1's end_sym
INST_OPEN, INST_CLOSE = "[INST] ", " [/INST] "
LLAMA2_USER = "<s>" + INST_OPEN  # the HEAD demo's user role: BOS written as text


class _Segments:
    """Accumulates text into one segment until an image or a response interrupts it."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.text = ""

    def add(self, text: str) -> None:
        self.text += text

    def image(self) -> None:
        self.flush()
        self.segments.append(Segment(IMAGE))

    def response(self, text: str, *, eos: bool) -> None:
        self.flush()
        self.segments.append(Segment(text, response=True, eos=eos))

    def flush(self) -> None:
        if self.text:
            self.segments.append(Segment(self.text))
        self.text = ""

    def done(self) -> list[Segment]:
        self.flush()
        return self.segments


def question(message: Message) -> str:
    """The user's text, with an input section (Alpaca context, multiple-choice options) on the next line."""
    return f"{message.text}\n{message.input}" if message.input else message.text


def add_images_then_question(out: _Segments, message: Message, *, between: str) -> None:
    """``<Img>`` image ``</Img>`` per image, ``between`` after each but the last, then `` {question}``."""
    for i, _ in enumerate(message.images):
        if i:
            out.add(between)
        out.add(IMG_OPEN)
        out.image()
        out.add(IMG_CLOSE)
    text = question(message)
    if text:
        out.add(f" {text}" if message.images else text)


def segments_text(segments: list[Segment], *, eos: str = "") -> str:
    """Segments as the original's strings: an image as ``<ImageHere>``; ``eos`` after each response that has one."""
    return "".join(IMAGE_HERE if s.is_image else s.text + (eos if s.response and s.eos else "") for s in segments)


@dataclass(frozen=True)
class MiniGpt4Style:
    """MiniGPT-4 v1 (Vicuna v0): stage-2 template for training, the demo's for generation (module docstring)."""

    name: str = "minigpt4"
    system: str = "MiniGPT-4"
    stop_strings: tuple[str, ...] = (SEP,)
    bos: bool | None = None  # as the tokenizer does

    def render(self, conversation: Conversation) -> list[Segment]:
        """``###Human: {message} `` per human message, ``###Assistant: ``, then the trained answer + ``###``; a later
        turn starts ``Human: `` right after that ``###`` (the original trained single turns only)."""
        out = _Segments()
        for i, (user, answer) in enumerate(conversation.turns()):
            out.add(f"{SEP}{HUMAN}: " if i == 0 else f"{HUMAN}: ")
            add_images_then_question(out, user, between=f" {SEP}{HUMAN}: ")
            out.add(f" {SEP}{ASSISTANT}: ")
            if answer is not None:
                out.response(answer.text + SEP, eos=False)
        return out.done()

    def render_prompt(self, conversation: Conversation) -> list[Segment]:
        require_prompt(conversation)
        return self.render_chat(conversation)

    def render_chat(self, conversation: Conversation) -> list[Segment]:
        """The demo's ``get_prompt``: ``{SYSTEM}###``, ``Human: {message}###`` per human message, then
        ``Assistant: {answer}###`` or, open, ``Assistant:``. Answers are prompt text here (never trained)."""
        out = _Segments()
        out.add(SYSTEM + SEP)
        for user, answer in conversation.turns():
            out.add(f"{HUMAN}: ")
            add_images_then_question(out, user, between=f"{SEP}{HUMAN}: ")
            out.add(SEP)
            if answer is None:
                out.add(f"{ASSISTANT}:")
            else:
                out.add(f"{ASSISTANT}: {answer.text}{SEP}" if answer.text else f"{ASSISTANT}:{SEP}")
        return out.done()

    def render_text(self, conversation: Conversation, *, eos: str = "") -> str:
        """What a chat shows the model (the generation rendering, answers included)."""
        return segments_text(self.render_chat(conversation))

    def extract_response(self, generated: str) -> str:
        """As the demo: cut at ``###``, keep what follows the last ``Assistant:``, strip."""
        return generated.split(SEP, 1)[0].split(f"{ASSISTANT}:")[-1].strip()


@dataclass(frozen=True)
class MiniGpt4Stage1Style:
    """MiniGPT-4 stage 1: the image, then the caption and ``\\n``; no prompt (the user's text is dropped)."""

    name: str = "minigpt4-stage1"
    system: str = "MiniGPT-4"
    stop_strings: tuple[str, ...] = (STAGE1_END,)
    bos: bool | None = None  # as the tokenizer does

    def render(self, conversation: Conversation) -> list[Segment]:
        out = _Segments()
        for user, answer in conversation.turns():
            for _ in user.images:
                out.image()
            if answer is not None:
                out.response(answer.text + STAGE1_END, eos=False)
        return out.done()

    def render_prompt(self, conversation: Conversation) -> list[Segment]:
        require_prompt(conversation)
        return self.render(conversation)

    def render_text(self, conversation: Conversation, *, eos: str = "") -> str:
        return segments_text(self.render(conversation))

    def extract_response(self, generated: str) -> str:
        return generated.split(STAGE1_END, 1)[0].strip()


@dataclass(frozen=True)
class MiniGpt4Llama2Style:
    """MiniGPT-4 for LLaMA-2-chat: ``[INST] {message} [/INST] `` + answer + EOS for training, the HEAD demo's
    ``CONV_VISION_LLama2`` for generation (module docstring)."""

    name: str = "minigpt4-llama2"
    system: str = "MiniGPT-4"
    stop_strings: tuple[str, ...] = (SEP,)  # as the demo's stop ids; EOS always ends an answer too
    bos: bool | None = None  # as the tokenizer does

    def render(self, conversation: Conversation) -> list[Segment]:
        out = _Segments()
        for user, answer in conversation.turns():
            out.add(INST_OPEN)
            add_images_then_question(out, user, between=" ")
            out.add(INST_CLOSE)
            if answer is not None:
                out.response(answer.text, eos=True)
        return out.done()

    def render_prompt(self, conversation: Conversation) -> list[Segment]:
        require_prompt(conversation)
        return self.render_chat(conversation)

    def render_chat(self, conversation: Conversation) -> list[Segment]:
        """The demo's ``get_prompt`` with no separator: ``{SYSTEM}``, ``<s>[INST] {message}`` per human message,
        then `` [/INST] `` and the answer (prompt text here, never trained), or, open, `` [/INST] ``."""
        out = _Segments()
        out.add(SYSTEM)
        for user, answer in conversation.turns():
            out.add(LLAMA2_USER)
            add_images_then_question(out, user, between=LLAMA2_USER)
            out.add(INST_CLOSE)
            if answer is not None:
                out.add(answer.text)
        return out.done()

    def render_text(self, conversation: Conversation, *, eos: str = "") -> str:
        """What a chat shows the model (the generation rendering, answers included)."""
        return segments_text(self.render_chat(conversation))

    def extract_response(self, generated: str) -> str:
        """Cut at ``###`` (the demo's stop) or at a new ``[INST]``; stripped."""
        return generated.split(SEP, 1)[0].split(INST_OPEN.strip(), 1)[0].strip()
