"""The exact strings of reference.md section 5, for every template variant."""

from __future__ import annotations

import pytest

from mmgpt.data.conversation import Conversation, Message, single_turn
from mmgpt.data.templates import (
    CAPTION_INSTRUCTIONS,
    HEADER,
    Segment,
    aokvqa_answer,
    extract_response,
    join_options,
    render,
    render_prompt,
    render_text,
)
from mmgpt.tokens import IMAGE

H = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def test_header_is_the_papers():
    assert HEADER == H


def test_vision_language_single_turn():
    conv = single_turn("What is this?", "A cat.", images=["cat.jpg"])
    expected = f"{H}\n\n### Image:\n<image>\n\n### Instruction:\nWhat is this?\n\n### Response:\nA cat.</s>"
    assert render_text(conv, eos="</s>") == expected
    assert render(conv) == [
        Segment(f"{H}\n\n### Image:\n"),
        Segment(IMAGE),
        Segment("\n\n### Instruction:\nWhat is this?\n\n### Response:\n"),
        Segment("A cat.", response=True),
    ]
    assert render(conv)[1].is_image and not render(conv)[3].is_image


def test_vision_language_with_options():
    conv = single_turn("Which animal?", None, images=["x.jpg"], input=join_options(["cat", "dog", "cow"]))
    assert render_text(conv) == (
        f"{H}\n\n### Image:\n<image>\n\n### Instruction:\nWhich animal?\n\n### Input:\ncat, dog, cow\n\n### Response:\n"
    )


def test_language_only_with_and_without_input():
    plain = single_turn("Name a colour.", "Blue.")
    assert render_text(plain, eos="<EOS>") == f"{H}\n\n### Instruction:\nName a colour.\n\n### Response:\nBlue.<EOS>"
    with_input = single_turn("Summarise.", "Short.", input="A long text.")
    assert render_text(with_input, eos="<EOS>") == (
        f"{H}\n\n### Instruction:\nSummarise.\n\n### Input:\nA long text.\n\n### Response:\nShort.<EOS>"
    )
    # An empty input (Alpaca's "") is no Input section at all.
    assert render_text(single_turn("Name a colour.", "Blue.", input="")) == render_text(plain)


def test_multi_turn_continuation():
    conv = single_turn("Q1", "A1", images=["a.jpg"]).with_user_turn("Q2").with_answer("A2")
    assert render_text(conv, eos="<EOS>") == (
        f"{H}\n\n### Image:\n<image>\n\n### Instruction:\nQ1\n\n### Response:\nA1<EOS>"
        "\n\n### Instruction:\nQ2\n\n### Response:\nA2<EOS>"
    )


def test_images_in_a_later_turn_and_several_images():
    conv = single_turn("Q1", "A1").with_user_turn("Q2", images=["a.jpg", "b.jpg"])
    assert render_text(conv) == (
        f"{H}\n\n### Instruction:\nQ1\n\n### Response:\nA1"
        "\n\n### Image:\n<image>\n<image>\n\n### Instruction:\nQ2\n\n### Response:\n"
    )
    assert [s.is_image for s in render(conv)].count(True) == 2


def test_render_prompt_needs_a_pending_user_turn():
    history = single_turn("Q1", "A1", images=["a.jpg"])
    with pytest.raises(ValueError, match="with_user_turn"):
        render_prompt(history)
    segments = render_prompt(history.with_user_turn("Q2"))
    assert segments[-1] == Segment("\n\n### Instruction:\nQ2\n\n### Response:\n")


def test_extract_response_takes_the_text_after_the_last_response_marker():
    generated = f"{H}\n\n### Instruction:\nQ1\n\n### Response:\nA1\n\n### Instruction:\nQ2\n\n### Response:\n A2 "
    assert extract_response(generated) == "A2"
    assert extract_response("### Response:\nYes.\n\n### Instruction:\nmore") == "Yes."


def test_aokvqa_answer_and_caption_instructions():
    assert aokvqa_answer("red", ["It is red.", "Colour."]) == "The answer is red. Because It is red. Colour."
    assert len(CAPTION_INSTRUCTIONS) == 10
    assert CAPTION_INSTRUCTIONS[0] == "Can you describe the image?"


def test_conversation_validates_roles():
    with pytest.raises(ValueError, match="expected 'user'"):
        Conversation([Message("assistant", "hi")])
    with pytest.raises(ValueError, match="alternate"):
        Conversation([Message("user", "a"), Message("user", "b")])
    with pytest.raises(ValueError, match="only user messages"):
        Message("assistant", "a", images=["x.jpg"])
    with pytest.raises(ValueError, match="role"):
        Message("system", "a")  # type: ignore[arg-type]
    conv = single_turn("q", "a", images=["1.jpg"]).with_user_turn("q2", images=["2.jpg"])
    assert conv.images == ["1.jpg", "2.jpg"]
    assert conv.is_prompt
    assert [(u.text, a.text if a else None) for u, a in conv.turns()] == [("q", "a"), ("q2", None)]
