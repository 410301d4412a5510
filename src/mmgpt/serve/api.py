"""The OpenAI-compatible HTTP API: ``POST /v1/chat/completions`` (plain and server-sent events), ``GET /v1/models``.

Each request becomes a :class:`~mmgpt.chat.ChatSession` over the shared model (``drop_oldest=False``: a prompt
over the context is an error, as with OpenAI, never silently shortened). The model work runs in worker threads
and takes the model lock one step at a time, so requests for different adapters interleave without mixing; the
:class:`~mmgpt.serve.limits.Admission` gate bounds how many run and wait. A streaming client that disconnects
stops its generation at the next token and frees its slot.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmgpt.chat import ChatModel, ChatSession, ContextOverflowError, Reply
from mmgpt.data.images import ImageError, ImageTooLargeError
from mmgpt.serve.chat_request import ChatRequest, parse_chat_request
from mmgpt.serve.errors import APIError, api_error_handler, bad_request
from mmgpt.serve.limits import Admission, ServeLimits


def add_api(app: FastAPI, chat_model: ChatModel, limits: ServeLimits, *, api_key: str | None = None) -> None:
    """Install the /v1 routes and OpenAI-shaped error handlers on ``app``."""
    admission = Admission(limits)
    app.state.admission = admission
    app.add_exception_handler(APIError, api_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        names = [chat_model.name, *chat_model.adapters]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "mmgpt"} for n in names]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await _read_json(request, limits.max_request_bytes)
        parsed = parse_chat_request(body, limits)
        adapter = _adapter(chat_model, parsed.model)
        await admission.acquire()
        try:
            session, stream = await anyio.to_thread.run_sync(_start, chat_model, parsed, adapter, limits)
        except BaseException:
            admission.release()
            raise
        if not parsed.stream:
            try:
                await anyio.to_thread.run_sync(_drain, stream)
            finally:
                stream.close()
                admission.release()
            return JSONResponse(_completion(parsed.model, session.last))
        return StreamingResponse(
            _events(request, parsed, session, stream, admission),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown(rest: str) -> JSONResponse:
        # Without this, a demo mounted at "/" would answer unknown /v1 paths with its own 404 shape.
        raise APIError(404, f"no such endpoint /v1/{rest}; this server has /v1/chat/completions and /v1/models")


def _adapter(chat_model: ChatModel, model: str) -> str | None:
    if model == chat_model.name:
        return None
    if model in chat_model.adapters:
        return model
    known = [chat_model.name, *chat_model.adapters]
    raise APIError(
        404, f"model {model!r} does not exist; this server has {known}", param="model", code="model_not_found"
    )


async def _read_json(request: Request, limit: int) -> object:
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
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise bad_request(f"the request body is not valid JSON ({error})", code="invalid_json") from None


async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    return APIError(error.status_code, str(error.detail), code=None).response()


# ---------------------------------------------------------------------------------------------- worker side
def _fetch(url: str, limits: ServeLimits) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=limits.image_url_timeout_s, follow_redirects=False) as response:
            response.raise_for_status()
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > limits.max_image_bytes:
                    raise APIError(413, f"{url}: the image is over {limits.max_image_bytes:,} bytes")
            return bytes(data)
    except httpx.HTTPError as error:
        raise bad_request(f"could not fetch the image {url}: {error}", param="messages") from None


def _start(
    chat_model: ChatModel, parsed: ChatRequest, adapter: str | None, limits: ServeLimits
) -> tuple[ChatSession, Iterator[str]]:
    """Decode and encode the images, render the conversation, check the context; return the answer's stream."""
    session = ChatSession(chat_model, adapter=adapter, drop_oldest=False)
    turns = []
    with tempfile.TemporaryDirectory(prefix="mmgpt-images-") as folder:
        count = 0
        for user in parsed.turns:
            paths = []
            for image in user.images:
                data = _fetch(image, limits) if isinstance(image, str) else image
                if len(data) > limits.max_image_bytes:
                    raise APIError(413, f"image {count + 1} is over {limits.max_image_bytes:,} bytes")
                count += 1
                # load_image (the one place that decodes images) reads files; the file lives for this call only.
                path = Path(folder) / f"image-{count}"
                path.write_bytes(data)
                paths.append(path)
            try:
                turn = session.make_turn(user.text, paths)
            except ImageTooLargeError as error:
                raise APIError(413, f"image {count}: {error}", param="messages", code="image_too_large") from None
            except ImageError as error:
                raise bad_request(f"image {count}: {error}", param="messages", code="invalid_image") from None
            turn.answer = user.answer
            turns.append(turn)
    session.load_turns(turns)
    prompt = session.prompt_length()
    room = session.context_budget - prompt
    max_new = parsed.max_tokens or min(limits.default_max_tokens, room)
    try:
        if max_new < 1:
            raise ContextOverflowError(
                f"the prompt has {prompt} tokens, which leaves no room to answer in the context of "
                f"{session.context_budget}; shorten the conversation"
            )
        stream = session.respond(dataclasses.replace(parsed.config, max_new_tokens=max_new))
    except ContextOverflowError as error:
        raise bad_request(str(error), param="messages", code="context_length_exceeded") from None
    return session, stream


def _drain(stream: Iterator[str]) -> None:
    for _ in stream:
        pass


# ---------------------------------------------------------------------------------------------- responses
def _usage(reply: Reply) -> dict:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _completion(model: str, reply: Reply) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": reply.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(reply),
    }


async def _events(
    request: Request, parsed: ChatRequest, session: ChatSession, stream: Iterator[str], admission: Admission
) -> AsyncIterator[str]:
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = parsed.model

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps({**base, 'choices': [choice], **extra})}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            # One token's work per call; a cancelled request waits for it, then stops here.
            delta = await anyio.to_thread.run_sync(next, stream, None)
            if delta is None:
                break
            if await request.is_disconnected():
                return
            yield chunk({"content": delta})
        reply = session.last
        yield chunk({}, reply.finish_reason)
        if parsed.include_usage:
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(reply)})}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as error:  # headers are sent: report in the stream, in OpenAI's shape
        yield f"data: {json.dumps(APIError(500, f'generation failed: {error}', type='server_error').body())}\n\n"
    finally:
        stream.close()
        admission.release()
