"""The OpenAI-compatible HTTP API: ``POST /v1/chat/completions`` (plain and server-sent events), ``GET /v1/models``.

Each request becomes a :class:`~mmgpt.chat.ChatSession` over the served model it names (``drop_oldest=False``: a
prompt over the context is an error, as with OpenAI, never silently shortened). Its images are decoded and encoded in a
worker thread; its generation is one row of the model's batch (continuous batching: every admitted request decodes
in the same forward, each with its own adapter - ``mmgpt.chat.scheduler``), or, with batching off, takes the model
lock one step at a time. The :class:`~mmgpt.serve.limits.Admission` gate bounds how many run and wait. A streaming
client that disconnects stops its generation at the next token and frees its row and its slot.

Time to first token (from the request's arrival to its first piece of answer: queueing, images, prefill) is sent
in the ``X-Time-To-First-Token`` header (seconds) and logged with each finished request (logger ``mmgpt.serve``).

Bad input never reaches a 5xx: every refusal is a 4xx in OpenAI's shape naming the bad value (an unreadable image
by its place in the request, never by a server path), the first token is computed before the response starts (a
failure then is still a proper status, not an error event after a 200), and anything unexpected is a JSON 500
with a request id (``errors.CatchAll``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmgpt.chat import ChatSession, ContextOverflowError, InvalidMessageError, Reply
from mmgpt.data.images import ImageError, ImageTooLargeError, probe_image
from mmgpt.serve.chat_request import ChatRequest, parse_chat_request, read_json, show
from mmgpt.serve.conversations import IdleConversations, conversation_key, image_digest
from mmgpt.serve.errors import (
    APIError,
    CatchAll,
    api_error_handler,
    bad_request,
    internal_error,
    log,
    new_request_id,
    require_key,
)
from mmgpt.serve.limits import Admission, ServeLimits
from mmgpt.serve.metrics import ServerMetrics
from mmgpt.serve.models import Served, ServedModels


def add_api(
    app: FastAPI,
    models: ServedModels,
    limits: ServeLimits,
    *,
    admission: Admission,
    conversations: IdleConversations,
    metrics: ServerMetrics,
    api_key: str | None = None,
) -> None:
    """Install the /v1 routes and OpenAI-shaped error handlers on ``app``: requests name one of ``models`` and wait
    for a slot in ``admission``; a finished answer's session waits in ``conversations`` for the request that
    continues it; each answer is counted in ``metrics``."""
    app.add_exception_handler(APIError, api_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(CatchAll, prefix="/v1")

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        require_key(request, api_key)
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "mmgpt"} for n in models.names]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        received = time.perf_counter()
        require_key(request, api_key)
        body = await read_json(request, limits.max_request_bytes)
        parsed = parse_chat_request(body, limits)
        served = _served(models, parsed.model)
        await admission.acquire()
        try:
            session, stream, first, history = await anyio.to_thread.run_sync(
                _start, served, parsed, limits, conversations
            )
        except BaseException:
            admission.release()
            raise
        timing = _Timing(received, time.perf_counter())
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        headers = {"X-Time-To-First-Token": f"{timing.first_token_s:.4f}"}
        done = functools.partial(_finished, timing, completion_id, parsed, session, history, conversations, metrics)
        if not parsed.stream:
            failed = False
            try:
                await anyio.to_thread.run_sync(_drain, stream)
            except Exception:
                failed = True
                raise
            finally:
                stream.close()
                admission.release()
                reply = done(failed=failed)
            return JSONResponse(_completion(completion_id, parsed.model, reply), headers=headers)
        return StreamingResponse(
            _events(request, parsed, session, stream, first, admission, completion_id, done),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        )

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown(rest: str) -> JSONResponse:
        # Without this, a demo mounted at "/" would answer unknown /v1 paths with its own 404 shape.
        raise APIError(404, f"no such endpoint /v1/{rest}; this server has /v1/chat/completions and /v1/models")


def _served(models: ServedModels, name: str) -> Served:
    served = models.get(name)
    if served is None:
        raise APIError(
            404,
            f"model {show(name)} does not exist; this server has {models.names}",
            param="model",
            code="model_not_found",
        )
    return served


async def _http_error(_request: Request, error: StarletteHTTPException) -> Response:
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


def _image_error(error: ImageError, number: int, where: str, limits: ServeLimits) -> APIError:
    """The client's view of an unreadable image: its place in the request and the problem, never the server's
    temporary path, and a fix the client can act on."""
    if isinstance(error, ImageTooLargeError):
        message = (
            f"image {number} ({where}): {error.problem}; this server takes at most {limits.max_image_pixels:,} "
            "pixels per image: send a smaller image"
        )
        return APIError(413, message, param="messages", code="image_too_large")
    message = f"image {number} ({where}): {error.problem}; send a complete PNG, JPEG, GIF or WebP file"
    return bad_request(message, param="messages", code="invalid_image")


def _start(
    served: Served, parsed: ChatRequest, limits: ServeLimits, conversations: IdleConversations
) -> tuple[ChatSession, Iterator[str], str | None, list[tuple[str, list[bytes], str | None]]]:
    """Decode and encode the images, render the conversation, check the context and compute the first piece of
    the answer (None: it is empty); return the session (the conversation's parked one when this request continues
    it), the answer's stream, that first piece, and the conversation's content (what it is parked under)."""
    with tempfile.TemporaryDirectory(prefix="mmgpt-images-") as folder:
        files, history, places = _image_files(parsed, limits, Path(folder))
        key = conversation_key(parsed.model, history[:-1])
        parked = conversations.take(key)
        try:
            session = parked or ChatSession(served.chat_model, adapter=served.adapter, drop_oldest=False)
            turns = []
            for user, paths in zip(parsed.turns, files, strict=True):
                turn = session.make_turn(user.text, paths)  # a parked session knows its images: not encoded again
                turn.answer = user.answer
                turns.append(turn)
            session.load_turns(turns)
            stream = _respond(session, parsed, limits)
            try:
                first = next(stream, None)  # errors of the first step still get a status of their own
            except BaseException:
                stream.close()
                raise
        except BaseException as error:
            if parked is not None:
                conversations.park(key, parked)  # still the conversation's: a corrected retry continues it
            if isinstance(error, ImageError):
                raise _image_error(error, *places.get(error.path, (0, "messages")), limits) from None
            raise
    return session, stream, first, history


def _image_files(
    parsed: ChatRequest,
    limits: ServeLimits,
    folder: Path,
) -> tuple[list[list[Path]], list[tuple[str, list[bytes], str | None]], dict[str, tuple[int, str]]]:
    """Each turn's images checked and written to ``folder`` (load_image, the one place that decodes images, reads
    files): the files per turn, the conversation's content (text, image digests, answer per turn) and where each file
    came from (file -> image number, place in the request)."""
    files: list[list[Path]] = []
    history: list[tuple[str, list[bytes], str | None]] = []
    places: dict[str, tuple[int, str]] = {}
    try:
        for user in parsed.turns:
            paths, digests = [], []
            for image, where in zip(user.images, user.image_params, strict=True):
                data = _fetch(image, limits) if isinstance(image, str) else image
                number = len(places) + 1
                path = folder / f"image-{number}"
                places[str(path)] = (number, where)
                if len(data) > limits.max_image_bytes:
                    raise APIError(413, f"image {number} ({where}) is over {limits.max_image_bytes:,} bytes")
                path.write_bytes(data)
                probe_image(path, max_pixels=limits.max_image_pixels)  # the server's budget, whatever the model's
                paths.append(path)
                digests.append(image_digest(data))
            files.append(paths)
            history.append((user.text, digests, user.answer))
    except ImageError as error:
        raise _image_error(error, *places.get(error.path, (0, "messages")), limits) from None
    return files, history, places


def _respond(session: ChatSession, parsed: ChatRequest, limits: ServeLimits) -> Iterator[str]:
    """The answer's stream, its budget checked against the context (errors as 400s)."""
    try:
        prompt = session.prompt_length()
        room = session.context_budget - prompt
        max_new = parsed.max_tokens or min(limits.default_max_tokens, room)
        if max_new < 1:
            raise ContextOverflowError(
                f"the prompt has {prompt} tokens, which leaves no room to answer in the context of "
                f"{session.context_budget}; shorten the conversation"
            )
        return session.respond(dataclasses.replace(parsed.config, max_new_tokens=max_new))
    except ContextOverflowError as error:
        raise bad_request(str(error), param="messages", code="context_length_exceeded") from None
    except InvalidMessageError as error:
        raise bad_request(str(error), param="messages", code="invalid_content") from None


