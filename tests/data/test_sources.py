"""Every source adapter on fixtures in the published shapes, plus the corrupt rows users will meet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmgpt.data.config import DataConfig, SourceConfig
from mmgpt.data.conversation import Message
from mmgpt.data.sources import FORMATS, MalformedRowError, SourceError, SourceStats, read_source
from mmgpt.data.sources.baize import parse_transcript
from mmgpt.data.templates import CAPTION_INSTRUCTIONS, DESCRIPTION_INSTRUCTIONS, REASON_QUESTIONS
from tests.data import formats
from tests.data.formats import dump


def read(root: Path, fmt: str, path: Path, *, images: str | None = None, on_error="raise", **options):
    source = SourceConfig(
        name=fmt, format=fmt, path=str(path.relative_to(root)), images=images, on_error=on_error, options=options
    )
    stats = SourceStats(fmt)
    conversations = list(read_source(source, resolve=DataConfig(root=str(root)).resolve, stats=stats))
    return conversations, stats


def pairs(conversation):
    return [(m.role, m.text) for m in conversation.messages]


def test_every_documented_format_has_an_adapter():
    assert set(FORMATS) == {
        "llava", "minigpt4", "aokvqa", "coco_captions", "ocr_vqa", "vqa", "gqa", "dolly", "alpaca", "baize",
        "interleaved", "mplug_owl",
    }  # fmt: skip


def test_llava_single_and_multi_turn(tmp_path):
    path = formats.llava(tmp_path)
    convs, stats = read(tmp_path, "llava", path, images="coco/train2017")
    assert (stats.rows, stats.conversations, stats.missing_images) == (3, 3, 0)
    first = convs[0]
    assert pairs(first) == [("user", "What is the man doing?"), ("assistant", "He is riding a horse.")]
    assert first.messages[0].images == (tmp_path / "coco/train2017/000000215677.jpg",)
    assert first.id == "000000215677" and first.source == "llava"
    # <image> after the question is removed too; the image still goes to the first user message.
    assert convs[1].messages[0] == Message(
        "user", "What colour is the bus?", [tmp_path / "coco/train2017/000000000002.jpg"]
    )


def test_llava_pairs_turn_2k_with_2k_plus_1(tmp_path):
    # Regression for the reference's off-by-one (i with i+1): every user turn is a human question and every
    # assistant turn the gpt answer that follows it; nothing trains with the roles swapped.
    convs, _ = read(tmp_path, "llava", formats.llava(tmp_path), images="coco/train2017")
    assert pairs(convs[1]) == [
        ("user", "What colour is the bus?"),
        ("assistant", "Red."),
        ("user", "Where is it going?"),
        ("assistant", "To the city centre."),
        ("user", "Is it full?"),
        ("assistant", "No, it is nearly empty."),
    ]
    assert [m.images != () for m in convs[1].messages] == [True, False, False, False, False, False]


def test_llava_missing_image_is_skipped_and_counted(tmp_path):
    path = formats.llava(tmp_path, missing=("000000000002.jpg",))
    convs, stats = read(tmp_path, "llava", path, images="coco/train2017")
    assert [c.id for c in convs] == ["000000215677", "000000000003"]
    assert stats.missing_images == 1 and stats.skipped == {"missing image": 1}
    assert stats.examples["missing image"] == [str(tmp_path / "coco/train2017/000000000002.jpg")]


CORRUPT_LLAVA = [
    ({"id": "x", "image": "a.jpg"}, "conversations", "missing"),
    ({"id": "x", "image": "a.jpg", "conversations": "hi"}, "conversations", "expected a list"),
    (
        {"image": "a.jpg", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
        "conversations[0].from",
        "expected 'human'",
    ),
    ({"image": "a.jpg", "conversations": [{"from": "human", "value": "a"}]}, "conversations", "1 turns"),
    (
        {"image": "a.jpg", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
        "conversations[1].value",
        "missing",
    ),
    (
        {"image": "a.jpg", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}]},
        "conversations[0].value",
        "no question",
    ),
    ({"image": 5, "conversations": []}, "conversations", "0 turns"),
    ("just a string", "(row)", "expected a JSON object"),
]


@pytest.mark.parametrize(("row", "field", "problem"), CORRUPT_LLAVA)
def test_malformed_llava_row_names_file_row_and_field(tmp_path, row, field, problem):
    formats.write_image(tmp_path / "a.jpg")
    good = {"image": "a.jpg", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    path = dump(tmp_path / "detail_23k.json", [good, row])
    with pytest.raises(MalformedRowError) as caught:
        read(tmp_path, "llava", path)
    error = caught.value
    assert (error.path, error.where, error.field) == (path, "row 1", field)
    assert problem in error.problem
    assert f"detail_23k.json row 1, field '{field}'" in str(error) and "on_error: skip" in str(error)


def test_malformed_rows_can_be_skipped_and_counted(tmp_path):
    formats.write_image(tmp_path / "a.jpg")
    good = {"image": "a.jpg", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    bad_speaker = {"image": "a.jpg", "conversations": [{"from": "gpt", "value": "q"}, {"from": "gpt", "value": "a"}]}
    rows = [good, {"image": "a.jpg"}, bad_speaker, {"image": "a.jpg"}, good]
    convs, stats = read(tmp_path, "llava", dump(tmp_path / "x.json", rows), on_error="skip")
    assert len(convs) == 2 and stats.rows == 5
    assert stats.skipped == {"malformed conversations": 2, "malformed conversations[].from": 1}
    assert stats.examples["malformed conversations"] == ["row 1: missing", "row 3: missing"]


def test_minigpt4(tmp_path):
    convs, stats = read(tmp_path, "minigpt4", formats.minigpt4(tmp_path))
    assert stats.conversations == 2
    assert convs[0].messages[0].text in DESCRIPTION_INSTRUCTIONS
    assert convs[0].messages[1].text == "The image shows a man fishing on a lake."
    assert convs[0].images == [tmp_path / "cc_sbu_align/image/2.jpg"]
    again, _ = read(tmp_path, "minigpt4", formats.minigpt4(tmp_path))
    assert again == convs  # the instruction is fixed per row


def test_aokvqa_rationale_and_multiple_choice(tmp_path):
    path = formats.aokvqa(tmp_path)
    convs, stats = read(tmp_path, "aokvqa", path, images="coco")
    assert stats.conversations == 3
    question, answer = convs[0].messages
    assert question.text.startswith("What is the man by the bags awaiting? ")
    assert question.text.removeprefix("What is the man by the bags awaiting? ") in REASON_QUESTIONS
    assert question.input is None
    assert answer.text == "The answer is cab. Because He has bags. He is by the road."
    assert convs[0].images == [tmp_path / "coco/train2017/000000299207.jpg"]
    assert convs[1].images == [tmp_path / "coco/val2017/000000000042.jpg"]
    assert convs[2].images == [tmp_path / "coco/custom/x.jpg"]  # the redistributions' 'image' field
    mc, _ = read(tmp_path, "aokvqa", path, images="coco", variant="multiple_choice")
    assert mc[0].messages[0].input == "skateboarder, train, delivery, cab"
    assert mc[0].messages[1].text == answer.text


def test_aokvqa_test_split_rows_without_answers_are_malformed(tmp_path):
    formats.write_image(tmp_path / "coco/test2017/000000000001.jpg")
    row = {"split": "test", "image_id": 1, "question": "Why?", "choices": ["a", "b"], "rationales": ["r"]}
    with pytest.raises(MalformedRowError, match="correct_choice_idx"):
        read(tmp_path, "aokvqa", dump(tmp_path / "a.json", [row]), images="coco")
    bad = {**row, "correct_choice_idx": 7}
    with pytest.raises(MalformedRowError, match="outside the 2 choices"):
        read(tmp_path, "aokvqa", dump(tmp_path / "a.json", [bad]), images="coco")


def test_coco_captions_official_layout(tmp_path):
    convs, stats = read(tmp_path, "coco_captions", formats.coco_official(tmp_path), images="coco/train2017")
    assert stats.rows == 2 and [c.messages[1].text for c in convs] == [
        "A plate of food.",
        "Broccoli and rice on a plate.",
    ]
    assert all(c.messages[0].text in CAPTION_INSTRUCTIONS for c in convs)
    assert convs[0].images == [tmp_path / "coco/train2017/000000000009.jpg"] and convs[0].id == "1"


def test_coco_captions_karpathy_layout(tmp_path):
    convs, stats = read(tmp_path, "coco_captions", formats.coco_karpathy(tmp_path), images="coco")
    assert (stats.rows, stats.conversations) == (2, 6)  # one train caption + five val captions
    assert [c.messages[1].text for c in convs[1:]] == [f"Caption {k}." for k in range(5)]
    assert convs[0].images == [tmp_path / "coco/train2014/COCO_train2014_000000000009.jpg"]
    assert [c.id for c in convs[:2]] == ["coco_9:0", "coco_42:0"]


def test_coco_captions_unknown_image_id(tmp_path):
    data = {"images": [], "annotations": [{"image_id": 5, "id": 1, "caption": "x"}]}
    with pytest.raises(MalformedRowError, match="annotations\\[0\\], field 'image_id': 5 is not in"):
        read(tmp_path, "coco_captions", dump(tmp_path / "captions.json", data))


def test_ocr_vqa_splits_extensions_and_missing_images(tmp_path):
    path = formats.ocr_vqa(tmp_path)
    convs, stats = read(tmp_path, "ocr_vqa", path, images="ocr_vqa/images")
    assert stats.rows == 4 and stats.conversations == 6
    assert stats.skipped == {"missing image": 1, "not in split 'train'": 1}
    assert convs[0].messages[1].text == "Jane Doe" and convs[5].messages[1].text == "1999"
    assert convs[3].images == [tmp_path / "ocr_vqa/images/000000001.png"]
    multi, _ = read(tmp_path, "ocr_vqa", path, images="ocr_vqa/images", multi_turn=True, split="all")
    assert len(multi) == 3 and len(multi[0].messages) == 6 and multi[2].images[0].suffix == ".gif"


def test_vqa_joins_questions_and_annotations(tmp_path):
    convs, _ = read(tmp_path, "vqa", formats.vqa(tmp_path), images="coco")
    assert [pairs(c) for c in convs] == [
        [("user", "What is the table made of?"), ("assistant", "wood")],
        [("user", "Is the food napping?"), ("assistant", "no")],
    ]
    assert convs[0].images == [tmp_path / "coco/train2014/COCO_train2014_000000000458.jpg"]


def test_vqa_without_annotations_file_is_fatal(tmp_path):
    path = formats.vqa(tmp_path)
    (tmp_path / "vqa/v2_mscoco_train2014_annotations.json").unlink()
    with pytest.raises(SourceError, match=r"set options\.annotations"):
        read(tmp_path, "vqa", path, images="coco")


def test_gqa_short_and_full_answers(tmp_path):
    path = formats.gqa(tmp_path)
    short, _ = read(tmp_path, "gqa", path, images="gqa/images")
    full, _ = read(tmp_path, "gqa", path, images="gqa/images", answer="full")
    assert short[0].messages[1].text == "pipe" and full[0].messages[1].text == "The pipe is on the wall."
    assert short[0].id == "07333408"


def test_dolly_context_is_the_input_section(tmp_path):
    convs, _ = read(tmp_path, "dolly", formats.dolly(tmp_path))
    assert convs[0].messages[0] == Message(
        "user", "When did Virgin Australia start?", input="Virgin Australia began in 2000."
    )
    assert convs[1].messages[0].input is None and convs[1].images == []


def test_dolly_bad_json_line(tmp_path):
    path = formats.dolly(tmp_path)
    path.write_text(path.read_text() + "{not json\n\n" + json.dumps({"instruction": "x", "response": "y"}) + "\n")
    with pytest.raises(MalformedRowError, match="line 3, field '\\(line\\)': not JSON"):
        read(tmp_path, "dolly", path)
    convs, stats = read(tmp_path, "dolly", path, on_error="skip")
    assert len(convs) == 3 and stats.skipped == {"malformed (line)": 1}


def test_alpaca(tmp_path):
    convs, _ = read(tmp_path, "alpaca", formats.alpaca(tmp_path))
    assert convs[0].messages[0].input is None and convs[1].messages[0].input == "Good morning"
    assert convs[1].messages[1].text == "Bonjour"


def test_baize_transcript(tmp_path):
    convs, _ = read(tmp_path, "baize", formats.baize(tmp_path))
    assert pairs(convs[0]) == [
        ("user", "How do I learn Python?"),
        ("assistant", "Start with the tutorial."),
        ("user", "And then?"),
        ("assistant", "Build small projects."),
    ]
    assert parse_transcript("system\n[|Human|] a\n[|AI|] b") == [("Human", "a"), ("AI", "b")]


@pytest.mark.parametrize(
    ("transcript", "problem"),
    [
        ("The conversation.\n", "no [|Human|]"),
        ("x [|AI|] hello [|Human|] hi [|AI|] there", "turn 0 is from [|AI|]"),
        ("x [|Human|] a [|Human|] b [|AI|] c", "turn 1 is from [|Human|]"),
        ("x [|Human|] a [|AI|] ", "turn 1 ([|AI|]) is empty"),
    ],
)
def test_baize_malformed_transcripts(tmp_path, transcript, problem):
    with pytest.raises(MalformedRowError) as caught:
        read(tmp_path, "baize", dump(tmp_path / "b.json", [{"topic": "t", "input": transcript}]))
    assert problem in caught.value.problem


def test_missing_file_and_wrong_top_level_shape_are_fatal(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        read(tmp_path, "alpaca", tmp_path / "nope.json")
    with pytest.raises(SourceError, match="expected a JSON list"):
        read(tmp_path, "alpaca", dump(tmp_path / "obj.json", {"a": 1}))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"}, {"instruction": ')
    with pytest.raises(SourceError, match=r"broken\.json: invalid JSON at character"):
        read(tmp_path, "alpaca", broken)
