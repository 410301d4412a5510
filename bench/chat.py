"""Chat serving speed: per-turn latency with cache reuse versus re-running the whole conversation each turn, and
the HTTP API's throughput and latency under concurrent clients.

Model: a small LLaMA-style decoder (8 layers x 512, a gated block every 4 layers as in OpenFlamingo-9B) behind a
one-layer ViT of CLIP-L width (1024) at 224 px with 256 patches and 64 latents per image, random weights, a
byte-level tokenizer of the paper's template. CPU, one run.

1. An 8-turn conversation with images in turns 1, 3 and 6, greedy answers of up to ``--new-tokens`` tokens:
   - ours: one :class:`~mmgpt.chat.ChatSession` (latents encoded once, KV cache reused across turns);
   - reference: each turn re-renders the conversation, re-encodes every image and prefills everything again
     (what the reference demo did), via :func:`mmgpt.generate.generate`.
   Both give the same answers (checked); each turn's wall time is reported.
2. ``mmgpt serve``'s API on loopback: ``--clients`` threads each send ``--requests`` chat completions (a two-turn
   history with one image, greedy, ``--api-tokens`` tokens); throughput and p50/p99 latency.

Prints tables, then one JSON line.

    python bench/chat.py [--new-tokens 24] [--clients 8] [--requests 3]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import statistics
import threading
import time

import torch
from PIL import Image

from mmgpt.chat import ChatModel, ChatSession
from mmgpt.config import CrossAttentionConfig, LanguageModelConfig, ModelConfig, PerceiverConfig, VisionConfig
from mmgpt.data.conversation import Conversation
from mmgpt.data.templates import template_texts
from mmgpt.data.tokenize import tokenize_prompt
from mmgpt.generate import GenerationConfig, generate
from mmgpt.model.build import build_model
from mmgpt.tokens import train_tokenizer
from sizes import LLAMA_SIZES, VISION_LAYERS  # bench/ is on sys.path when a benchmark runs

QUESTIONS = [
    ("Describe the image in detail, please.", 1),
    ("What colour is the largest shape, and where is it?", 0),
    ("Here is another picture. What changed between the two?", 1),
    ("Which of the two pictures has more shapes?", 0),
    ("Can you explain why you think so?", 0),
    ("And this third one: how does it compare with the first?", 1),
    ("Summarise the three pictures in one sentence.", 0),
    ("Thank you. Anything else worth noticing?", 0),
]


def build_chat_model(media_mask: str, size: str = "small") -> ChatModel:
    """The benchmark model (random weights, gates half open), of ``size`` (bench/sizes.py)."""
    torch.manual_seed(0)
    corpus = [*template_texts(), *[q for q, _ in QUESTIONS]] * 4
    tokenizer = train_tokenizer(corpus, vocab_size=1000)
    cfg = ModelConfig(
        vision=VisionConfig(
            image_size=224, patch_size=14, width=1024, layers=VISION_LAYERS[size], heads=16, mlp_dim=4096
        ),
        perceiver=PerceiverConfig(depth=2, num_latents=64),
        cross_attention=CrossAttentionConfig(every_n_layers=4, media_mask=media_mask),
        lm=LanguageModelConfig(hf_config={**LLAMA_SIZES[size], "vocab_size": len(tokenizer)}),
    )
    model, tokenizer = build_model(cfg, tokenizer=tokenizer)
    with torch.no_grad():
        for block in model.gated_blocks().values():
            block.attn_gate.fill_(0.5)
            block.ff_gate.fill_(0.5)
    return ChatModel.wrap(model, tokenizer, name="bench")


def picture(seed: int) -> Image.Image:
    pixels = torch.randint(0, 256, (256, 320, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return Image.frombytes("RGB", (320, 256), pixels.numpy().tobytes())


def conversation_benchmark(chat: ChatModel, new_tokens: int) -> list[dict]:
    config = GenerationConfig(max_new_tokens=new_tokens)
    images = {turn: picture(turn) for turn, (_, n) in enumerate(QUESTIONS) if n}
    session = ChatSession(chat)
    rows = []
    for turn, (question, _) in enumerate(QUESTIONS):
        start = time.perf_counter()
        reply = session.ask(question, images=[images[turn]] if turn in images else [], config=config)
        rows.append({"turn": turn + 1, "ours_s": time.perf_counter() - start, "prompt_tokens": reply.prompt_tokens})
        rows[-1].update(computed_tokens=reply.computed_tokens, answer=reply.text)

    # The reference: every turn from scratch - the whole prompt, every image transformed and encoded again.
    messages = session.conversation().messages
    for turn, row in enumerate(rows):
        start = time.perf_counter()
        conversation = Conversation(messages[: 2 * turn + 1])
        prompt = tokenize_prompt(conversation, chat.tokenizer)
        pixels = torch.stack([chat.transform(image) for image in prompt.images]) if prompt.images else None
        (out,) = generate(chat.model, chat.tokenizer, [prompt.input_ids], images=[pixels], config=config)
        row["reference_s"] = time.perf_counter() - start
        row["same_answer"] = out.text.strip() == row.pop("answer")
    return rows


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def api_benchmark(chat: ChatModel, clients: int, requests: int, tokens: int) -> dict:
    import httpx
    import uvicorn

    from mmgpt.serve.app import ServeConfig, build_app
    from mmgpt.serve.limits import ServeLimits

    limits = ServeLimits(max_active=clients, max_waiting=clients, queue_timeout_s=600)
    app = build_app(chat, ServeConfig(web_path=None, limits=limits))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    latencies: list[float] = []
    completion_tokens = [0]
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=600) as http:
            for r in range(requests):
                body = {
                    "model": "bench",
                    "temperature": 0,
                    "max_tokens": tokens,
                    "messages": [
                        {"role": "user", "content": f"Hello number {index}."},
                        {"role": "assistant", "content": "Hello! How can I help?"},
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "Describe this picture."},
                                {"type": "image_url", "image_url": {"url": png_data_url(picture(100 + r))}},
                            ],
                        },
                    ],
                }
                start = time.perf_counter()
                response = http.post(url, json=body)
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                        continue
                    latencies.append(elapsed)
                    completion_tokens[0] += response.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    server.should_exit = True
    thread.join(timeout=10)
    latencies.sort()
    p99_index = min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "completion_tokens_per_s": completion_tokens[0] / wall,
        "p50_s": statistics.median(latencies) if latencies else None,
        "p99_s": latencies[p99_index] if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--media-mask", default="following", choices=["following", "previous"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="per client")
    parser.add_argument("--api-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chat = build_chat_model(args.media_mask)
    ChatSession(chat).ask("warm up", images=[picture(0)], config=GenerationConfig(max_new_tokens=2))  # untimed
    rows = conversation_benchmark(chat, args.new_tokens)
    print(f"8-turn chat, media mask {args.media_mask!r}, up to {args.new_tokens} new tokens per answer (seconds)")
    print(f"{'turn':>4} {'prompt tok':>10} {'run tok':>8} {'ours':>7} {'reference':>10} {'speed-up':>9} {'same':>5}")
    for row in rows:
        speedup = row["reference_s"] / row["ours_s"]
        print(
            f"{row['turn']:>4} {row['prompt_tokens']:>10} {row['computed_tokens']:>8} {row['ours_s']:>7.3f} "
            f"{row['reference_s']:>10.3f} {speedup:>8.2f}x {'yes' if row['same_answer'] else 'NO':>5}"
        )
    ours, reference = sum(r["ours_s"] for r in rows), sum(r["reference_s"] for r in rows)
    print(f"total: ours {ours:.2f} s, reference {reference:.2f} s ({reference / ours:.2f}x)\n")
    api = api_benchmark(chat, args.clients, args.requests, args.api_tokens)
    print(
        f"API: {api['clients']} concurrent clients, {api['requests']} requests ({api['errors']} errors) in "
        f"{api['wall_s']:.1f} s: {api['requests_per_s']:.2f} req/s, {api['completion_tokens_per_s']:.1f} tok/s, "
        f"p50 {api['p50_s']:.2f} s, p99 {api['p99_s']:.2f} s"
    )
    summary = {
        "media_mask": args.media_mask,
        "turns": rows,
        "ours_total_s": ours,
        "reference_total_s": reference,
        "speedup_total": reference / ours,
        "speedup_last_turn": rows[-1]["reference_s"] / rows[-1]["ours_s"],
        "all_answers_equal": all(r["same_answer"] for r in rows),
        "api": api,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