def _finished(
    timing: _Timing,
    completion_id: str,
    parsed: ChatRequest,
    session: ChatSession,
    history: list[tuple[str, list[bytes], str | None]],
    conversations: IdleConversations,
    metrics: ServerMetrics,
    *,
    failed: bool = False,
) -> Reply | None:
    """A request's answer ended (``failed``: the model raised): log it, count it, and keep a finished answer's
    session for the request that continues its conversation. Returns the reply (read before the session can be
    taken by that request)."""
    reply = session.last
    timing.log(completion_id, parsed, reply)
    if reply is None:
        return None
    end = time.perf_counter() - timing.received
    metrics.answered(parsed.model, "api", reply, timing.first_token_s, end, failed=failed)
    if reply.finish_reason in ("stop", "length") and not failed:
        text, digests, _ = history[-1]
        conversations.park(conversation_key(parsed.model, [*history[:-1], (text, digests, reply.text)]), session)
    return reply


def _drain(stream: Iterator[str]) -> None:
    for _ in stream:
        pass


# ---------------------------------------------------------------------------------------------- responses
def _usage(reply: Reply) -> dict:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.reused_tokens},  # OpenAI's field: not computed again
    }


class _Timing:
    """When a request arrived and when its first piece of answer was ready (``perf_counter`` seconds)."""

    def __init__(self, received: float, first: float) -> None:
        self.received, self.first = received, first

    @property
    def first_token_s(self) -> float:
        return self.first - self.received

    def log(self, completion_id: str, parsed: ChatRequest, reply: Reply | None) -> None:
        total = time.perf_counter() - self.received
        if reply is None:
            log.info("%s %s: ended before answering, %.3f s", completion_id, parsed.model, total)
            return
        log.info(
            "%s %s: %d prompt tokens (%d from the cache), %d completion tokens, finish %s; first token %.3f s, "
            "total %.3f s%s",
            completion_id,
            parsed.model,
            reply.prompt_tokens,
            reply.reused_tokens,
            reply.completion_tokens,
            reply.finish_reason,
            self.first_token_s,
            total,
            ", streamed" if parsed.stream else "",
        )


def _completion(completion_id: str, model: str, reply: Reply) -> dict:
    return {
        "id": completion_id,
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
    request: Request,
    parsed: ChatRequest,
    session: ChatSession,
    stream: Iterator[str],
    first: str | None,
    admission: Admission,
    completion_id: str,
    done: Callable[..., Reply | None],
) -> AsyncIterator[str]:
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = parsed.model

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps({**base, 'choices': [choice], **extra})}\n\n"

    failed = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        if first is not None:
            yield chunk({"content": first})
        while first is not None:
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
    except Exception:  # headers are sent: report in the stream, in OpenAI's shape
        failed = True
        request_id = new_request_id()
        log.exception("request %s: the stream failed", request_id)
        yield f"data: {json.dumps(internal_error(request_id).body())}\n\n"
    finally:
        stream.close()
        admission.release()
        done(failed=failed)
