"""mPLUG-Owl's data: the SFT jsonl source, the ``mplug-owl`` prompt style (golden strings and token ids), and its
tokenisation checked against the original's training algorithm re-implemented here from its code
(``xgpt3_dataset._extract_text_token_from_conversation``: BOS, then the text split on ``<image>``, ``AI: ``,
``\\nHuman: `` with each chunk tokenised on its own; the chunk after ``AI: `` and its ``</s>`` are the loss).

The tokenizer is a tiny SentencePiece model in LLaMA's settings, read as the release's ``MplugOwlTokenizer``
(no BOS added by the tokenizer itself), and SentencePiece itself is the oracle.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sentencepiece

from mmgpt.data.collate import collate
from mmgpt.data.config import DataConfig
from mmgpt.data.conversation import Conversation, Message, single_turn
from mmgpt.data.sources import MalformedRowError, SourceStats, read_source
from mmgpt.data.sources.base import SourceConfig
from mmgpt.data.styles import get_style
from mmgpt.data.styles.mplug_owl import SYSTEM
from mmgpt.data.tokenize import ConversationTokenizer
from mmgpt.tokens import IGNORE_INDEX, IMAGE_POSITION, PromptFormat, read_tokenizer
from tests.model.mplug_owl_tiny import SPECIAL_TOKENS, TOKENIZER_CONFIG, tokenizer_model

STYLE = get_style("mplug-owl")
PER_IMAGE = 3  # image positions per image in these tests (65 for the released model)
FORMAT = PromptFormat("mplug-owl", (IMAGE_POSITION,) * PER_IMAGE)
# The README's two example rows, verbatim, a two-image row and a text-only row with "image": [].
ROWS = [
    {
        "text": f"{SYSTEM}\nHuman: Construct a sentence using the given verb in the past tense\nshudder\nAI: She "
        "shuddered at the thought of being alone in the dark.",
        "task_type": "gpt4instruct_sft",
    },
    {
        "image": ["xxx.jpg"],
        "text": f"{SYSTEM}\nHuman: <image>\nHuman: Where is the man located in the image?\nAI: The man is located in "
        "a small restaurant, sitting and enjoying his meal.\nHuman: What type of food is the man eating in the "
        "image?\nAI: The man is eating a burrito in the image.",
        "task_type": "llava_sft",
    },
    {"image": ["a.jpg", "b.jpg"], "text": f"{SYSTEM}\nHuman: <image>\nHuman: <image>\nHuman: Same?\nAI: No."},
    {"image": [], "text": f"{SYSTEM}\nHuman: Hi!\nAI: Hello.\nHuman: Bye.\nAI: Bye!", "task_type": "quora_chat_sft"},
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("owl_tokenizer")
    (root / "tokenizer.model").write_bytes(tokenizer_model())
    (root / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    (root / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS))
    return root


@pytest.fixture(scope="module")
def tokenizer(folder):
    return read_tokenizer(folder)


@pytest.fixture(scope="module")
def sp(folder) -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def write_rows(root: Path, rows: list, name: str = "sft.jsonl") -> Path:
    path = root / name
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def read(path: Path, **options) -> tuple[list[Conversation], SourceStats]:
    stats = SourceStats("sft")
    source = SourceConfig(name="sft", format="mplug_owl", path=path.name, images="images", options=options)
    resolve = DataConfig(root=str(path.parent)).resolve
    return list(read_source(source, resolve=resolve, stats=stats, check_images=False)), stats


def original_training_ids(sp, text: str) -> tuple[list[int], list[int]]:
    """The original's training tokenisation of one jsonl text: (ids with PER_IMAGE image positions, loss mask)."""
    ids, loss = [sp.bos_id()], [0]
    chunks = [c for c in re.split("(<image>|AI: |\nHuman: )", text) if c]
    for i, chunk in enumerate(chunks):
        if chunk == "<image>" and i:
            piece, trained = [IMAGE_POSITION] * PER_IMAGE, 0
        elif i and chunks[i - 1] == "AI: ":
            piece, trained = [*sp.encode(chunk), sp.eos_id()], 1
        else:
            piece, trained = sp.encode(chunk), 0
        ids += piece
        loss += [trained] * len(piece)
    return ids, loss


