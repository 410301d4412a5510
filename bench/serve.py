"""Serving under concurrent clients: continuous batching versus taking turns, through the real server over HTTP.

The model is bench/chat.py's (a LLaMA-style decoder of 8 layers x 512 with a gated block every 4, a one-layer ViT of
CLIP-L width at 224 px, 64 latents per image, random weights, a byte-level tokenizer of the paper's template),
saved with ``save_pretrained`` and served by ``mmgpt serve --no-web`` in two processes on loopback: one batching
(``--max-rows 16``), one with ``--no-batching`` (generations take turns on the model one step at a time; the
behaviour before continuous batching). Both admit 16 requests at once (``--max-active 16``).

For each number of clients (1, 2, 4, 8, 16), each client (a thread with its own official ``openai`` client) streams
``--requests`` chat completions one after another: every other one with an image, every other one seeded sampling
(the rest greedy), up to ``--max-tokens`` tokens. Measured per run: total completion tokens/s, requests/s, p50/p99
latency (request sent -> last chunk), p50 time to first token (request sent -> first content chunk, as the client
sees it; the server's own figure from the ``X-Time-To-First-Token`` header beside it). The variants are
interleaved - per round, per client count, both run back to back in alternating order - and compared per pair
(the machine is shared and noisy; ratios of runs next to each other are what to read). Every request's answer must
be the same in both variants and every round (greedy and seeded).

Before the servers start, two ceilings in this process: the model's decode step alone at each number of rows, and
the same requests through the batching scheduler with no server (sessions in threads): what is lost between those
and the server is serving's own cost (HTTP, JSON, the event loop, the clients - on a CPU, sharing the cores).

Prints the runs, a table of medians over rounds with the per-pair ratios, and - as the last line - one JSON object.

    python bench/serve.py [--clients 1,2,4,8,16] [--requests 3] [--max-tokens 32] [--rounds 3]
    python bench/serve.py --size 7b --device cuda --dtype bfloat16   # on a GPU: LLaMA-7B's and CLIP-L's shapes
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import torch

from chat import build_chat_model, picture, png_data_url  # bench/ is on sys.path when a benchmark runs

VARIANTS = ("turns", "batching")
FLAGS = {"turns": ["--no-batching"], "batching": ["--max-rows", "16"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mmgpt serve`` in a process of its own; its log (one line per request) goes to a file."""

    def __init__(
        self, model: Path, variant: str, folder: Path, flags: list[str], *, device: str = "cpu", dtype: str = "float32"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"server-{variant}.log"
        command = [sys.executable, "-m", "mmgpt", "serve", "--model", str(model), "--no-web"]
        command += ["--port", str(self.port), "--max-active", "16", "--max-waiting", "16", *flags]
        command += ["--device", device, "--dtype", dtype]
        self.process = subprocess.Popen(command, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {variant} server did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def plan(client: int, number: int) -> tuple[str, int | None, dict]:
    """The ``number``-th request of ``client``: its text, its image's key (every other time; None: no image) and its
    sampling settings (seeded sampling every other time, greedy otherwise)."""
    text = f"Client {client}, question {number}: describe what you see, please."
    image = 100 + 10 * client + number if (client + number) % 2 == 0 else None
    sampling = {"temperature": 0.0}
    if number % 2 == 1:
        sampling = {"temperature": 0.8, "top_p": 0.95, "seed": 1000 * client + number}
    return text, image, sampling


def request(client: int, number: int, max_tokens: int, images: dict[int, str]) -> dict:
    """The body of :func:`plan`'s request, streamed with its usage."""
    text, image, sampling = plan(client, number)
    content: list[dict] = [{"type": "text", "text": text}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": images[image]}})
    body = {"model": "bench", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return {**body, "stream": True, "stream_options": {"include_usage": True}, **sampling}


def one_run(url: str, clients: int, requests: int, max_tokens: int, images: dict[int, str]) -> tuple[dict, dict]:
    """``clients`` threads streaming ``requests`` requests each; the figures, and every answer by (client, number)."""
    records: list[dict] = []
    answers: dict[str, str] = {}
    errors: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients)

    def client(index: int) -> None:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        start_line.wait()
        for number in range(requests):
            body = request(index, number, max_tokens, images)
            sent = time.perf_counter()
            try:
                raw = api.chat.completions.with_raw_response.create(**body)
                first, pieces, usage = None, [], None
                for chunk in raw.parse():
                    if chunk.usage is not None:
                        usage = chunk.usage
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.perf_counter()
                        pieces.append(chunk.choices[0].delta.content)
                done = time.perf_counter()
            except openai.OpenAIError as error:
                with lock:
                    errors.append(f"client {index} request {number}: {error}")
                continue
            with lock:
                answers[f"{index}/{number}"] = "".join(pieces)
                records.append(
                    {
                        "sent": sent,
                        "done": done,
                        "latency": done - sent,
                        "ttft": (first or done) - sent,
                        "server_ttft": float(raw.headers.get("x-time-to-first-token", "nan")),
                        "tokens": usage.completion_tokens if usage else 0,
                    }
                )

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if not records:
        raise RuntimeError(f"every request failed: {errors[:3]}")
    wall = max(r["done"] for r in records) - min(r["sent"] for r in records)
    latencies = sorted(r["latency"] for r in records)
    figures = {
        "clients": clients,
        "requests": len(records),
        "errors": len(errors),
        "wall_s": wall,
        "tokens": sum(r["tokens"] for r in records),
        "tokens_per_s": sum(r["tokens"] for r in records) / wall,
        "requests_per_s": len(records) / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "ttft_p50_s": statistics.median(r["ttft"] for r in records),
        "server_ttft_p50_s": statistics.median(r["server_ttft"] for r in records),
    }
    return figures, answers


def interleaved(
    servers: dict[str, Server],
    counts: list[int],
    rounds: int,
    run: Callable[[str, int], tuple[dict, dict[str, str]]],
    show: Callable[[dict], str],
    warm: Callable[[str], object],
) -> tuple[list[dict], dict[str, dict[str, str]]]:
    """Every client count on every server (variant), ``rounds`` times: per round and count the variants back to back,
    in alternating order, ``run(url, clients)`` giving a run's figures and its answers by request; each run printed
    with ``show``, after an untimed ``warm(url)`` of each server (first calls, allocator, threads). The servers are
    stopped at the end. Returns the runs (figures with round and variant) and the answers by
    "variant/round/clients"."""
    variants = list(servers)
    runs: list[dict] = []
    answers: dict[str, dict[str, str]] = {}
    try:
        for server in servers.values():
            warm(server.url)
        for round_ in range(rounds):
            for k, clients in enumerate(counts):
                for variant in variants if (round_ + k) % 2 == 0 else variants[::-1]:
                    figures, got = run(servers[variant].url, clients)
                    runs.append({"round": round_, "variant": variant, **figures})
                    answers[f"{variant}/{round_}/{clients}"] = got
                    print(f"round {round_} {clients:>2} clients {variant:>8}: {show(figures)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return runs, answers


def differing_answers(answers: dict[str, dict[str, str]]) -> tuple[int, list[str]]:
    """How many requests there were, and those whose answer was not the same in every variant and round."""
    by_request: dict[str, set[str]] = {}
    for got in answers.values():
        for key, text in got.items():
            by_request.setdefault(key, set()).add(text)
    return len(by_request), sorted(key for key, texts in by_request.items() if len(texts) > 1)


def run_of(runs: list[dict], round_: int, clients: int, variant: str) -> dict:
    return next(r for r in runs if (r["round"], r["clients"], r["variant"]) == (round_, clients, variant))


RATIOS = {  # name: (figure, turns over batching?) - every ratio reads "batching is this many times better"
    "tokens_per_s": ("tokens_per_s", False),
    "requests_per_s": ("requests_per_s", False),
    "p50_latency": ("p50_s", True),
    "p99_latency": ("p99_s", True),
    "ttft_p50": ("ttft_p50_s", True),
}


def step_ceiling(chat, rows: list[int], cached: int = 100, steps: int = 25) -> dict[int, float]:
    """The model's own decode step, alone in this process (no server, no prefill, no images): tokens/s at each
    number of rows, from the median of ``steps`` steps over ``cached`` cached positions. Batching's scaling can
    reach at most this curve's (on a CPU a step's cost grows with its rows: it computes, not only reads)."""
    model = chat.model
    device = model.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ceiling = {}
    with torch.no_grad():
        for b in rows:
            ids = torch.full((b, cached), 5, device=device)
            cache = model(ids, attention_mask=torch.ones_like(ids), use_cache=True).cache
            token, times = torch.full((b, 1), 6, device=device), []
            for _ in range(steps):
                sync()
                start = time.perf_counter()
                cache = model(token, attention_mask=torch.ones_like(token), cache=cache, use_cache=True).cache
                sync()
                times.append(time.perf_counter() - start)
            ceiling[b] = b / statistics.median(times[3:])
    return ceiling


def scheduler_alone(chat, counts: list[int], requests: int, max_tokens: int, pictures: dict) -> dict[int, float]:
    """The server's requests (:func:`plan`'s texts, images and sampling settings, the same budgets) through
    the model's batching scheduler in this process - each client a thread with a ChatSession, no HTTP, no JSON, no
    client parsing: tokens/s at each number of clients (after an untimed run), what the server would give if serving
    cost nothing. Call it from a thread that has run no parallel tensor operation (serve/loading.py says why)."""
    from mmgpt.chat import ChatSession, start_batching, stop_batching
    from mmgpt.generate import GenerationConfig

    start_batching(chat, max_rows=16)
    try:
        rates = {}
        for clients in [min(counts), *counts]:  # the first untimed: first calls, allocator, threads
            tokens: list[int] = []
            errors: list[BaseException] = []
            start_line = threading.Barrier(clients + 1)

            def client(index: int, tokens: list[int], start_line: threading.Barrier, errors: list) -> None:
                start_line.wait()
                try:
                    ask(index, tokens)
                except BaseException as error:
                    errors.append(error)

            def ask(index: int, tokens: list[int]) -> None:
                for number in range(requests):
                    text, image, sampling = plan(index, number)
                    config = GenerationConfig(max_new_tokens=max_tokens, **sampling)
                    session = ChatSession(chat)
                    for _ in session.send(text, images=[] if image is None else [pictures[image]], config=config):
                        pass
                    tokens.append(session.last.completion_tokens)

            threads = [threading.Thread(target=client, args=(i, tokens, start_line, errors)) for i in range(clients)]
            for thread in threads:
                thread.start()
            start_line.wait()
            started = time.perf_counter()
            for thread in threads:
                thread.join()
            if errors:
                raise RuntimeError(f"the scheduler alone failed with {clients} clients") from errors[0]
            rates[clients] = sum(tokens) / (time.perf_counter() - started)  # the untimed one is overwritten
        return rates
    finally:
        stop_batching(chat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,2,4,8,16", help="client counts, comma-separated")
    parser.add_argument("--requests", type=int, default=3, help="streamed one after another by each client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="each round runs every client count in both variants")
    parser.add_argument("--size", default="small", choices=["small", "1b", "7b"], help="the LM's shape (sizes.py)")
    parser.add_argument("--device", default="cpu", help="where the servers (and the step alone) run: cpu, cuda")
    parser.add_argument("--dtype", default="float32", help="float32, or bfloat16 / float16 on a GPU")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    folder = Path(tempfile.mkdtemp(prefix="mmgpt-bench-serve-"))
    from mmgpt.model.checkpoints.ours import save_pretrained
    from mmgpt.serve.loading import on_a_passing_thread

    def prepare() -> tuple:
        chat = build_chat_model("following", args.size)
        chat.model.to(getattr(torch, args.dtype))
        model = save_pretrained(chat.model, chat.tokenizer, folder / "bench")  # served as model "bench"
        chat.model.to(args.device)
        pictures = {100 + 10 * c + n: picture(100 + 10 * c + n) for c in range(max(counts)) for n in range(9)}
        return chat, model, step_ceiling(chat, counts), pictures

    # Tensor work on a thread that ends: no OpenMP pool left on this one to slow the scheduler's (serve/loading.py).
    chat, model, ceiling, pictures = on_a_passing_thread(prepare)
    in_process = scheduler_alone(chat, counts, args.requests, args.max_tokens, pictures)
    del chat
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    images = {key: png_data_url(image) for key, image in pictures.items()}
    servers = {
        variant: Server(model, variant, folder, FLAGS[variant], device=args.device, dtype=args.dtype)
        for variant in VARIANTS
    }
    print(f"model saved in {model}; servers' logs in {folder}", flush=True)

    def show(figures: dict) -> str:
        return (
            f"{figures['tokens_per_s']:7.1f} tok/s {figures['requests_per_s']:5.2f} req/s  p50 {figures['p50_s']:6.2f} "
            f"s  p99 {figures['p99_s']:6.2f} s  TTFT p50 {figures['ttft_p50_s']:5.2f} s"
            + (f"  ({figures['errors']} errors)" if figures["errors"] else "")
        )

    runs, answers = interleaved(
        servers,
        counts,
        args.rounds,
        lambda url, clients: one_run(url, clients, args.requests, args.max_tokens, images),
        show,
        lambda url: one_run(url, 2, 2, 4, images),
    )
    # The same request gets the same answer everywhere (greedy, and seeded sampling).
    requests, differing = differing_answers(answers)

    table = []
    for clients in counts:
        row: dict = {"clients": clients}
        for variant in VARIANTS:
            mine = [run_of(runs, r, clients, variant) for r in range(args.rounds)]
            for figure in ("tokens_per_s", "requests_per_s", "p50_s", "p99_s", "ttft_p50_s", "server_ttft_p50_s"):
                row[f"{variant}_{figure}"] = statistics.median(m[figure] for m in mine)
        for name, (figure, inverse) in RATIOS.items():
            pairs = [(run_of(runs, r, clients, v)[figure] for v in VARIANTS) for r in range(args.rounds)]
            row[f"ratio_{name}"] = statistics.median(t / b if inverse else b / t for t, b in pairs)
        # Scaling: batching's tokens/s at this many clients over one client's, in the same round.
        row["batching_scaling_vs_1_client"] = statistics.median(
            run_of(runs, r, clients, "batching")["tokens_per_s"]
            / run_of(runs, r, counts[0], "batching")["tokens_per_s"]
            for r in range(args.rounds)
        )
        row["turns_scaling_vs_1_client"] = statistics.median(
            run_of(runs, r, clients, "turns")["tokens_per_s"] / run_of(runs, r, counts[0], "turns")["tokens_per_s"]
            for r in range(args.rounds)
        )
        table.append(row)

    print(
        f"\nmedians over {args.rounds} rounds; each client streams {args.requests} requests of up to "
        f"{args.max_tokens} tokens (half with an image); ratios: batching's advantage, per pair, median"
    )
    header = (
        f"{'clients':>7} | {'tok/s turns':>11} {'batching':>9} {'x':>6} | {'req/s x':>7} | "
        f"{'p99 s turns':>11} {'batching':>9} {'x':>6} | {'TTFT p50 turns':>14} {'batching':>9} | "
        f"{'scaling vs 1 client':>19}"
    )
    print(header)
    print("-" * len(header))
    for row in table:
        print(
            f"{row['clients']:>7} | {row['turns_tokens_per_s']:>11.1f} {row['batching_tokens_per_s']:>9.1f} "
            f"{row['ratio_tokens_per_s']:>5.2f}x | {row['ratio_requests_per_s']:>6.2f}x | "
            f"{row['turns_p99_s']:>11.2f} {row['batching_p99_s']:>9.2f} {row['ratio_p99_latency']:>5.2f}x | "
            f"{row['turns_ttft_p50_s']:>14.2f} {row['batching_ttft_p50_s']:>9.2f} | "
            f"{row['batching_scaling_vs_1_client']:>8.2f}x ({row['turns_scaling_vs_1_client']:.2f}x turns)"
        )
    first = counts[0]
    print(
        "the model's decode step alone (no server), tokens/s by rows: "
        + ", ".join(f"{b}: {ceiling[b]:.0f} ({ceiling[b] / ceiling[first]:.2f}x)" for b in counts)
    )
    print(
        "the scheduler alone (this process: sessions in threads, no HTTP), tokens/s by clients: "
        + ", ".join(f"{b}: {in_process[b]:.0f} ({in_process[b] / in_process[first]:.2f}x)" for b in counts)
    )
    for row in table:
        row["step_alone_tokens_per_s"] = ceiling[row["clients"]]
        row["step_alone_scaling"] = ceiling[row["clients"]] / ceiling[first]
        row["scheduler_alone_tokens_per_s"] = in_process[row["clients"]]
        row["scheduler_alone_scaling"] = in_process[row["clients"]] / in_process[first]
        # Against the server before batching: this many clients batched over one client taking turns.
        row["batching_vs_1_client_turns"] = statistics.median(
            run_of(runs, r, row["clients"], "batching")["tokens_per_s"]
            / run_of(runs, r, first, "turns")["tokens_per_s"]
            for r in range(args.rounds)
        )
    print(
        "batching's tokens/s over one client's taking turns (the server before): "
        + ", ".join(f"{row['clients']}: {row['batching_vs_1_client_turns']:.2f}x" for row in table)
    )
    print(
        f"same answers in both variants and every round: {'yes' if not differing else 'NO'} "
        f"({requests} requests{', differing: ' + ', '.join(differing[:5]) if differing else ''})"
    )
    eight = next((row for row in table if row["clients"] == 8), None)
    summary = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {
            "clients": counts,
            "requests_per_client": args.requests,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
            "flags": FLAGS,
            "size": args.size,
            "device": args.device,
            "dtype": args.dtype,
        },
        "table": table,
        "runs": runs,
        "same_answers": not differing,
        "differing_requests": differing,
        "target_8_clients_5x_one_client": None
        if eight is None
        else eight["batching_scaling_vs_1_client"] >= 5 and eight["batching_p99_s"] < eight["turns_p99_s"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
