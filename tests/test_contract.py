"""The model contract, proven by a second model kind: the toy prefix model of ``tests/toy_prefix.py``, driven
through generate, a multi-turn ChatSession, a LoRA training step, adapter files and the HTTP API - through the
contract alone. Nothing here imports a concrete architecture of ``mmgpt.model`` (checked in a subprocess).
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmgpt.chat import ChatModel, ChatSession
from mmgpt.config import LoraConfig
from mmgpt.data.conversation import Conversation
from mmgpt.data.tokenize import tokenize_prompt
from mmgpt.generate import GenerationConfig, generate, stream
from mmgpt.model.contract import (
    CONNECTOR,
    EMBEDDINGS,
    LM_MLP,
    LM_OTHER,
    SELF_ATTENTION,
    VISION,
    VisionLanguageModel,
)
from mmgpt.model.lora import (
    apply_lora,
    load_adapter,
    load_named_adapter,
    lora_layers,
    lora_parameters,
    save_adapter,
    select_adapter,
)
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.serve.limits import ServeLimits
from mmgpt.tokens import IMAGE_POSITION
from mmgpt.train.config import load_train_config
from mmgpt.train.trainer import Trainer
from tests.toy_prefix import (
    IMAGE_SIZE,
    PER_IMAGE,
    ToyPrefixModel,
    greedy_by_recomputation,
    make_tokenizer,
    make_toy,
    picture,
    png,
    prompt_of,
    write_data,
)

GREEDY = GenerationConfig(max_new_tokens=8)


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def assert_valid_ids(model, tokenizer, token_ids: list[int]) -> None:
    assert all(0 <= t < len(tokenizer) and t != model.special.pad for t in token_ids), token_ids


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def toy(tokenizer) -> ToyPrefixModel:
    return make_toy(tokenizer)


@pytest.fixture(scope="module")
def chat(toy, tokenizer) -> ChatModel:
    return ChatModel.wrap(toy, tokenizer)


# ---------------------------------------------------------------------------------------------- the contract
def test_the_toy_declares_what_the_layers_above_read(toy, tokenizer):
    assert toy.special.image == IMAGE_POSITION and IMAGE_POSITION < 0
    assert toy.prompt_format.image_tokens == (IMAGE_POSITION,) * PER_IMAGE
    assert toy.never_generate() == {toy.special.pad}  # the placeholder is no id, nothing to suppress
    assert toy.image_transform().size == IMAGE_SIZE
    groups = {toy.parameter_group(name) for name, _ in toy.named_parameters()}
    assert groups == {VISION, CONNECTOR, EMBEDDINGS, SELF_ATTENTION, LM_MLP, LM_OTHER}
    assert toy.trainable_groups("full") == (CONNECTOR, EMBEDDINGS, SELF_ATTENTION, LM_MLP, LM_OTHER)
    ids, pixels = prompt_of(toy, tokenizer, "describe", [picture(1)])
    assert ids.count(IMAGE_POSITION) == PER_IMAGE
    with torch.no_grad():
        a = toy(torch.tensor([ids]), images=pixels[None]).logits[0, -1]
        b = toy(torch.tensor([ids]), images=prompt_of(toy, tokenizer, "describe", [picture(2)])[1][None]).logits
    assert not torch.allclose(a, b[0, -1])  # the image matters
    with pytest.raises(ValueError, match="3 placeholder ids -200"):
        cut = ids.index(IMAGE_POSITION)
        toy(torch.tensor([ids[:cut] + ids[cut + 1 :]]), images=pixels[None])  # one position short


def test_a_kind_that_lacks_a_member_of_the_contract_is_refused_by_name(tokenizer):
    class Forgetful(ToyPrefixModel):  # everything but how its embeddings reach the LM
        run_language_model = VisionLanguageModel.run_language_model

    with pytest.raises(TypeError, match=r"Forgetful.*run_language_model"):
        Forgetful(len(tokenizer), make_toy(tokenizer).special)
    with pytest.raises(TypeError) as bare:
        type("Bare", (VisionLanguageModel,), {"kind": "bare"})()
    for member in ("tokens_per_image", "feature_shape", "embed_images", "run_language_model", "part_groups"):
        assert member in str(bare.value)


# ---------------------------------------------------------------------------------------------- generate
def test_cached_greedy_equals_recomputation_in_a_padded_batch_with_0_1_2_images(toy, tokenizer):
    rows = [
        prompt_of(toy, tokenizer, "what color is the circle? tell me", []),
        prompt_of(toy, tokenizer, "describe", [picture(1)]),
        prompt_of(toy, tokenizer, "compare the two shapes", [picture(2), picture(3)]),
    ]
    prompts, images = [ids for ids, _ in rows], [pixels for _, pixels in rows]
    assert len({len(p) for p in prompts}) == 3  # left padding differs per row
    config = GenerationConfig(max_new_tokens=10)
    batch = generate(toy, tokenizer, prompts, images=images, config=config)
    for prompt, pixels, got in zip(prompts, images, batch, strict=True):
        (alone,) = generate(toy, tokenizer, [prompt], images=[pixels], config=config)
        expected = until_eos(greedy_by_recomputation(toy, prompt, pixels, 10), tokenizer.eos_token_id)
        assert got.token_ids == alone.token_ids == expected
        assert got.prompt_tokens == len(prompt)
        assert_valid_ids(toy, tokenizer, got.token_ids)
    assert len({tuple(g.token_ids) for g in batch}) == 3


def test_seeded_sampling_is_reproducible_and_never_yields_a_placeholder(toy, tokenizer):
    rows = [prompt_of(toy, tokenizer, "describe", [picture(1)]), prompt_of(toy, tokenizer, "hello", [])]
    prompts, images = [ids for ids, _ in rows], [pixels for _, pixels in rows]

    def sample(seed: int) -> list[list[int]]:
        config = GenerationConfig(
            max_new_tokens=12, temperature=1.5, repetition_penalty=1.3, seed=seed, num_return_sequences=2
        )
        return [g.token_ids for g in generate(toy, tokenizer, prompts, images=images, config=config)]

    first = sample(5)
    assert len(first) == 4 and first == sample(5) and first != sample(6)
    for token_ids in first:
        assert_valid_ids(toy, tokenizer, token_ids)


@pytest.mark.parametrize("sampled", [False, True])
def test_stream_deltas_join_to_the_generated_text(toy, tokenizer, sampled):
    prompt, pixels = prompt_of(toy, tokenizer, "compare", [picture(4), picture(5)])
    config = GenerationConfig(max_new_tokens=12, temperature=1.0 if sampled else 0.0, seed=3, stop_strings=("e",))
    (full,) = generate(toy, tokenizer, [prompt], images=[pixels], config=config)
    assert "".join(stream(toy, tokenizer, prompt, images=pixels, config=config)) == full.text


# ---------------------------------------------------------------------------------------------- chat
def from_scratch(chat: ChatModel, session: ChatSession, config: GenerationConfig) -> list[int]:
    """What the session's last turn should produce: the whole conversation, no cache, via generate()."""
    conversation = session.conversation()
    messages = conversation.messages[:-1] if conversation.messages[-1].role == "assistant" else conversation.messages
    prompt = tokenize_prompt(Conversation(messages), chat.tokenizer, fmt=chat.model.prompt_format)
    pixels = torch.stack([chat.transform(image) for image in prompt.images]) if prompt.images else None
    (out,) = generate(chat.model, chat.tokenizer, [prompt.input_ids], images=[pixels], config=config)
    return out.token_ids