# ---------------------------------------------------------------------------------------------- the source
def test_rows_become_conversations_with_images_on_their_questions(tmp_path):
    conversations, stats = read(write_rows(tmp_path, ROWS))
    assert stats.rows == stats.conversations == 4
    text_only, llava, two, chat = conversations
    assert [(m.role, m.text, m.images) for m in text_only.messages] == [
        ("user", "Construct a sentence using the given verb in the past tense\nshudder", ()),
        ("assistant", "She shuddered at the thought of being alone in the dark.", ()),
    ]
    assert [m.role for m in llava.messages] == ["user", "assistant"] * 2
    assert llava.messages[0].images == (tmp_path / "images" / "xxx.jpg",) and not llava.messages[2].images
    assert llava.messages[2].text == "What type of food is the man eating in the image?"
    assert two.messages[0].images == (tmp_path / "images" / "a.jpg", tmp_path / "images" / "b.jpg")
    assert [m.text for m in chat.messages] == ["Hi!", "Hello.", "Bye.", "Bye!"] and not chat.images


def test_the_style_renders_every_row_back_to_its_text(tmp_path):
    conversations, _ = read(write_rows(tmp_path, ROWS))
    for conversation, row in zip(conversations, ROWS, strict=True):
        assert STYLE.render_text(conversation) == row["text"]


def test_rows_option_splits_the_mix_and_counts_the_rest(tmp_path):
    path = write_rows(tmp_path, ROWS)
    images, stats = read(path, rows="image")
    assert len(images) == 2 and all(c.images for c in images)
    assert dict(stats.skipped) == {"text-only row (rows: image)": 2}
    texts, stats = read(path, rows="text")
    assert len(texts) == 2 and not any(c.images for c in texts)
    assert dict(stats.skipped) == {"row with images (rows: text)": 2}


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ({"image": ["a.jpg"], "text": f"{SYSTEM}\nHuman: Hi\nAI: Yes"}, "image", "1 image paths for 0 '<image>'"),
        ({"text": f"{SYSTEM}\nAI: Hello\nHuman: Hi"}, "text", "turn 0 is from AI, expected Human"),
        ({"text": f"{SYSTEM}\nHuman: Hi\nHuman: Again\nAI: Yes"}, "text", "turn 1 is from Human, expected AI"),
        ({"text": f"{SYSTEM}\nHuman: Hi\nAI: Yes\nHuman: More?"}, "text", "the last question has no answer"),
        ({"image": ["a.jpg"], "text": f"{SYSTEM}\nHuman: See <image>\nAI: Yes"}, "text", "holds '<image>' inside"),
        ({"image": ["a.jpg"], "text": f"{SYSTEM}\nHuman: Hi\nAI: Yes\nHuman: <image>"}, "text", "an image line"),
        ({"text": "no markers at all"}, "text", "no '\\nHuman: ' ... '\\nAI: ' exchange"),
        ({"image": "a.jpg", "text": f"{SYSTEM}\nHuman: <image>\nHuman: Hi\nAI: "}, "text", "turn 2 (AI) is empty"),
        ({"image": [3], "text": f"{SYSTEM}\nHuman: <image>\nHuman: Hi\nAI: Yes"}, "image", "list of image paths"),
        ({"task_type": "llava_sft"}, "text", "missing"),
        ('{"text": "unterminated', "(line)", "not JSON"),
    ],
)
def test_malformed_rows_name_file_row_and_field(tmp_path, row, field, problem):
    path = write_rows(tmp_path, [ROWS[0], row])
    with pytest.raises(MalformedRowError) as caught:
        read(path)
    assert (caught.value.path, caught.value.where, caught.value.field) == (path, "line 2", field)
    assert problem in caught.value.problem
    assert f"{path} line 2, field {field!r}" in str(caught.value)


def test_adjacent_image_markers_are_two_images(tmp_path):
    row = {"image": ["a.jpg", "b.jpg"], "text": f"{SYSTEM}\nHuman: <image><image>\nHuman: Same?\nAI: No."}
    (conversation,), _ = read(write_rows(tmp_path, [row]))
    assert len(conversation.messages[0].images) == 2  # the original merged them into one run (one image spliced)
    assert STYLE.render_text(conversation) == ROWS[2]["text"]  # one line each


# ---------------------------------------------------------------------------------------------- the style
def test_golden_strings():
    conversation = single_turn("What is it?", "A cat.", images=["a.jpg"])
    expected = f"{SYSTEM}\nHuman: <image>\nHuman: What is it?\nAI: A cat.</s>"
    assert STYLE.render_text(conversation, eos="</s>") == expected
    follow = conversation.with_user_turn("And now?", ["b.jpg", "c.jpg"])
    assert STYLE.render_text(follow) == (
        f"{SYSTEM}\nHuman: <image>\nHuman: What is it?\nAI: A cat.\nHuman: <image>\nHuman: <image>\nHuman: And now?"
        "\nAI: "
    )
    assert STYLE.render_text(single_turn("Name a colour.", None)) == f"{SYSTEM}\nHuman: Name a colour.\nAI: "
    assert STYLE.render_text(single_turn("Summarise.", None, input="A long text.")) == (
        f"{SYSTEM}\nHuman: Summarise.\nA long text.\nAI: "
    )
    assert SYSTEM == (
        "The following is a conversation between a curious human and AI assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions."
    )
    assert STYLE.stop_strings == ("\nHuman:",) and STYLE.bos is True
    assert STYLE.extract_response(" It is red.\nHuman: and?") == "It is red."
    with pytest.raises(ValueError, match="must end with the user's new message"):
        STYLE.render_prompt(single_turn("Q", "A"))


