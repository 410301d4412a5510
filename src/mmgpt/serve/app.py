"""One FastAPI app with both faces: the OpenAI-compatible API under /v1 and the browser demo at ``web_path``.

While the app runs, each served model batches every generation for it - the API's and the demo's - in one
scheduler (``mmgpt.chat.start_batching`` with the limits' ``batch_limits``), unless ``ServeLimits.batching`` is off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import Response

from mmgpt.chat import ChatModel, start_batching, stop_batching
from mmgpt.serve.api import add_api
from mmgpt.serve.conversations import IdleConversations
from mmgpt.serve.errors import require_key
from mmgpt.serve.limits import Admission, ServeLimits
from mmgpt.serve.metrics import CONTENT_TYPE, ServerMetrics
from mmgpt.serve.models import ServedModels


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback only unless asked: the API has no key by default
    port: int = 8000
    api_key: str | None = None
    web_path: str | None = "/"  # None: no browser demo
    limits: ServeLimits = field(default_factory=ServeLimits)


def build_app(models: ServedModels | ChatModel | Sequence[ChatModel], config: ServeConfig) -> FastAPI:
    """The app serving ``models`` (one model, or several: requests and the demo pick by name)."""
    models = ServedModels.of(models)
    on_shutdown: list[Callable[[], object]] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        limits = config.limits
        # A model already batching (another app over the same model) keeps its scheduler; the one who started it
        # stops it.
        owned = [m for m in models.chat_models if limits.batching and m.scheduler is None]
        for chat_model in owned:
            start_batching(chat_model, **limits.batch_limits)
        app.state.scheduler = models.chat_models[0].scheduler
        try:
            yield
        finally:
            for chat_model in owned:
                stop_batching(chat_model)
            # uvicorn re-raises SIGTERM/SIGINT after its shutdown, so atexit handlers never run: clean up here.
            for cleanup in on_shutdown:
                cleanup()

    app = FastAPI(title="mmgpt", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.scheduler = None
    app.state.admission = admission = Admission(config.limits)  # the API's slots and queue
    # API conversations and browser tabs keep their caches between turns under one bound.
    app.state.conversations = conversations = IdleConversations(config.limits.idle_cache_bytes)
    app.state.metrics = metrics = ServerMetrics(models, admission, conversations)
    add_api(
        app,
        models,
        config.limits,
        admission=admission,
        conversations=conversations,
        metrics=metrics,
        api_key=config.api_key,
    )

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": models.chat_models[0].name, "models": models.names}

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        require_key(request, config.api_key)  # load and traffic are the operator's business
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    if config.web_path is not None:
        import gradio as gr

        from mmgpt.serve.web import build_demo

        # Its sessions generate concurrently (gradio's default runs one at a time): they batch like the API's.
        demo = build_demo(
            models, concurrency_limit=config.limits.max_active, conversations=conversations, metrics=metrics
        )
        on_shutdown.append(demo.cleanup)  # its example pictures' temporary folder
        # Mounted last, so /v1 and /health match first even when the demo sits at "/".
        gr.mount_gradio_app(
            app,
            demo,
            path=config.web_path,
            max_file_size=config.limits.max_image_bytes,
            footer_links=[],
            run_history=False,
            ssr_mode=False,
        )
    return app


def serve(models: ServedModels | ChatModel | Sequence[ChatModel], config: ServeConfig) -> None:
    import uvicorn

    uvicorn.run(build_app(models, config), host=config.host, port=config.port, log_level="info")
