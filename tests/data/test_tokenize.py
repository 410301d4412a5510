"""Token-level labels: the golden two-turn conversation with an image, BOS, truncation, drops, prompts."""

from __future__ import annotations

import pytest

from mmgpt.data.conversation import single_turn
from mmgpt.data.templates import HEADER
from mmgpt.data.tokenize import (
    ConversationTokenizer,
    SampleDropped,
    load_tokenizer,
    tokenize_conversation,
    tokenize_prompt,
)
from mmgpt.tokens import IGNORE_INDEX, add_special_tokens, train_tokenizer

X = IGNORE_INDEX


def two_turns():
    first = single_turn("What is in the image?", "A red ball.", images=["ball.jpg"])
    return first.with_user_turn("What colour is it?").with_answer("Red.")


def test_golden_two_turn_labels_with_an_image(tokenizer):
    sample = tokenize_conversation(two_turns(), tokenizer, 512)
    tokens = tokenizer.convert_ids_to_tokens(sample.input_ids)
    image_id = tokenizer.convert_tokens_to_ids("<image>")

    # Exact labels: 70 ignored (BOS, header, image section, first instruction), "A red ball." + EOS,
    # 23 ignored (second instruction), "Red." + EOS.
    assert sample.labels == [X] * 70 + [35, 338, 70, 356, 16, 2] + [X] * 23 + [52, 377, 16, 2]
    assert tokens[70:76] == ["A", "Ġre", "d", "Ġball", ".", "</s>"]
    assert tokens[99:] == ["R", "ed", ".", "</s>"]
    assert tokens[:3] == ["<s>", "Bel", "ow"]
    assert tokens[45:51] == ["Image", ":", "Ċ", "<image>", "Ċ", "Ċ"]
    assert tokens[76:83] == ["Ċ", "Ċ", "###", "ĠIn", "struction", ":", "Ċ"]
    assert tokens[93:99] == ["###", "ĠR", "es", "ponse", ":", "Ċ"]
    assert sample.input_ids[48] == image_id and sample.input_ids.count(image_id) == 1
    assert sample.images == ["ball.jpg"]
    assert not sample.truncated and sample.full_length == len(sample) == 103

    # The same, read as text: the ignored runs are exactly the prompts, the trained runs the answers + EOS.
    assert tokenizer.decode(sample.input_ids[:70]) == (
        f"<s>{HEADER}\n\n### Image:\n<image>\n\n### Instruction:\nWhat is in the image?\n\n### Response:\n"
    )
    assert tokenizer.decode(sample.input_ids[76:99]) == "\n\n### Instruction:\nWhat colour is it?\n\n### Response:\n"
    trained = [i for i in sample.labels if i != X]
    assert tokenizer.decode(trained) == "A red ball.</s>Red.</s>"


def test_one_bos_per_sequence(tokenizer):
    sample = tokenize_conversation(two_turns(), tokenizer)
    assert sample.input_ids.count(tokenizer.bos_token_id) == 1 and sample.input_ids[0] == tokenizer.bos_token_id


def test_no_bos_when_the_tokenizer_does_not_add_one(tokenizer):
    sample = ConversationTokenizer(tokenizer, add_bos=False)(two_turns())
    assert tokenizer.bos_token_id not in sample.input_ids
    assert sample.labels == [X] * 69 + [35, 338, 70, 356, 16, 2] + [X] * 23 + [52, 377, 16, 2]


def test_truncation_keeps_image_tokens_with_their_images(tokenizer):
    conv = single_turn("Q1", "A1", images=["1.jpg"]).with_user_turn("Q2", images=["2.jpg"]).with_answer("A2")
    full = tokenize_conversation(conv, tokenizer, 512)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    second_image_at = [i for i, t in enumerate(full.input_ids) if t == image_id][1]
    cut = ConversationTokenizer(tokenizer, max_length=second_image_at)(conv)  # drops the 2nd <image> token
    assert cut.truncated and len(cut) == second_image_at and cut.full_length == len(full)
    assert cut.input_ids == full.input_ids[:second_image_at] and cut.labels == full.labels[:second_image_at]
    assert cut.images == ["1.jpg"]
    kept = ConversationTokenizer(tokenizer, max_length=second_image_at + 1)(conv)
    assert kept.images == ["1.jpg", "2.jpg"]


def test_fully_masked_samples_are_dropped_with_a_reason(tokenizer):
    conv = single_turn("A long question " * 20, "Yes.", images=["x.jpg"])
    with pytest.raises(SampleDropped, match="max_length=32") as caught:
        ConversationTokenizer(tokenizer, max_length=32)(conv)
    assert caught.value.reason == "fully_masked"


def test_literal_image_marker_in_text_is_a_mismatch(tokenizer):
    conv = single_turn("<image>\nWhat is it?", "A cat.", images=["x.jpg"])
    with pytest.raises(SampleDropped, match="2 <image> tokens for 1 images") as caught:
        tokenize_conversation(conv, tokenizer)
    assert caught.value.reason == "image_mismatch"


def test_prompt_tokens_are_the_training_prefix(tokenizer):
    conv = two_turns()
    trained = tokenize_conversation(conv, tokenizer)
    history = single_turn("What is in the image?", "A red ball.", images=["ball.jpg"])
    prompt = tokenize_prompt(history.with_user_turn("What colour is it?"), tokenizer)
    assert trained.input_ids[: len(prompt)] == prompt.input_ids
    assert len(prompt) == 99 and set(prompt.labels) == {X}
    assert prompt.images == ["ball.jpg"]


def test_many_equals_one_by_one(tokenizer):
    convs = [two_turns(), single_turn("Hi", "Hello"), single_turn("x " * 400, "y", images=["a.jpg"])]
    tok = ConversationTokenizer(tokenizer, max_length=128)
    results = tok.many(convs)
    assert results[0] == tok(convs[0]) and results[1] == tok(convs[1])
    assert isinstance(results[2], SampleDropped) and results[2].reason == "fully_masked"


def test_tokenizer_without_special_tokens_is_refused():
    bare = train_tokenizer(["hello world"], vocab_size=300)
    with pytest.raises(ValueError, match="add_special_tokens"):
        ConversationTokenizer(bare)
    add_special_tokens(bare)
    assert ConversationTokenizer(bare)(single_turn("hello", "world")).num_trained > 0
    with pytest.raises(ValueError, match="max_length"):
        ConversationTokenizer(bare, max_length=1)


def test_load_tokenizer_adds_the_special_tokens(tokenizer, tokenizer_dir, tmp_path):
    loaded = load_tokenizer(str(tokenizer_dir))
    assert loaded.convert_tokens_to_ids("<image>") == tokenizer.convert_tokens_to_ids("<image>")
    assert (
        tokenize_conversation(two_turns(), loaded).input_ids == tokenize_conversation(two_turns(), tokenizer).input_ids
    )
    with pytest.raises(ValueError, match="no such tokenizer folder"):
        load_tokenizer(str(tmp_path / "missing"))


def test_direct_rust_encoding_equals_the_wrapper(tokenizer):
    fast = ConversationTokenizer(tokenizer)
    assert fast._backend is not None  # the tiny tokenizer has no Python-side preprocessing
    wrapper = ConversationTokenizer(tokenizer)
    wrapper._backend = None
    convs = [two_turns(), single_turn("Héllo  wörld\n\n", " spaces ", input="ünïcode\t")]
    assert fast.many(convs) == wrapper.many(convs)
