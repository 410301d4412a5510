"""A live server on loopback over a tiny model with two LoRA adapters (the same model the tests compare with)."""

from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from mmgpt.chat import ChatModel
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.serve.limits import ServeLimits
from tests.test_chat import model_with_adapters

ADAPTERS = ("one", "two")
LIMITS = ServeLimits(max_image_pixels=128 * 128, max_images=3, max_active=1, max_waiting=1, queue_timeout_s=30)


def png(seed: int, size: int = 48) -> bytes:
    pixels = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), pixels.numpy().tobytes()).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_chat_model(tmp_path_factory) -> ChatModel:
    model, tokenizer = model_with_adapters(tmp_path_factory.mktemp("adapters"), ADAPTERS)
    return ChatModel.wrap(model, tokenizer, name="tiny", max_image_pixels=LIMITS.max_image_pixels)


class EndlessChatModel(ChatModel):
    """The same model, slowed down and never emitting EOS: a generation that runs until the client leaves (alone,
    or as a row of a batch)."""

    def forward(self, adapter, input_ids, **kwargs):
        time.sleep(0.01)
        out = super().forward(adapter, input_ids, **kwargs)
        out.logits[..., self.tokenizer.eos_token_id] = float("-inf")
        return out

    def forward_rows(self, adapters, input_ids, cache=None, **kwargs):
        time.sleep(0.01)
        out = super().forward_rows(adapters, input_ids, cache, **kwargs)
        out.logits[..., self.tokenizer.eos_token_id] = float("-inf")
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="package")
def chat_model(tmp_path_factory) -> ChatModel:
    return tiny_chat_model(tmp_path_factory)


@pytest.fixture(scope="package")
def server(chat_model):
    """(base URL, app): API and browser demo in one process, as `mmgpt serve` runs them."""
    app = build_app(chat_model, ServeConfig(limits=LIMITS))
    with live_server(app, free_port()) as url:
        yield url, app