# ---------------------------------------------------------------------------------------------- tokenisation
def test_training_ids_equal_the_originals_chunked_tokenisation(tmp_path, tokenizer, sp):
    assert tokenizer("a")["input_ids"] == sp.encode("a")  # the release's tokenizer adds no BOS itself
    conversations, _ = read(write_rows(tmp_path, ROWS))
    encode = ConversationTokenizer(tokenizer, fmt=FORMAT, max_length=2048)
    for conversation, row in zip(conversations, ROWS, strict=True):
        sample = encode(conversation)
        ids, loss = original_training_ids(sp, row["text"])
        assert sample.input_ids == ids
        assert [int(label != IGNORE_INDEX) for label in sample.labels] == loss
        assert all(label in (IGNORE_INDEX, i) for label, i in zip(sample.labels, sample.input_ids, strict=True))


def test_golden_token_ids(tokenizer, sp):
    """BOS, the system chunk, then every chunk with its own dummy prefix: ``▁\\n Human : ▁`` opens a line, the
    answer starts with ``▁`` after the ``AI:▁`` chunk's own trailing ``▁``; the answer and ``</s>`` are trained."""
    conversation = single_turn("Why?", "It is red.", images=["a.jpg"])
    sample = ConversationTokenizer(tokenizer, fmt=FORMAT)(conversation)
    system = [1, *sp.encode(SYSTEM)]
    assert sample.input_ids[: len(system)] == system
    human, image = [293, 285, 367, 348], [IMAGE_POSITION] * PER_IMAGE
    question, ai, answer = [299, 380, 304], [348, 274, 367, 348], [348, 374, 354, 268, 325, 366, 2]
    assert [sp.id_to_piece(i) for i in human + question + ai] == [
        "▁\n", "Human", ":", "▁", "▁Wh", "y", "?\n", "▁", "AI", ":", "▁"
    ]  # fmt: skip
    assert sample.input_ids[len(system) :] == human + image + human + question + ai + answer
    assert sample.labels == [IGNORE_INDEX] * (len(sample.input_ids) - len(answer)) + answer
    # The prompt of the same history is the training ids up to the answer: chat and evaluation see what training did.
    prompt = ConversationTokenizer(tokenizer, fmt=FORMAT).prompt(Conversation(conversation.messages[:1]))
    assert prompt.input_ids == sample.input_ids[: -len(answer)]
    assert set(prompt.labels) == {IGNORE_INDEX}
    # The original's inference processor tokenised "\nHuman: Why?\nAI: " in one piece: other ids (not ours).
    assert sp.encode("\nHuman: Why?\nAI: ") == [293, 285, 367, 299, 380, 304, 274, 367, 348]


def test_a_later_turn_renders_identically_on_every_turn(tokenizer):
    """What chat's KV-cache reuse needs: the prompt of turn k is a prefix of the prompt of turn k + 1."""
    encode = ConversationTokenizer(tokenizer, fmt=FORMAT)
    first = Conversation([Message("user", "What is it?", ("a.jpg",))])
    second = first.with_answer("A cat.").with_user_turn("And this?", ["b.jpg"])
    a, b = encode.prompt(first).input_ids, encode.prompt(second).input_ids
    assert b[: len(a)] == a and b.count(IMAGE_POSITION) == 2 * PER_IMAGE
    answer = tokenizer("A cat.", add_special_tokens=False)["input_ids"]
    assert b[len(a) : len(a) + len(answer) + 1] == [*answer, tokenizer.eos_token_id]


def test_batches_are_padded_to_their_longest_row_not_to_max_length(tmp_path, tokenizer):
    """The original padded every sample to 2,049 tokens; a batch here is as wide as its longest sample."""
    conversations, _ = read(write_rows(tmp_path, ROWS))
    encode = ConversationTokenizer(tokenizer, fmt=FORMAT, max_length=2048)
    samples = [encode(c) for c in conversations if not c.images]
    batch = collate(samples, tokenizer.pad_token_id)
    assert batch.input_ids.shape == (2, max(len(s) for s in samples)) and batch.input_ids.shape[1] < 300
    assert tokenizer.pad_token_id == 0  # MplugOwlTokenizer: pad <unk>
