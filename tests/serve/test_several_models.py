"""Several models behind one server (``mmgpt serve --model A --model B``): a Flamingo with two adapters and a prefix
model - the API and the web demo pick by name, each answer as that model gives it alone, and a demo conversation
moves from one model to the other."""

from __future__ import annotations

import dataclasses
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mmgpt.chat import ChatModel, ChatSession
from mmgpt.generate import GenerationConfig
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.serve.limits import ServeLimits
from mmgpt.serve.loading import TINY_RANDOM, load_chat_model, parse_models
from mmgpt.serve.models import ServedModels
from tests.serve.conftest import png, tiny_chat_model
from tests.serve.test_api import image_part
from tests.toy_prefix import make_tokenizer, make_toy

GREEDY = GenerationConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[ChatModel]:
    """Models of their own: the package's server batches the shared one for its whole life."""
    tokenizer = make_tokenizer()
    prefix = make_toy(tokenizer)
    prefix.config = dataclasses.replace(prefix.config, prompt_style="minigpt4")  # another template than Flamingo's
    toy = ChatModel.wrap(prefix, tokenizer, name="toy", max_image_pixels=128 * 128)
    return [tiny_chat_model(tmp_path_factory), toy]


def alone(chat: ChatModel, adapter: str | None, text: str, image: bytes) -> str:
    session = ChatSession(chat, adapter=adapter, drop_oldest=False)
    return session.ask(text, images=[Image.open(io.BytesIO(image))], config=GREEDY).text


def test_the_api_serves_each_model_and_adapter_by_name_as_each_answers_alone(models):
    flamingo, toy = models
    expected = {
        name: alone(chat, adapter, "What is it?", png(4))
        for name, chat, adapter in (("tiny", flamingo, None), ("two", flamingo, "two"), ("toy", toy, None))
    }
    limits = ServeLimits(max_image_pixels=128 * 128, max_rows=4)
    with TestClient(build_app(models, ServeConfig(web_path=None, limits=limits))) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny", "one", "two", "toy"]
        assert client.get("/health").json()["models"] == ["tiny", "one", "two", "toy"]
        assert flamingo.scheduler is not None and toy.scheduler is not None  # each model batches its own rows
        for name, answer in expected.items():
            content = [{"type": "text", "text": "What is it?"}, image_part(png(4))]
            body = {"model": name, "messages": [{"role": "user", "content": content}], "temperature": 0}
            response = client.post("/v1/chat/completions", json={**body, "max_tokens": 6})
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == answer
        missing = client.post(
            "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert missing.status_code == 404
        assert (
            missing.json()["error"]["message"]
            == "model 'nope' does not exist; this server has ['tiny', 'one', 'two', 'toy']"
        )
    assert flamingo.scheduler is None and toy.scheduler is None  # stopped with the app
    assert len(set(expected.values())) == 3


def test_two_models_with_one_name_are_refused_naming_it(models):
    flamingo, toy = models
    twin = ChatModel(toy.model, toy.tokenizer, toy.transform, name="one")  # the name of flamingo's adapter
    with pytest.raises(ValueError, match="two served models are named 'one'; give one another name"):
        ServedModels([flamingo, twin])
    assert parse_models(["a=build/x", "build/y", "tiny-world", "build/a=b"]) == [
        ("a", "build/x"),
        (None, "build/y"),
        (None, "tiny-world"),
        (None, "build/a=b"),
    ]
    with pytest.raises(ValueError, match="give MODEL or NAME=MODEL"):
        parse_models(["=build/x"])
    assert load_chat_model(TINY_RANDOM, name="base-a").name == "base-a"


def test_the_demo_lists_every_model_and_carries_a_conversation_to_another(models, tmp_path):
    from mmgpt.serve.web import build_demo

    flamingo, toy = models
    picture = tmp_path / "p.png"
    picture.write_bytes(png(5))
    demo = build_demo(models)
    try:
        menu = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model")
        assert menu.choices == [(n, n) for n in ("tiny", "one", "two", "toy")] and menu.value == "one"
        intro = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "intro")
        assert "Also served: `toy`" in intro.value and intro.value.startswith("## mmgpt\n")
        for chat, title in ((toy, "MiniGPT-4"), (flamingo, "MultiModal-GPT")):  # one model: its system's name
            alone_demo = build_demo(chat)
            assert alone_demo.title == title
            alone_demo.cleanup()
        respond = next(f.fn for f in demo.fns.values() if f.name == "respond")

        def say(text, files, session, model):
            *_, (_, _, after, prompt) = respond({"text": text, "files": files}, session, model, 0.0, 1.0, 6)
            return after, prompt

        session, _ = say("What is it?", [str(picture)], None, "one")
        assert session.chat_model is flamingo and session.adapter == "one"
        first_answer = session.turns[0].answer
        moved, prompt = say("And now?", [], session, "toy")  # the same conversation, continued by the toy
        assert moved.chat_model is toy and moved.turns[0].answer == first_answer
        assert "###Human: <Img><ImageHere></Img> What is it?###Assistant: " in prompt  # the toy's prompt style
        assert "###Human" not in session.prompt_text()
    finally:
        demo.cleanup()
    # What the toy answered is what it answers to that history alone.
    again = ChatSession(toy, drop_oldest=True)
    again.load_turns([again.make_turn("What is it?", [picture])])
    again.turns[0].answer = first_answer
    assert again.ask("And now?", config=GREEDY).text == moved.turns[1].answer