def last_prompt(chat: ChatModel, session: ChatSession) -> list[int]:
    return tokenize_prompt(
        Conversation(session.conversation().messages[:-1]), chat.tokenizer, fmt=chat.model.prompt_format
    ).input_ids


# Turns: (text, new images). Images arrive in turns 1, 3 and 4 (two at once), text only in between.
SCRIPT = [("describe the image", 1), ("what color is the circle?", 0), ("and this one?", 1), ("compare", 2)]


def test_multi_turn_chat_equals_from_scratch_and_reuses_the_cache(chat):
    session = ChatSession(chat)
    seed, cached, images_before, previous_prompt_tokens = 0, [], 0, 0
    for turn, (text, n_images) in enumerate(SCRIPT):
        images = [picture(seed := seed + 1) for _ in range(n_images)]
        answer = "".join(session.send(text, images=images, config=GREEDY))
        expected = from_scratch(chat, session, GREEDY)
        assert answer == chat.tokenizer.decode(expected, skip_special_tokens=True)
        assert session.last.text == answer.strip()
        reply, ids = session.last, last_prompt(chat, session)
        assert reply.prompt_tokens == len(ids) and reply.reused_tokens + reply.computed_tokens == len(ids)
        if turn == 0:
            assert reply.reused_tokens == 0
        else:
            # Everything the cache holds that the new prompt starts with is reused: the whole previous prompt and
            # the answer as generated, up to where the re-tokenised history first differs - before any new image.
            assert reply.reused_tokens == min(common_prefix(cached, ids), len(ids) - 1)
            assert reply.reused_tokens >= previous_prompt_tokens
            assert reply.computed_tokens <= len(ids) - previous_prompt_tokens
        if n_images:
            first_new_image = [i for i, t in enumerate(ids) if t == IMAGE_POSITION][images_before * PER_IMAGE]
            assert reply.reused_tokens <= first_new_image
        # The cache now holds the prompt and each generated token the decoding loop ran (not the last one).
        stepped = expected if reply.finish_reason == "stop" else expected[:-1]
        cached, previous_prompt_tokens, images_before = ids + stepped, len(ids), images_before + n_images
    assert images_before == 4 and session.last.reused_tokens > 0


