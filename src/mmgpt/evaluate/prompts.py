"""How a benchmark item is asked: the prompt formats, per model kind and per benchmark kind.

Two formats:

- ``fewshot``: OpenFlamingo's evaluation text, for Flamingo bases (``open_flamingo/eval/models/open_flamingo.py``):
  each in-context example is the template filled with its answer and closed by ``<|endofchunk|>``, examples are
  joined by a newline, and the query is the template cut where its answer would start::

      <image>Question:{question} Short answer:{answer}<|endofchunk|>      VQA sets, POPE, A-OKVQA
      <image>Output:{answer}<|endofchunk|>                                 captions, ImageNet
      <image>is an image with: '{text}' written on it. Is it hateful? Answer:{answer}<|endofchunk|>   HatefulMemes

  A zero-shot query gets two text-only examples (their ``<image>`` removed), as OpenFlamingo (following Flamingo)
  does, when a support set is given. A model without ``<|endofchunk|>`` (prefix models) ends examples with nothing.
- ``chat``: the model's own prompt style (``data/styles``: ``get_style(model.prompt_format.style)``), one user turn
  per question, in-context examples as earlier turns with their answers. Short-answer sets get the instruction
  :data:`SHORT_ANSWER` after the question (LLaVA's), configurable.

MMLU and the instruction sets are text only: MMLU in the format of its original evaluation (Hendrycks et al.,
``evaluate.py``: a header naming the subject, each question with lettered choices and ``Answer:``), ranked over the
letters; Dolly/Alpaca as the instruction itself. ``template`` replaces a format's text for every benchmark kind
(fields ``{question}``, ``{answer}``, ``{text}``; ``<image>`` where the image goes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmgpt.evaluate.benchmarks import items as kinds
from mmgpt.evaluate.benchmarks.mmlu import LETTERS as MMLU_LETTERS
from mmgpt.evaluate.owleval import DEFAULT_MAX_NEW_TOKENS as OWLEVAL_TOKENS
from mmgpt.tokens import END_OF_CHUNK, IMAGE

FEWSHOT, CHAT = "fewshot", "chat"
FORMATS = (FEWSHOT, CHAT)
SHORT_ANSWER = "Answer the question using a single word or phrase."

OF_VQA = f"{IMAGE}Question:{{question}} Short answer:{{answer}}"
OF_CAPTION = f"{IMAGE}Output:{{answer}}"
OF_HATEFUL = f"{IMAGE}is an image with: '{{text}}' written on it. Is it hateful? Answer:{{answer}}"
MMLU_HEADER = "The following are multiple choice questions (with answers) about {subject}.\n\n"

# Per benchmark name first, then per kind (``Benchmark.kind``).
FEWSHOT_TEMPLATES = {
    "hatefulmemes": OF_HATEFUL,
    "vqa": OF_VQA,
    "yes_no": OF_VQA,
    "multiple_choice": OF_VQA,
    "caption": OF_CAPTION,
    "classification": OF_CAPTION,
    "mmlu": "{question}\nAnswer:{answer}",
    "instruction": "Question:{question} Answer:{answer}",
    "open_ended": f"{IMAGE}Question:{{question}} Answer:{{answer}}",
}
CHAT_TEMPLATES = {
    "hatefulmemes": "This image has the words '{text}' written on it. Is it hateful? Answer yes or no.",
    "vqa": "{question}",
    "yes_no": "{question}",
    "multiple_choice": "{question}",
    "caption": "Provide a one-sentence caption for the provided image.",
    "classification": "What is the main object in this image? Answer with its name.",
    "mmlu": "{question}\nAnswer with the option's letter from the given choices directly.",
    "instruction": "{question}",
    "open_ended": "{question}",
}
SUFFIXED = ("vqa", "yes_no", "multiple_choice")  # kinds that get the short-answer instruction in chat
# The class words a model is asked to choose between, where they differ from the item's class names.
CLASS_WORDS = {"hatefulmemes": ("no", "yes")}
# OpenFlamingo's answer post-processing: the answer ends where the model starts another example.
FEWSHOT_STOPS = {
    "vqa": ("Question", "Answer", "Short"),
    "yes_no": ("Question", "Answer", "Short"),
    "multiple_choice": ("Question", "Answer", "Short"),
    "caption": ("Output",),
    "instruction": ("Question",),
    "open_ended": ("Question",),
}
# Token budgets (OpenFlamingo: 5 for VQA, 10 for TextVQA, 20 for captions).
MAX_NEW_TOKENS = {
    FEWSHOT: {"vqa": 5, "textvqa": 10, "yes_no": 5, "multiple_choice": 5, "caption": 20},
    CHAT: {"vqa": 16, "yes_no": 16, "multiple_choice": 16, "caption": 40},
}
LONG_ANSWER_TOKENS = {"instruction": 128, "open_ended": OWLEVAL_TOKENS}


@dataclass(frozen=True)
class PromptSpec:
    """How one run asks: the format, the template (None: the format's own for each kind) and the short-answer
    instruction of chat prompts ("" for none). ``describe`` is what metrics.json records."""

    format: str = FEWSHOT
    template: str | None = None
    suffix: str = SHORT_ANSWER

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"prompt format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.template is not None and self.format == FEWSHOT and "{answer}" not in self.template:
            raise ValueError(
                f"a fewshot template needs an {{answer}} field (where examples' answers go): {self.template!r}"
            )

    def template_for(self, benchmark: str, kind: str) -> str:
        if self.template is not None:
            return self.template
        table = FEWSHOT_TEMPLATES if self.format == FEWSHOT else CHAT_TEMPLATES
        return table.get(benchmark) or table[kind]

    def suffix_for(self, kind: str) -> str:
        return self.suffix if self.format == CHAT and kind in SUFFIXED else ""

    def describe(self, benchmark: str, kind: str) -> dict[str, Any]:
        return {"format": self.format, "template": self.template_for(benchmark, kind), "suffix": self.suffix_for(kind)}


def max_new_tokens(fmt: str, benchmark: str, kind: str) -> int:
    if kind in LONG_ANSWER_TOKENS:
        return LONG_ANSWER_TOKENS[kind]
    table = MAX_NEW_TOKENS[fmt]
    return table.get(benchmark) or table[kind]


def stop_strings(spec: PromptSpec, kind: str) -> tuple[str, ...]:
    """Where a fewshot answer ends (OpenFlamingo's post-processing splits there); chat styles own their stops."""
    return FEWSHOT_STOPS.get(kind, ()) if spec.format == FEWSHOT else ()


# ---------------------------------------------------------------------------------------------- item fields
def mmlu_question(item: kinds.MmluItem) -> str:
    lines = [item.question] + [
        f"{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, item.choices, strict=False)
    ]
    return "\n".join(lines)


def mmlu_header(subject: str) -> str:
    return MMLU_HEADER.format(subject=subject.replace("_", " "))


def fields(item: Any) -> dict[str, str]:
    """The template fields of an item: ``question`` (what is asked), ``text`` (HatefulMemes' meme text)."""
    if isinstance(item, (kinds.VqaItem, kinds.YesNoItem, kinds.MultipleChoiceItem, kinds.OpenEndedItem)):
        return {"question": item.question, "text": ""}
    if isinstance(item, kinds.ClassificationItem):
        return {"question": "", "text": item.text or ""}
    if isinstance(item, kinds.MmluItem):
        return {"question": mmlu_question(item), "text": ""}
    if isinstance(item, kinds.InstructionItem):
        return {"question": f"{item.instruction} {item.input}" if item.input else item.instruction, "text": item.input}
    return {"question": "", "text": ""}


def demo_answer(item: Any, benchmark: str) -> str:
    """The answer an in-context example shows (OpenFlamingo: the first human answer, the first caption)."""
    if isinstance(item, kinds.VqaItem):
        return item.answers[0]
    if isinstance(item, kinds.YesNoItem):
        return item.label
    if isinstance(item, kinds.MultipleChoiceItem):
        return item.answer
    if isinstance(item, kinds.CaptionItem):
        return item.references[0]
    if isinstance(item, kinds.ClassificationItem):
        return CLASS_WORDS.get(benchmark, item.classes)[item.label]
    if isinstance(item, kinds.MmluItem):
        return f" {MMLU_LETTERS[item.answer_index]}"
    if isinstance(item, kinds.InstructionItem):
        return item.output
    raise ValueError(f"{type(item).__name__} items have no answer to show as an in-context example")


def candidates(item: Any, benchmark: str, spec: PromptSpec, kind: str) -> tuple[str, ...]:
    """What a ranked item chooses between, as continuation texts of its prompt: after a fewshot query, with the
    spaces the template puts before its answer (none in OpenFlamingo's: "Answer:yes")."""
    if isinstance(item, kinds.MultipleChoiceItem):
        words = item.choices
    elif isinstance(item, kinds.ClassificationItem):
        words = CLASS_WORDS.get(benchmark, item.classes)
    elif isinstance(item, kinds.MmluItem):
        words = tuple(f" {x}" for x in MMLU_LETTERS) if spec.format == FEWSHOT else MMLU_LETTERS
    else:
        raise ValueError(f"{type(item).__name__} items are generated, not ranked")
    if spec.format != FEWSHOT:
        return tuple(words)
    before = spec.template_for(benchmark, kind).split("{answer}")[0]
    space = before[len(before.rstrip(" ")) :]
    return tuple(space + w for w in words)


def image_of(item: Any) -> Any:
    return getattr(item, "image", None)


# ---------------------------------------------------------------------------------------------- fewshot text
def fill(template: str, values: dict[str, str], answer: str | None) -> str:
    """The template with its fields; ``answer`` None cuts it where the answer would start (no trailing space)."""
    if answer is None:
        return template.split("{answer}")[0].format(**values).rstrip(" ")
    return template.format(answer=answer, **values)


def fewshot_text(
    spec: PromptSpec,
    benchmark: str,
    kind: str,
    item: Any,
    demos: list[Any],
    *,
    end_of_chunk: str = END_OF_CHUNK,
    text_only_demos: bool = False,
) -> str:
    """The whole fewshot prompt: the examples, then the query. ``text_only_demos``: the zero-shot examples, their
    images removed."""
    template = spec.template_for(benchmark, kind)
    text_only = kind in ("mmlu", "instruction")
    close, separator = ("", "\n\n") if text_only else (end_of_chunk, "\n")
    parts = [fill(template, fields(d), demo_answer(d, benchmark)) + close + separator for d in demos]
    context = "".join(parts)
    if text_only_demos:
        context = context.replace(IMAGE, "")
    head = mmlu_header(item.subject) if isinstance(item, kinds.MmluItem) else ""
    return head + context + fill(template, fields(item), None)


def chat_text(spec: PromptSpec, benchmark: str, kind: str, item: Any) -> str:
    """A chat turn's user text: the template with the item's fields, then the short-answer instruction (an
    instruction's input goes to the message's input section, where the style puts it)."""
    values = fields(item)
    if isinstance(item, kinds.MmluItem):
        values["question"] = mmlu_header(item.subject) + values["question"]
    if isinstance(item, kinds.InstructionItem):
        values["question"] = item.instruction
    text = spec.template_for(benchmark, kind).replace("{answer}", "").format(**values).replace(IMAGE, "").strip()
    suffix = spec.suffix_for(kind)
    return f"{text}\n{suffix}" if suffix else text
