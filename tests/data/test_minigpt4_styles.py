"""MiniGPT-4's prompt styles: the original's exact strings (prefix-systems.md A1, F) and its token ids, segment by
segment as it tokenised (the prompt split on ``<ImageHere>``, each chunk encoded on its own with its dummy prefix,
BOS once), with a tiny SentencePiece tokenizer trained in LLaMA's settings. The oracle of the ids is SentencePiece
itself on the original's strings, written out here - not our renderer."""

from __future__ import annotations

import pytest
import sentencepiece

from mmgpt.data.conversation import Conversation, Message, single_turn
from mmgpt.data.styles import STYLES, get_style
from mmgpt.data.styles.minigpt4 import SYSTEM
from mmgpt.data.tokenize import ConversationTokenizer
from mmgpt.llama_tokenizer import load_sentencepiece_tokenizer
from mmgpt.tokens import IGNORE_INDEX, IMAGE_POSITION, PromptFormat
from mmgpt.train.config import load_train_config
from tests.minigpt4_tiny import train_sentencepiece, write_tokenizer
from tests.test_llama_tokenizer import VICUNA_FILES

SYS = (
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. "
    "Please answer my questions."
)
Q = 2  # image positions per image in these tests
IMG = [IMAGE_POSITION] * Q
ANSWER = "The image shows a red circle."


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return train_sentencepiece()


@pytest.fixture(scope="module")
def sp(model_bytes):
    return sentencepiece.SentencePieceProcessor(model_proto=model_bytes)


@pytest.fixture(scope="module")
def tokenizer(model_bytes, tmp_path_factory):
    return load_sentencepiece_tokenizer(write_tokenizer(tmp_path_factory.mktemp("vicuna"), model_bytes, VICUNA_FILES))


def tokens(tokenizer, style: str) -> ConversationTokenizer:
    return ConversationTokenizer(tokenizer, fmt=PromptFormat(style, tuple(IMG)), max_length=512)


def original(sp, text: str) -> list[int]:
    """MiniGPT-4's ``get_context_emb`` / ``prompt_wrap``: BOS, then each chunk between images on its own."""
    ids = [1]
    for i, chunk in enumerate(text.split("<ImageHere>")):
        ids += (IMG if i else []) + sp.encode(chunk)
    return ids


def test_the_styles_are_registered_and_a_training_stage_may_name_one():
    assert {"minigpt4", "minigpt4-stage1", "minigpt4-llama2"} <= set(STYLES)
    assert SYSTEM == SYS
    assert get_style("minigpt4").stop_strings == ("###",) and get_style("minigpt4-stage1").stop_strings == ("\n",)
    assert get_style("minigpt4-llama2").stop_strings == ("###",)  # the demo's stop; EOS ends an answer too
    cfg = load_train_config({"model": "m", "data": {}, "run_dir": "r", "prompt_style": "minigpt4-stage1"})
    assert cfg.prompt_style == "minigpt4-stage1"


def test_stage2_training_sample_strings_and_ids(tokenizer, sp):
    conv = single_turn("Describe this image in detail.", ANSWER, images=["a.jpg"])
    prompt = "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: "  # prompt_template
    style = get_style("minigpt4")
    assert "".join("<ImageHere>" if s.is_image else s.text for s in style.render(conv)) == prompt + ANSWER + "###"
    sample = tokens(tokenizer, "minigpt4")(conv)
    answer = sp.encode(ANSWER + "###")  # forward(): the answer + end_sym tokenised on its own
    assert sample.input_ids == original(sp, prompt) + answer
    assert sample.labels == [IGNORE_INDEX] * len(original(sp, prompt)) + answer  # the answer and ### only
    golden = [1, 275, 296, 565, 273, 265, 559, *IMG, 273, 567, 265, 559, 413, 324, 277, 320, 409, 564, 275, 298, 565]
    assert sample.input_ids == [*golden, 544, 342, 277, 455, 263, 343, 308, 333]
    pieces = ["▁", "▁The", "▁image", "▁shows", "▁a", "▁red", "▁circle", ".###"]
    assert tokenizer.convert_ids_to_tokens(sample.input_ids[-8:]) == pieces  # the lone ▁ before the answer is kept


def test_demo_prompt_strings_and_ids_turn_by_turn(tokenizer, sp):
    style, tok = get_style("minigpt4"), tokens(tokenizer, "minigpt4")
    first = Conversation([Message("user", "What is it?", ("a.jpg",))])
    text = f"{SYS}###Human: <Img><ImageHere></Img> What is it?###Assistant:"
    assert style.render_text(first) == text
    assert tok.prompt(first).input_ids == original(sp, text)
    golden_start = [1, 460, 278, 415, 277, 565, 273, 265, 559, 417, 345, 265, 346]  # <s>▁Give▁the▁following...
    assert tok.prompt(first).input_ids[: len(golden_start)] == golden_start
    second = first.with_answer("A red circle.").with_user_turn("And its colour?")
    text2 = text + " A red circle.###Human: And its colour?###Assistant:"
    assert style.render_text(second) == text2
    assert tok.prompt(second).input_ids == original(sp, text2)
    third = second.with_answer("Red.").with_user_turn("Compare.", images=["b.jpg", "c.jpg"])
    text3 = text2 + " Red.###Human: <Img><ImageHere></Img>###Human: <Img><ImageHere></Img> Compare.###Assistant:"
    assert style.render_text(third) == text3  # each image its own Human message; the question joins the last
    assert tok.prompt(third).input_ids == original(sp, text3)
    assert style.render_text(third.with_answer("Both red.")) == text3 + " Both red.###"
    with pytest.raises(ValueError, match="must end with the user's new message"):
        style.render_prompt(second.with_answer("x"))