def test_undo_then_a_different_image_is_not_served_from_the_cache(chat):
    session = ChatSession(chat)
    session.ask("describe", images=[picture(1)], config=GREEDY)
    session.ask("and now?", images=[picture(2)], config=GREEDY)
    stale = session.last.text
    session.undo()
    answer = session.ask("and now?", images=[picture(5)], config=GREEDY).text
    expected = chat.tokenizer.decode(from_scratch(chat, session, GREEDY), skip_special_tokens=True).strip()
    assert answer == expected != stale  # a stale cache would have answered as for picture 2
    ids = last_prompt(chat, session)
    replaced = [i for i, t in enumerate(ids) if t == IMAGE_POSITION][PER_IMAGE]
    assert 0 < session.last.reused_tokens <= replaced


# ---------------------------------------------------------------------------------------------- training
def lora_count(model: ToyPrefixModel, r: int) -> int:
    """LoRA parameters on q, k, v, o of every layer: r * (in + out) each."""
    config = model.language_model.config
    d, kv = config.hidden_size, config.num_key_value_heads * config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * r * ((d + d) + (d + kv) + (d + kv) + (d + d))


def test_one_lora_training_step_through_the_trainer_and_the_adapter_round_trip(tokenizer, tmp_path):
    model = make_toy(tokenizer)
    cfg = load_train_config(
        {
            "model": "toy (built by the test)",
            "data": str(write_data(tmp_path / "data")),
            "run_dir": str(tmp_path / "run"),
            "max_steps": 1,
            "optimizer": {"lr": 1e-2, "warmup_steps": 0},
            "logging": {"progress": False},
        }
    )
    assert cfg.trainable == "lora" and cfg.lora == LoraConfig()  # cross-attention switched on: absent, ignored
    trainer = Trainer(cfg, model, tokenizer)
    adapted = sorted(name for name, m in model.named_modules() if m in set(lora_layers(model)))
    assert adapted == [
        f"language_model.model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in ("k", "o", "q", "v")
    ]
    count = lora_count(model, cfg.lora.r)
    zero = dict.fromkeys((VISION, CONNECTOR, EMBEDDINGS), 0)
    assert trainer.trainable == {**zero, SELF_ATTENTION: count, LM_MLP: 0, LM_OTHER: 0, "total": count}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    result = trainer.fit(progress_stream=io.StringIO())
    assert result.steps == 1 and math.isfinite(result.metrics["loss"]) and result.metrics["loss"] > 0
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    lora_b = {name for name in before if ".lora_B." in name}
    # Only LoRA trained; B starts at zero, so A's gradient is zero in this first step and B alone moves.
    assert changed == lora_b

    prompt, pixels = prompt_of(model, tokenizer, "describe", [picture(1)])
    model.eval()
    with torch.no_grad():
        tuned = model(torch.tensor([prompt]), images=pixels[None]).logits
        base = make_toy(tokenizer)(torch.tensor([prompt]), images=pixels[None]).logits
        reloaded = load_adapter(make_toy(tokenizer), result.output)  # the Trainer's adapter, peft format
        assert torch.equal(reloaded(torch.tensor([prompt]), images=pixels[None]).logits, tuned)
        named = load_named_adapter(make_toy(tokenizer), save_adapter(model, tmp_path / "again"), "tuned")
        assert torch.equal(named(torch.tensor([prompt]), images=pixels[None]).logits, base)  # still the base
        select_adapter(named, "tuned")
        assert torch.equal(named(torch.tensor([prompt]), images=pixels[None]).logits, tuned)
    assert not torch.allclose(tuned, base)


