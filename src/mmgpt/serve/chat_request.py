"""An OpenAI chat-completions request body -> the turns, images and sampling settings of a chat (``read_json``
reads the body first: its size, its JSON, its nesting and its text checked).

Checked by hand rather than by a schema library so each refusal names the field, the bad value and the fix, in
OpenAI's error shape. Accepted: ``messages`` with string content or a list of ``text`` / ``image_url`` parts;
``temperature``, ``top_p``, ``max_tokens`` (or ``max_completion_tokens``), ``stop``, ``seed``, ``stream``,
``stream_options.include_usage``, ``n`` = 1. System messages are accepted and ignored: the model was trained
with one fixed header (reference.md section 5), which the template always writes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from mmgpt.generate import GenerationConfig
from mmgpt.serve.errors import APIError, bad_request
from mmgpt.serve.limits import ServeLimits

MAX_STOP_STRINGS = 4  # as OpenAI
MAX_JSON_DEPTH = 32  # a chat request nests 7 levels; a thousand-deep body is refused before anything recurses
_SURROGATE = re.compile("[\ud800-\udfff]")
SEED_RANGE = (-(2**63), 2**64)  # what torch's generator takes: int64 and uint64 seeds
_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlevel = 60, 60, 3


def show(value: Any) -> str:
    """``repr(value)`` cut short (a hostile body can hold megabytes of text or lists nested a thousand deep)."""
    return _SHOW.repr(value)


@dataclass
class UserTurn:
    text: str
    images: list[bytes | str] = field(default_factory=list)  # decoded bytes, or an http(s) URL to fetch
    answer: str | None = None
    image_params: list[str] = field(default_factory=list)  # where each image is in the request: messages[i].content[j]


@dataclass
class ChatRequest:
    model: str
    turns: list[UserTurn]
    max_tokens: int | None
    config: GenerationConfig  # max_new_tokens is set once the prompt length is known
    stream: bool = False
    include_usage: bool = False


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad_request(f"{name}={show(value)} must be a number in [{low}, {high}]", param=name)
    return float(value)


def _image(part: dict, where: str, limits: ServeLimits) -> bytes | str:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise bad_request(f"{where}: an image_url part needs image_url.url (a data: URL)", param="messages")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "data":
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            raise bad_request(f"{where}: data URLs must be base64 (data:image/png;base64,...)", param="messages")
        if len(payload) > limits.max_image_bytes * 4 // 3 + 4:
            raise APIError(413, f"{where}: the image is over {limits.max_image_bytes:,} bytes", param="messages")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"{where}: the data URL is not valid base64", param="messages") from None
    if scheme in ("http", "https"):
        if not limits.allow_image_urls:
            raise bad_request(
                f"{where}: http(s) image URLs are off on this server; send the image inline as a data: URL "
                "(or start the server with --allow-image-urls)",
                param="messages",
            )
        return url
    raise bad_request(f"{where}: image URL scheme {show(scheme)} is not accepted; use a data: URL", param="messages")


def _content(message: dict, i: int, limits: ServeLimits) -> tuple[str, list[bytes | str], list[str]]:
    content = message.get("content")
    if isinstance(content, str):
        return content, [], []
    if not isinstance(content, list):
        raise bad_request(f"messages[{i}].content must be a string or a list of parts", param="messages")
    texts, images, wheres = [], [], []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image(part, where, limits))
            wheres.append(where)
        else:
            raise bad_request(f"{where}: parts are {{'type': 'text', 'text': ...}} or 'image_url'", param="messages")
    return "\n".join(texts), images, wheres


def _turns(messages: Any, limits: ServeLimits) -> list[UserTurn]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", param="messages")
    turns: list[UserTurn] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            continue
        if role not in ("user", "assistant"):
            raise bad_request(f"messages[{i}].role={show(role)} must be user, assistant or system", param="messages")
        text, images, wheres = _content(message, i, limits)
        expected = "user" if not turns or turns[-1].answer is not None else "assistant"
        if role != expected:
            raise bad_request(
                f"messages[{i}] is from the {role}, expected the {expected}: after any system messages, turns "
                "alternate user/assistant, start with the user and end with the user",
                param="messages",
            )
        if role == "user":
            turns.append(UserTurn(text, images, image_params=wheres))
        elif images:
            raise bad_request(f"messages[{i}]: only user messages may carry images", param="messages")
        else:
            turns[-1].answer = text
    if not turns or turns[-1].answer is not None:
        raise bad_request("the last message must be from the user", param="messages")
    n_images = sum(len(t.images) for t in turns)
    if n_images > limits.max_images:
        raise bad_request(
            f"the request has {n_images} images; this server takes at most {limits.max_images} per request",
            param="messages",
            code="too_many_images",
        )
    return turns


def parse_chat_request(body: Any, limits: ServeLimits) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required (see GET /v1/models)", param="model")
    if body.get("n", 1) != 1:
        raise bad_request(f"n={show(body.get('n'))}: this server returns one choice; use n=1", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise bad_request(f"max_tokens={show(max_tokens)} must be a positive integer", param="max_tokens")
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) for s in stop):
        raise bad_request(f"stop={show(stop)} must be a string or a list of at most 4 strings", param="stop")
    seed = body.get("seed")
    low, high = SEED_RANGE
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed < high):
        raise bad_request(f"seed={show(seed)} must be an integer in [-2**63, 2**64)", param="seed")
    options = body.get("stream_options") or {}
    config = GenerationConfig(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
        stop_strings=tuple(stop),
        seed=seed,
    )
    return ChatRequest(
        model=model,
        turns=_turns(body.get("messages"), limits),
        max_tokens=max_tokens,
        config=config,
        stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
    )


async def read_json(request: Request, limit: int) -> object:
    """The request body as JSON: at most ``limit`` bytes, valid text, not nested too deep (each refusal a 4xx)."""
    too_large = APIError(413, f"the request body is over {limit:,} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise bad_request(f"the request body is not valid JSON ({error})", code="invalid_json") from None
    except RecursionError:
        raise bad_request(
            f"the request body nests too deep to read; a chat request needs at most {MAX_JSON_DEPTH} levels",
            code="invalid_json",
        ) from None
    _check_strings(body)
    return body


def _check_strings(body: object) -> None:
    """Refuse bodies nested deeper than MAX_JSON_DEPTH and text with lone UTF-16 surrogates ("\\ud800": JSON allows
    the escape, UTF-8 and the tokenizers do not). Iterative, so a hostile body cannot exhaust the stack."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise bad_request(
                f"the request body nests more than {MAX_JSON_DEPTH} levels deep; a chat request needs about 7",
                code="invalid_json",
            )
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and (found := _SURROGATE.search(value)):
            raise bad_request(
                f"the request body holds a lone UTF-16 surrogate ({found.group()!r} at character {found.start()} "
                f"of {show(value)}), which is not text; send valid Unicode (pair surrogates, or use UTF-8)",
                code="invalid_text",
            )
