"""serve models: an OpenAI-compatible HTTP API and a browser demo in one process

The API is at /v1 (chat/completions, models), the demo at / (or --web-path); --model again serves several models
(the request's "model", or the demo's menu, picks one). It binds 127.0.0.1 unless told
otherwise; set --api-key (or the MMGPT_API_KEY environment variable) before exposing it to others. Concurrent
generations (API and demo) decode together in one batch (--max-rows, --max-batch-tokens, --prefill-chunk);
--no-batching makes them take turns on the model instead.
"""

from __future__ import annotations

import argparse
import logging
import os

from mmgpt.commands._options import add_quantize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        metavar="[NAME=]MODEL",
        help="model directory (save_pretrained), tiny-world (the shipped pretrained tiny model) or tiny-random; "
        "repeat to serve several (the API and the demo pick by name: the directory's, or NAME)",
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a LoRA adapter (peft folder) of the first --model; repeat",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set MMGPT_API_KEY)")
    parser.add_argument("--web-path", default="/", help="where the browser demo lives (default /)")
    parser.add_argument("--no-web", action="store_true", help="serve the API only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's)")
    add_quantize(parser)
    parser.add_argument("--allow-image-urls", action="store_true", help="fetch http(s) image URLs (off: data: only)")
    parser.add_argument("--max-images", type=int, default=8, help="images per request")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="decoded pixels per image")
    parser.add_argument("--max-request-mb", type=float, default=20.0, help="request body size")
    parser.add_argument(
        "--max-active", type=int, default=None, help="requests generating at once (default: --max-rows; 4 unbatched)"
    )
    parser.add_argument(
        "--max-waiting", type=int, default=None, help="requests queued behind them, then 429 (default: 2 x active)"
    )
    parser.add_argument("--max-rows", type=int, default=8, help="generations decoded together in one batch")
    parser.add_argument(
        "--max-batch-tokens", type=int, default=32_768, help="cached tokens of the batch (rows x positions); more wait"
    )
    parser.add_argument(
        "--prefill-chunk", type=int, default=256, help="prompt tokens prefilled between two decode steps"
    )
    parser.add_argument(
        "--no-batching", action="store_true", help="generations take turns on the model instead of batching"
    )
    parser.add_argument(
        "--idle-cache-mb",
        type=float,
        default=4096.0,
        help="memory conversations keep between their turns (KV caches, image features), API requests and browser "
        "tabs together; the least recently used lose their caches first (0: none)",
    )


def run(args: argparse.Namespace) -> int:
    from mmgpt.serve.app import ServeConfig, serve
    from mmgpt.serve.limits import ServeLimits
    from mmgpt.serve.loading import load_chat_model, on_a_passing_thread, parse_adapters, parse_models
    from mmgpt.serve.models import ServedModels

    try:
        limits = ServeLimits(
            max_request_bytes=int(args.max_request_mb * 2**20),
            max_image_pixels=args.max_image_pixels,
            max_images=args.max_images,
            allow_image_urls=args.allow_image_urls,
            max_active=args.max_active,
            max_waiting=args.max_waiting,
            batching=not args.no_batching,
            max_rows=args.max_rows,
            max_batch_tokens=args.max_batch_tokens,
            prefill_chunk=args.prefill_chunk,
            idle_cache_bytes=int(args.idle_cache_mb * 2**20),
        )
        adapters, specs = parse_adapters(args.adapter), parse_models(args.model)
        chat_models = on_a_passing_thread(  # no thread pool of the main thread slowing the scheduler's (CPU)
            lambda: [
                load_chat_model(
                    spec,
                    name=name,
                    adapters=adapters if i == 0 else None,
                    device=args.device,
                    dtype=args.dtype,
                    quantize=args.quantize,
                    max_image_pixels=limits.max_image_pixels,
                )
                for i, (name, spec) in enumerate(specs)
            ]
        )
        models = ServedModels(chat_models)
    except (ValueError, FileNotFoundError, ImportError) as error:  # ImportError: an extra (--quantize)
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
    print(banner(config, [[m.name, *m.adapters] for m in chat_models]), flush=True)
    print(generation_line(limits), flush=True)
    log_requests()
    serve(models, config)
    return 0


def generation_line(limits) -> str:
    """How generations run: ``batching up to 8 rows (32,768 cached tokens, prefill 256 tokens a step); 8 requests
    at once, 16 waiting; 4,096 MiB kept between turns``."""
    if limits.batching:
        how = (
            f"batching up to {limits.max_rows} rows ({limits.max_batch_tokens:,} cached tokens, prefill "
            f"{limits.prefill_chunk} tokens a step)"
        )
    else:
        how = "taking turns on the model (no batching)"
    kept = f"{limits.idle_cache_bytes / 2**20:,.0f} MiB kept between turns"
    return f"generation: {how}; {limits.max_active} requests at once, {limits.max_waiting} waiting; {kept}"


def log_requests() -> None:
    """One line per finished request (tokens, time to first token, total) on stderr, beside uvicorn's."""
    logger = logging.getLogger("mmgpt.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def banner(config, models: list[list[str]]) -> str:
    """The one line that says where everything is: ``mmgpt serve: API http://127.0.0.1:8000/v1 | web demo
    http://127.0.0.1:8000/ | models: base + adapters a, b; other`` (per served model: its name, then its adapters)."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    root = f"http://{host}:{config.port}"
    web = f"web demo {root}{config.web_path}" if config.web_path is not None else "no web demo"
    names = "; ".join(base + (f" + adapters {', '.join(adapters)}" if adapters else "") for base, *adapters in models)
    return f"mmgpt serve: API {root}/v1 | {web} | models: {names}"
