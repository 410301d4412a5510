"""Properties of tokenisation over generated conversations (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.templates import render, render_text
from mmgpt.data.tokenize import ConversationTokenizer, SampleDropped
from mmgpt.tokens import IGNORE_INDEX

SPECIAL = ("<image>", "<s>", "</s>", "<unk>", "<PAD>", "<|endofchunk|>")
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30).filter(
    lambda t: not any(s in t for s in SPECIAL)
)
image_names = st.lists(st.sampled_from(["a.jpg", "b.png", "c.gif"]), max_size=2)


@st.composite
def conversations(draw) -> Conversation:
    messages = []
    for turn in range(draw(st.integers(1, 3))):
        images = draw(image_names) if turn == 0 or draw(st.booleans()) else []
        messages.append(Message("user", draw(text), images, input=draw(st.none() | text)))
        messages.append(Message("assistant", draw(text)))
    return Conversation(messages)


def decode(tokenizer, ids):
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


@settings(max_examples=60, deadline=None)
@given(conversations())
def test_labels_are_ignored_exactly_outside_responses_and_eos(tokenizer, conv):
    sample = ConversationTokenizer(tokenizer, max_length=10_000)(conv)
    assert len(sample.labels) == len(sample.input_ids)
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(sample.labels, sample.input_ids, strict=True))
    trained = [t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE_INDEX]
    ignored = [t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label == IGNORE_INDEX]
    responses = [m.text for m in conv.messages if m.role == "assistant"]
    assert decode(tokenizer, trained) == "".join(r + "</s>" for r in responses)
    assert trained.count(tokenizer.eos_token_id) == len(responses)
    prompts = "".join(s.text for s in render(conv) if not s.response)
    assert decode(tokenizer, ignored) == "<s>" + prompts
    assert sample.input_ids.count(tokenizer.convert_tokens_to_ids("<image>")) == len(conv.images)


@settings(max_examples=40, deadline=None)
@given(conversations(), st.integers(2, 160))
def test_truncation_is_a_prefix_and_keeps_images_with_their_tokens(tokenizer, conv, max_length):
    full = ConversationTokenizer(tokenizer, max_length=10_000)(conv)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    try:
        cut = ConversationTokenizer(tokenizer, max_length=max_length)(conv)
    except SampleDropped as dropped:
        assert dropped.reason == "fully_masked"
        assert set(full.labels[:max_length]) == {IGNORE_INDEX}
        return
    assert len(cut) == min(len(full), max_length) and cut.truncated == (len(full) > max_length)
    assert cut.input_ids == full.input_ids[: len(cut)] and cut.labels == full.labels[: len(cut)]
    assert cut.images == conv.images[: cut.input_ids.count(image_id)]


@settings(max_examples=30, deadline=None)
@given(conversations())
def test_rendering_then_tokenising_is_deterministic(tokenizer, conv):
    copy = Conversation([Message(m.role, m.text, list(m.images), m.input) for m in conv.messages])
    assert render(conv) == render(copy) and render_text(conv) == render_text(copy)
    first = ConversationTokenizer(tokenizer, max_length=10_000)(conv)
    again = ConversationTokenizer(tokenizer, max_length=10_000)(copy)
    assert first == again
