"""One FastAPI app with both faces: the OpenAI-compatible API under /v1 and the browser demo at ``web_path``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from mmgpt.chat import ChatModel
from mmgpt.serve.api import add_api
from mmgpt.serve.limits import ServeLimits


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback only unless asked: the API has no key by default
    port: int = 8000
    api_key: str | None = None
    web_path: str | None = "/"  # None: no browser demo
    limits: ServeLimits = field(default_factory=ServeLimits)


def build_app(chat_model: ChatModel, config: ServeConfig) -> FastAPI:
    on_shutdown: list[Callable[[], object]] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn re-raises SIGTERM/SIGINT after its shutdown, so atexit handlers never run: clean up here.
        for cleanup in on_shutdown:
            cleanup()

    app = FastAPI(title="mmgpt", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    add_api(app, chat_model, config.limits, api_key=config.api_key)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": chat_model.name}

    if config.web_path is not None:
        import gradio as gr

        from mmgpt.serve.web import build_demo

        demo = build_demo(chat_model)
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


def serve(chat_model: ChatModel, config: ServeConfig) -> None:
    import uvicorn

    uvicorn.run(build_app(chat_model, config), host=config.host, port=config.port, log_level="info")
