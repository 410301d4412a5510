"""Issue 22's hostile image set (tests/hostile.py) through every entry point: the chat session and the HTTP API (for
both model kinds: a Flamingo and the toy prefix model), `mmgpt data check` (header probe and full decode) and the
training loader (``on_error: raise`` and ``skip``, with the model kind's own transform and prompt format).

Every unreadable file becomes one clear error naming it (and source, row and field for data); nothing else escapes.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mmgpt.chat import ChatModel, ChatSession
from mmgpt.data.check import check_data
from mmgpt.data.config import DataConfig, SourceConfig
from mmgpt.data.images import ImageError, ImageTooLargeError
from mmgpt.data.loader import build_training_batches
from mmgpt.data.sources.read import BrokenImageError
from mmgpt.generate import GenerationConfig
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.serve.limits import ServeLimits
from tests.hostile import BROKEN, BY_NAME, GOOD, write_corpus
from tests.model.conftest import tiny_model
from tests.serve.test_api import data_url
from tests.toy_prefix import make_tokenizer, make_toy

BUDGET = 128 * 128


LIMITS = ServeLimits(max_image_pixels=BUDGET)
SHORT = GenerationConfig(max_new_tokens=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("hostile") / "images")


@pytest.fixture(scope="module", params=["flamingo", "toy-prefix"])
def kind(request):
    """(model, tokenizer) of each model kind of the contract."""
    if request.param == "flamingo":
        return tiny_model("llama", "following")
    tokenizer = make_tokenizer()
    return make_toy(tokenizer), tokenizer


@pytest.fixture(scope="module")
def chat_model(kind) -> ChatModel:
    model, tokenizer = kind
    return ChatModel.wrap(model, tokenizer, name="tiny", max_image_pixels=BUDGET)


# ---------------------------------------------------------------------------------------------- chat and API
def test_the_chat_session_answers_or_names_the_file_and_stays_usable(chat_model, images):
    for name, path in images.items():
        expected = BY_NAME[name]
        session = ChatSession(chat_model)
        if expected.outcome == "ok":
            assert session.ask("describe", images=[path], config=SHORT).completion_tokens >= 1, name
            continue
        error_type = ImageTooLargeError if expected.outcome == "too_large" else ImageError
        with pytest.raises(error_type, match=re.escape(expected.match)) as caught:
            session.ask("describe", images=[path], config=SHORT)
        assert caught.value.path == str(path) and str(caught.value).startswith(f"{path}: "), name
        assert session.turns == [] and session.ask("hello", config=SHORT).completion_tokens >= 1  # still usable
        assert len(session.turns) == 1


def test_the_api_answers_200_or_an_openai_shaped_4xx_without_server_paths(chat_model, images):
    app = build_app(chat_model, ServeConfig(web_path=None, limits=LIMITS))
    with TestClient(app, raise_server_exceptions=False) as http:
        for name, path in images.items():
            expected = BY_NAME[name]
            part = {"type": "image_url", "image_url": {"url": data_url(path.read_bytes())}}
            content = [{"type": "text", "text": "describe"}, part]
            body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2}
            response = http.post("/v1/chat/completions", json=body)
            if expected.outcome == "ok":
                assert response.status_code == 200, (name, response.text)
                continue
            status, code = (413, "image_too_large") if expected.outcome == "too_large" else (400, "invalid_image")
            assert response.status_code == status and response.headers["content-type"] == "application/json", name
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, name
            message = error["message"]
            assert message.startswith("image 1 (messages[0].content[1]): ") and expected.match in message, message
            assert "mmgpt-images" not in message and "/tmp" not in message and "re-download" not in message, message
            if expected.outcome == "too_large":
                assert f"at most {BUDGET:,} pixels" in message, message


# ---------------------------------------------------------------------------------------------- data
def data_config(root: Path, names: list[str], *, on_error: str = "raise") -> DataConfig:
    """A LLaVA file with one row per image (row i uses names[i]) under ``root``; images live in root/images."""
    rows = [
        {
            "id": f"r{i}",
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the image?"},
                {"from": "gpt", "value": "A picture."},
            ],
        }
        for i, name in enumerate(names)
    ]
    (root / "llava.json").write_text(json.dumps(rows))
    source = SourceConfig(name="llava", format="llava", path="llava.json", images="images", on_error=on_error)
    return DataConfig(vision_language=[source], root=str(root), language_ratio=0.0, max_length=128, batch_size=2)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_model("llama", "following")[1]


@pytest.mark.parametrize("name", BROKEN)
def test_data_check_lists_each_broken_image_by_file_row_and_field(images, tokenizer, name):
    root = images["animated.gif"].parent.parent
    cfg = data_config(root, [*GOOD[:2], name])
    probed = check_data(cfg, tokenizer).sources[0]
    decoded = check_data(cfg, tokenizer, decode_images=True).sources[0]
    expected = BY_NAME[name]
    for report, found in ((probed, expected.header), (decoded, True)):
        if not found:  # cut after its header: only decoding finds it
            assert report.broken_images == 0 and report.fatal is None and report.usable == 3
            continue
        assert report.broken_images == 1 and report.usable == 2
        (example,) = report.broken_examples
        assert example.startswith(f"row 2, field 'image': {images[name]}: ") and expected.match in example, example
        # on_error: raise (the default): training would stop there, so the check fails and says how to go on.
        assert "1 row(s) with a broken image" in report.fatal and "on_error: skip" in report.fatal
    skipping = check_data(data_config(root, [*GOOD[:2], name], on_error="skip"), tokenizer, decode_images=True)
    assert skipping.ok and skipping.sources[0].broken_images == 1


def test_data_check_passes_the_good_images(images, tokenizer):
    report = check_data(data_config(images["animated.gif"].parent.parent, GOOD), tokenizer, decode_images=True)
    assert report.ok and report.sources[0].usable == len(GOOD) and report.sources[0].broken_images == 0


def batches_of(cfg: DataConfig, kind):
    model, tokenizer = kind
    return build_training_batches(
        cfg,
        tokenizer,
        image_transform=model.image_transform(max_pixels=cfg.max_image_pixels),
        fmt=model.prompt_format,
        pad_id=model.special.pad,
    )


def test_the_training_loader_skips_counts_and_names_broken_images(images, kind):
    root = images["animated.gif"].parent.parent
    names = [*GOOD, *BROKEN]
    batches = batches_of(data_config(root, names, on_error="skip"), kind)
    paired = list(zip(range(5), batches, strict=False))[-1]
    stream = batches.vision_language.stream
    consumed = [j for epoch in range(stream.epoch) for j in stream.order(epoch)]
    consumed += stream.order(stream.epoch)[: stream.index]
    used = [names[int(stream.items[j].id[1:])] for j in consumed]
    assert sum(name in GOOD for name in used) == 10  # five steps of two: every good image trains, none is lost
    skipped = batches.skipped()
    assert skipped["llava"]["counts"] == {"broken image": sum(name in BROKEN for name in used)}
    assert all(any(f"/{name}: " in e for name in BROKEN) for e in skipped["llava"]["examples"])
    again = batches_of(data_config(root, names, on_error="skip"), kind)
    again.load_state_dict(paired[1].state)  # the counts travel with the data position (checkpoints, resume)
    assert again.skipped() == skipped


@pytest.mark.parametrize("name", BROKEN)
def test_the_training_loader_stops_on_a_broken_image_naming_file_row_and_field(images, kind, name):
    root = images["animated.gif"].parent.parent
    batches = batches_of(data_config(root, [*GOOD[:3], name]), kind)
    with pytest.raises(BrokenImageError) as caught:
        for _ in zip(range(4), batches, strict=False):
            pass
    message = str(caught.value)
    assert message.startswith(f"{root / 'llava.json'} row 3, field 'image': image {images[name]}: "), message
    assert BY_NAME[name].match in message and "set 'on_error: skip' on this source" in message


def test_the_terminal_chat_prints_one_error_per_broken_file_and_goes_on(chat_model, images, capsys):
    from mmgpt.commands.chat import chat_loop

    script = "".join(f"/image {images[name]}\n" for name in BROKEN) + "hello\n"
    out = io.StringIO()
    assert chat_loop(ChatSession(chat_model), SHORT, io.StringIO(script), out, interactive=False) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == len(BROKEN)
    for line, name in zip(errors, BROKEN, strict=True):
        assert line.startswith(f"error: {images[name]}: ") and BY_NAME[name].match in line, line
    assert out.getvalue().strip()  # the message after them was answered
