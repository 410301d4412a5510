"""serve a model: an OpenAI-compatible HTTP API and a browser demo in one process

The API is at /v1 (chat/completions, models), the demo at / (or --web-path). It binds 127.0.0.1 unless told
otherwise; set --api-key (or the MMGPT_API_KEY environment variable) before exposing it to others.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="model directory (save_pretrained), tiny-world (the shipped pretrained tiny model) or tiny-random",
    )
    parser.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=PATH", help="a LoRA adapter (peft folder); repeat"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set MMGPT_API_KEY)")
    parser.add_argument("--web-path", default="/", help="where the browser demo lives (default /)")
    parser.add_argument("--no-web", action="store_true", help="serve the API only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's)")
    parser.add_argument("--allow-image-urls", action="store_true", help="fetch http(s) image URLs (off: data: only)")
    parser.add_argument("--max-images", type=int, default=8, help="images per request")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="decoded pixels per image")
    parser.add_argument("--max-request-mb", type=float, default=20.0, help="request body size")
    parser.add_argument("--max-active", type=int, default=4, help="generations running at once")
    parser.add_argument("--max-waiting", type=int, default=16, help="requests queued behind them (then 429)")


def run(args: argparse.Namespace) -> int:
    from mmgpt.serve.app import ServeConfig, serve
    from mmgpt.serve.limits import ServeLimits
    from mmgpt.serve.loading import load_chat_model, parse_adapters

    try:
        limits = ServeLimits(
            max_request_bytes=int(args.max_request_mb * 2**20),
            max_image_pixels=args.max_image_pixels,
            max_images=args.max_images,
            allow_image_urls=args.allow_image_urls,
            max_active=args.max_active,
            max_waiting=args.max_waiting,
        )
        chat_model = load_chat_model(
            args.model,
            adapters=parse_adapters(args.adapter),
            device=args.device,
            dtype=args.dtype,
            max_image_pixels=limits.max_image_pixels,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}")
        return 2
    config = ServeConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("MMGPT_API_KEY") or None,
        web_path=None if args.no_web else args.web_path,
        limits=limits,
    )
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        print(f"warning: serving on {config.host} without an API key; anyone who can reach it can use it")
    print(banner(config, [chat_model.name, *chat_model.adapters]), flush=True)
    serve(chat_model, config)
    return 0


def banner(config, models: list[str]) -> str:
    """The one line that says where everything is: ``mmgpt serve: API http://127.0.0.1:8000/v1 | web demo
    http://127.0.0.1:8000/ | models: base, adapter...`` (the first model is the base, the rest its adapters)."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    root = f"http://{host}:{config.port}"
    web = f"web demo {root}{config.web_path}" if config.web_path is not None else "no web demo"
    base, *adapters = models
    names = base + (f" + adapters {', '.join(adapters)}" if adapters else "")
    return f"mmgpt serve: API {root}/v1 | {web} | models: {names}"