def test_a_conversations_history_renders_to_the_same_tokens_every_turn(tokenizer):
    """Chat reuses its KV cache: the prompt of turn k is a token prefix of every later turn's prompt."""
    tok = tokens(tokenizer, "minigpt4")
    conv = Conversation([Message("user", "Describe it.", ("a.jpg",))])
    answers = ["It is a dog.", "Red!", "two\nlines", "", "###", "the end:"]
    for i, answer in enumerate(answers):
        before = tok.prompt(conv).input_ids
        conv = conv.with_answer(answer).with_user_turn(f"question {i}?", images=["x.jpg"] if i % 2 else [])
        after = tok.prompt(conv).input_ids
        assert after[: len(before)] == before, (answer, tokenizer.convert_ids_to_tokens(after[len(before) - 2 :]))


def test_multi_turn_and_multi_image_training_strings():
    conv = (
        Conversation([Message("user", "Q1", ("a.jpg", "b.jpg"))])
        .with_answer("A1")
        .with_user_turn("Q2", input="ctx")
        .with_answer("A2")
    )
    segments = get_style("minigpt4").render(conv)
    assert "".join("<ImageHere>" if s.is_image else s.text for s in segments) == (
        "###Human: <Img><ImageHere></Img> ###Human: <Img><ImageHere></Img> Q1 ###Assistant: A1###Human: Q2\nctx "
        "###Assistant: A2###"
    )
    assert [s.text for s in segments if s.response] == ["A1###", "A2###"]
    assert not any(s.eos for s in segments if s.response)  # ### ends an answer, never EOS


def test_stage1_is_image_then_caption_and_newline(tokenizer, sp):
    conv = single_turn("Can you describe the image?", "A dog runs on the grass.", images=["a.jpg"])
    style = get_style("minigpt4-stage1")
    assert style.render_text(conv) == "<ImageHere>A dog runs on the grass.\n"  # the instruction is dropped
    sample = tokens(tokenizer, "minigpt4-stage1")(conv)
    caption = sp.encode("A dog runs on the grass.\n")
    assert sample.input_ids == [1, *IMG, *caption] and sample.labels == [IGNORE_INDEX] * (1 + Q) + caption
    assert tokenizer.decode(sample.input_ids[-len(caption) :]) == "A dog runs on the grass.\n"  # trained, \n too
    prompt = tokens(tokenizer, "minigpt4-stage1").prompt(Conversation(conv.messages[:1]))
    assert prompt.input_ids == [1, *IMG]
    assert style.extract_response(" A cat.\nA dog") == "A cat."


def test_llama2_training_template_and_eos(tokenizer, sp):
    conv = single_turn("What colour is the circle?", "The circle is red.", images=["a.jpg"])
    tok = tokens(tokenizer, "minigpt4-llama2")
    text = "[INST] <Img><ImageHere></Img> What colour is the circle? [/INST] "
    sample = tok(conv)
    answer = [*sp.encode("The circle is red."), 2]
    assert sample.input_ids == original(sp, text) + answer
    assert sample.labels == [IGNORE_INDEX] * len(original(sp, text)) + answer


def with_bos_text(sp, text: str) -> list[int]:
    """The HEAD demo's ``get_context_emb`` with the slow tokenizer: BOS, then each chunk between images on its own,
    a ``<s>`` in it split out as the BOS id and each piece around it encoded on its own (its own dummy prefix)."""
    ids = [1]
    for i, chunk in enumerate(text.split("<ImageHere>")):
        ids += IMG if i else []
        for j, piece in enumerate(chunk.split("<s>")):
            ids += ([1] if j else []) + sp.encode(piece)
    return ids


def test_llama2_generation_is_the_head_demos_prompt(tokenizer, sp):
    style, tok = get_style("minigpt4-llama2"), tokens(tokenizer, "minigpt4-llama2")
    first = Conversation([Message("user", "What colour is the circle?", ("a.jpg",))])
    text1 = SYS + "<s>[INST] <Img><ImageHere></Img> What colour is the circle? [/INST] "
    assert style.render_text(first) == text1
    ids, system = tok.prompt(first).input_ids, sp.encode(SYS)
    assert ids == with_bos_text(sp, text1)
    assert ids[: 2 + len(system)] == [1, *system, 1]  # BOS, the system line, the demo's "<s>" as the BOS id
    second = first.with_answer("Red.").with_user_turn("And these?", images=["b.jpg", "c.jpg"])
    text2 = text1 + "Red.<s>[INST] <Img><ImageHere></Img><s>[INST] <Img><ImageHere></Img> And these? [/INST] "
    assert style.render_text(second) == text2  # each image its own user message, the question joins the last
    assert tok.prompt(second).input_ids == with_bos_text(sp, text2)
    assert style.stop_strings == ("###",)
    assert style.extract_response(" Red. [INST] more") == "Red." and style.extract_response("Red.###Human") == "Red."


def test_extract_response_as_the_demo():
    style = get_style("minigpt4")
    assert style.extract_response(" The image shows a cat.###Human: what") == "The image shows a cat."
    assert style.extract_response("Assistant: A dog.") == "A dog."
    assert style.extract_response("no stop at all ") == "no stop at all"