def test_lora_with_a_connector_trained_besides_resumes_bitwise_equal(tokenizer, tmp_path):
    """MiniGPT-4 / mPLUG-Owl train their connector (resampler) next to LoRA: it is checkpointed and resumed too."""
    data = write_data(tmp_path / "data")

    def run(name: str, *, resume: bool = False) -> ToyPrefixModel:
        model = make_toy(tokenizer)
        config = {
            "model": "toy (built by the test)",
            "data": str(data),
            "run_dir": str(tmp_path / name),
            "max_steps": 2,
            "train_groups": [CONNECTOR],
            "optimizer": {"lr": 1e-2, "warmup_steps": 0},
            "checkpoint": {"every": 1, "keep_last": 2},
            "logging": {"progress": False},
        }
        trainer = Trainer(load_train_config(config), model, tokenizer)
        assert trainer.trainable[CONNECTOR] == sum(p.numel() for p in model.projection.parameters())
        if resume:
            assert trainer.resume() == 1
        trainer.fit(progress_stream=io.StringIO())
        return model

    full = run("full")
    step_1 = tmp_path / "full" / "checkpoints" / "step-00000001"
    assert {p.name for p in step_1.iterdir()} == {"adapter", "trainer_state.pt"}
    assert (step_1 / "adapter" / "trained_parts.safetensors").is_file()  # the connector, beside the adapters
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(step_1, tmp_path / "resumed" / "checkpoints" / step_1.name)
    resumed = run("resumed", resume=True)
    assert not torch.equal(full.projection.weight, make_toy(tokenizer).projection.weight)  # it trained
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    # The run's adapter carries the connector: loading it gives the trained model, and it cannot be served as a
    # named adapter over a shared base (whose connector it would change for every session).
    loaded = load_adapter(make_toy(tokenizer), tmp_path / "full" / "adapter")
    assert torch.equal(loaded.projection.weight, full.projection.weight)
    with pytest.raises(ValueError, match="serve it as its own model"):
        load_named_adapter(make_toy(tokenizer), tmp_path / "full" / "adapter", "tuned")


# ---------------------------------------------------------------------------------------------- the API
def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}}


def toy_with_adapters(tokenizer, folder: Path, names: tuple[str, ...]) -> ToyPrefixModel:
    """A toy with one random LoRA adapter per name (default LoraConfig: self-attention here) loaded by name."""
    model = make_toy(tokenizer)
    for seed, name in enumerate(names, start=1):
        tuned = apply_lora(make_toy(tokenizer))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in lora_parameters(tuned):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        load_named_adapter(model, save_adapter(tuned, folder / name), name)
    return model


def test_the_api_answers_as_the_chat_session_for_the_base_and_each_adapter(tokenizer, tmp_path):
    from fastapi.testclient import TestClient

    limits = ServeLimits(max_image_pixels=128 * 128, max_images=2, max_active=1, max_waiting=1)
    model = toy_with_adapters(tokenizer, tmp_path, ("one", "two"))
    chat = ChatModel.wrap(model, tokenizer, name="toy", max_image_pixels=limits.max_image_pixels)
    assert chat.adapters == ["one", "two"]

    def local(text, images=(), adapter=None) -> str:
        session = ChatSession(chat, adapter=adapter, drop_oldest=False)
        pil = [Image.open(io.BytesIO(data)) for data in images]
        return session.ask(text, images=pil, config=GenerationConfig(max_new_tokens=8)).text

    with TestClient(build_app(chat, ServeConfig(web_path=None, limits=limits))) as client:

        def ask(model_name, content) -> str:
            body = {"model": model_name, "messages": [{"role": "user", "content": content}], "temperature": 0}
            response = client.post("/v1/chat/completions", json={**body, "max_tokens": 8})
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["message"]["content"]

        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["toy", "one", "two"]
        assert ask("toy", "describe the image") == local("describe the image")
        answers = {}
        for name in ("toy", "one", "two"):
            answers[name] = ask(name, [{"type": "text", "text": "what is it"}, image_part(png(3))])
            assert answers[name] == local("what is it", [png(3)], adapter=None if name == "toy" else name)
        assert len(set(answers.values())) == 3  # each adapter really answers as itself
        body = {"model": "one", "messages": [{"role": "user", "content": [image_part(png(4))]}], "stream": True}
        response = client.post("/v1/chat/completions", json={**body, "temperature": 0, "max_tokens": 8})
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        deltas = [json.loads(event)["choices"][0]["delta"].get("content", "") for event in events[:-1]]
        assert "".join(deltas).strip() == local("", [png(4)], adapter="one")


# ---------------------------------------------------------------------------------------------- no Flamingo
def test_generate_chat_train_and_serve_never_import_flamingo():
    """In a fresh interpreter: the layers above model/ plus this test's toy - built, chatted with, trained -
    never import the Flamingo implementation (nor the builder or loader that know every kind)."""
    script = """
import sys
import torch
import mmgpt.chat, mmgpt.generate, mmgpt.model.lora, mmgpt.serve.app, mmgpt.train.trainer
from tests.toy_prefix import make_tokenizer, make_toy, picture
from mmgpt.chat import ChatModel, ChatSession
from mmgpt.config import LoraConfig
from mmgpt.generate import GenerationConfig
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.train.optimizer import make_trainable

tokenizer = make_tokenizer()
chat = ChatModel.wrap(make_toy(tokenizer), tokenizer)
ChatSession(chat).ask("describe", images=[picture(1)], config=GenerationConfig(max_new_tokens=2))
build_app(chat, ServeConfig(web_path=None))
make_trainable(make_toy(tokenizer), "lora", LoraConfig())
print(" ".join(sorted(m for m in ("mmgpt.model.flamingo", "mmgpt.model.build", "mmgpt.load") if m in sys.modules)))
"""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == ""
