"""API conversations kept between requests versus none kept: multi-turn clients over HTTP, the real server.

An OpenAI-style client sends the whole conversation at every turn. Two batching servers of bench/chat.py's model
(``mmgpt serve --no-web``, bench/serve.py's ``Server``): "kept" parks each finished answer's session - its KV cache and
its images' features - for the request that continues the conversation (the default, ``--idle-cache-mb 4096``);
"fresh" keeps nothing (``--idle-cache-mb 0``: every request encodes every image of its history again and
prefills the whole prompt). Each client (a thread with its own official ``openai`` client) holds one conversation of
bench/chat.py's ``--turns`` questions (images at turns 1, 3 and 6), greedy, up to ``--max-tokens`` tokens per
answer, and sends every answer back as received.

Per run: total completion tokens/s, time to first token per turn (p50 over clients, as the client sees it), the
prompt tokens sent and the cached ones the server reports (``usage.prompt_tokens_details.cached_tokens``). The
variants are interleaved - per round, per client count, back to back in alternating order - and compared per pair.
Every answer must be the same in both variants and every round.

Prints the runs, a table of medians with per-pair ratios, and - as the last line - one JSON object.

    python bench/api_conversations.py [--clients 1,8] [--turns 6] [--max-tokens 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai

from chat import QUESTIONS, build_chat_model, picture, png_data_url  # bench/ is on sys.path when a benchmark runs
from serve import Server, differing_answers, interleaved, run_of

VARIANTS = ("fresh", "kept")
FLAGS = {"fresh": ["--idle-cache-mb", "0"], "kept": ["--idle-cache-mb", "4096"]}


def conversation(url: str, client: int, turns: int, max_tokens: int, images: dict[int, str]) -> list[dict]:
    """One client's conversation, the whole history sent at every turn; per turn: the answer and its figures."""
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    messages: list[dict] = []
    out = []
    for turn, (question, with_image) in enumerate(QUESTIONS[:turns]):
        content: list[dict] = [{"type": "text", "text": f"{question} (client {client})"}]
        if with_image:
            content.append({"type": "image_url", "image_url": {"url": images[1000 * client + turn]}})
        messages.append({"role": "user", "content": content})
        sent = time.perf_counter()
        stream = api.chat.completions.create(
            model="bench",
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        first, pieces, usage = None, [], None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                pieces.append(chunk.choices[0].delta.content)
        done = time.perf_counter()
        answer = "".join(pieces)
        messages.append({"role": "assistant", "content": answer})
        details = usage.prompt_tokens_details if usage else None
        out.append(
            {
                "turn": turn + 1,
                "answer": answer,
                "sent": sent,
                "done": done,
                "ttft": (first or done) - sent,
                "tokens": usage.completion_tokens if usage else 0,
                "prompt_tokens": usage.prompt_tokens if usage else 0,
                "cached_tokens": (details.cached_tokens or 0) if details else 0,
            }
        )
    return out


def one_run(url: str, clients: int, turns: int, max_tokens: int, images: dict[int, str]) -> tuple[dict, dict]:
    """``clients`` conversations at once; the run's figures and every answer by (client, turn)."""
    results: dict[int, list[dict]] = {}
    start_line = threading.Barrier(clients)

    def client(index: int) -> None:
        start_line.wait()
        results[index] = conversation(url, index, turns, max_tokens, images)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(results) != clients:
        raise RuntimeError(f"{clients - len(results)} of {clients} conversations failed (see the server's log)")
    records = [record for conversation_ in results.values() for record in conversation_]
    wall = max(r["done"] for r in records) - min(r["sent"] for r in records)
    figures = {
        "clients": clients,
        "wall_s": wall,
        "tokens_per_s": sum(r["tokens"] for r in records) / wall,
        "ttft_p50_s_by_turn": [
            statistics.median(r["ttft"] for r in records if r["turn"] == turn) for turn in range(1, turns + 1)
        ],
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "cached_tokens": sum(r["cached_tokens"] for r in records),
    }
    answers = {f"{index}/{r['turn']}": r["answer"] for index, rows in results.items() for r in rows}
    return figures, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8", help="client counts, comma-separated")
    parser.add_argument("--turns", type=int, default=6, help=f"turns per conversation (at most {len(QUESTIONS)})")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="each round runs every client count in both variants")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    if not 1 <= args.turns <= len(QUESTIONS):
        parser.error(f"--turns {args.turns}: choose 1 to {len(QUESTIONS)}")

    folder = Path(tempfile.mkdtemp(prefix="mmgpt-bench-conversations-"))
    from mmgpt.model.checkpoints.ours import save_pretrained

    chat = build_chat_model("following")
    model = save_pretrained(chat.model, chat.tokenizer, folder / "bench")  # served as model "bench"
    del chat
    images = {1000 * c + t: png_data_url(picture(1000 * c + t)) for c in range(max(counts)) for t in range(args.turns)}
    servers = {variant: Server(model, variant, folder, ["--max-rows", "16", *FLAGS[variant]]) for variant in VARIANTS}
    print(f"model saved in {model}; servers' logs in {folder}", flush=True)

    def show(figures: dict) -> str:
        ttft = " ".join(f"{t * 1000:4.0f}" for t in figures["ttft_p50_s_by_turn"])
        return (
            f"{figures['tokens_per_s']:6.1f} tok/s  TTFT p50 by turn (ms) {ttft}  "
            f"cached {figures['cached_tokens']}/{figures['prompt_tokens']}"
        )

    runs, answers = interleaved(
        servers,
        counts,
        args.rounds,
        lambda url, clients: one_run(url, clients, args.turns, args.max_tokens, images),
        show,
        lambda url: one_run(url, 2, 2, 4, images),
    )
    turns, differing = differing_answers(answers)

    table = []
    for clients in counts:
        pairs = [[run_of(runs, r, clients, v) for v in VARIANTS] for r in range(args.rounds)]
        row: dict = {"clients": clients}
        for i, variant in enumerate(VARIANTS):
            row[f"{variant}_tokens_per_s"] = statistics.median(p[i]["tokens_per_s"] for p in pairs)
            row[f"{variant}_ttft_p50_s_by_turn"] = [
                statistics.median(p[i]["ttft_p50_s_by_turn"][t] for p in pairs) for t in range(args.turns)
            ]
            row[f"{variant}_cached_share"] = pairs[0][i]["cached_tokens"] / pairs[0][i]["prompt_tokens"]
        row["ratio_tokens_per_s"] = statistics.median(k["tokens_per_s"] / f["tokens_per_s"] for f, k in pairs)
        row["ratio_ttft_last_turn"] = statistics.median(
            f["ttft_p50_s_by_turn"][-1] / k["ttft_p50_s_by_turn"][-1] for f, k in pairs
        )
        table.append(row)

    print(f"\nmedians over {args.rounds} rounds; ratios are per pair (kept over fresh, higher is better)")
    print(f"{'clients':>7} | {'tok/s fresh':>11} {'kept':>7} {'x':>6} | TTFT p50 by turn, ms: fresh / kept | last x")
    for row in table:
        fresh = " ".join(f"{t * 1000:.0f}" for t in row["fresh_ttft_p50_s_by_turn"])
        kept = " ".join(f"{t * 1000:.0f}" for t in row["kept_ttft_p50_s_by_turn"])
        print(
            f"{row['clients']:>7} | {row['fresh_tokens_per_s']:>11.1f} {row['kept_tokens_per_s']:>7.1f} "
            f"{row['ratio_tokens_per_s']:>5.2f}x | {fresh} / {kept} | {row['ratio_ttft_last_turn']:.2f}x"
        )
    print(
        f"prompt tokens the server reported cached: fresh {table[0]['fresh_cached_share']:.0%}, "
        f"kept {table[0]['kept_cached_share']:.0%} ({counts[0]} client(s))"
    )
    print(f"same answers in every variant and round: {not differing} ({turns} turns)")
    summary = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {"clients": counts, "turns": args.turns, "max_tokens": args.max_tokens, "rounds": args.rounds},
        "flags": FLAGS,
        "table": table,
        "runs": runs,
        "same_answers": not differing,
        "differing": differing,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
