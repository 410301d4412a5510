"""One decode step of a batch: the KV cache that appends in place (mmgpt's GrowingCache) versus transformers'
DynamicCache, which concatenates - copying the whole cache - at every step.

The model is bench/chat.py's (the small LLaMA-style decoder with gated blocks; random weights). For each number of
rows and of cached positions S, a batch is prefilled, then ``--steps`` decode steps run (each row one token; at
least S/8 + 8, so the buffers grow once) and the mean step is kept (a buffer's growth, a copy every S/8 steps, is
counted). The two caches alternate per
setting (interleaved: the machine is shared and noisy) for ``--rounds`` rounds, and the table gives the medians and
their per-pair ratio. Both caches give the same logits (checked at every setting).

    python bench/kv_cache.py [--rows 1,8] [--cached 100,400,1000] [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from transformers import DynamicCache

from chat import build_chat_model  # bench/ is on sys.path when a benchmark runs
from mmgpt.model.cache import GrowingCache, ModelCache

CACHES = {"growing": GrowingCache, "concatenating": DynamicCache}


def step_time(model, cache_class: type, rows: int, cached: int, steps: int) -> tuple[float, torch.Tensor]:
    """The mean decode step (s) of ``rows`` rows over ``cached`` positions, and the last step's logits."""
    ids = torch.full((rows, cached), 5)
    empty = torch.zeros(rows, 0, dtype=torch.long)
    start = ModelCache(cache_class(), None, torch.zeros(rows, dtype=torch.long), empty)
    cache = model(ids, attention_mask=torch.ones_like(ids), cache=start, use_cache=True).cache
    token, times = torch.full((rows, 1), 6), []
    for _ in range(steps):
        began = time.perf_counter()
        out = model(token, attention_mask=torch.ones_like(token), cache=cache, use_cache=True)
        times.append(time.perf_counter() - began)
        cache = out.cache
    return statistics.mean(times[2:]), out.logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--cached", default="100,400,1000", help="cached positions, comma-separated")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows_list = [int(r) for r in args.rows.split(",")]
    cached_list = [int(c) for c in args.cached.split(",")]

    model = build_chat_model("following").model.eval()
    times: dict[tuple[int, int, str], list[float]] = {}
    with torch.no_grad():
        for round_ in range(args.rounds):
            for k, (rows, cached) in enumerate((r, c) for r in rows_list for c in cached_list):
                order = list(CACHES) if (round_ + k) % 2 == 0 else list(CACHES)[::-1]
                logits = {}
                for name in order:
                    steps = max(args.steps, cached // 8 + 8)  # past the first growth of the buffers
                    seconds, logits[name] = step_time(model, CACHES[name], rows, cached, steps)
                    times.setdefault((rows, cached, name), []).append(seconds)
                torch.testing.assert_close(logits["growing"], logits["concatenating"], rtol=0, atol=1e-5)

    table = []
    counted = f"max({args.steps}, S/8 + 8)"
    print(f"decode step (ms): median of {args.rounds} rounds of the mean of {counted} steps; {os.cpu_count()} CPUs")
    print(f"{'rows':>4} {'cached':>6} | {'concatenating':>13} {'growing':>8} | {'x':>5} | growing tok/s")
    for rows in rows_list:
        for cached in cached_list:
            grow = times[(rows, cached, "growing")]
            cat = times[(rows, cached, "concatenating")]
            ratio = statistics.median(c / g for c, g in zip(cat, grow, strict=True))
            row = {
                "rows": rows,
                "cached": cached,
                "concatenating_ms": 1e3 * statistics.median(cat),
                "growing_ms": 1e3 * statistics.median(grow),
                "ratio": ratio,
                "growing_tokens_per_s": rows / statistics.median(grow),
            }
            table.append(row)
            print(
                f"{rows:>4} {cached:>6} | {row['concatenating_ms']:>13.2f} {row['growing_ms']:>8.2f} | "
                f"{ratio:>4.2f}x | {row['growing_tokens_per_s']:>8.0f}"
            )
    settings = {"rows": rows_list, "cached": cached_list, "steps": args.steps, "rounds": args.rounds}
    print(json.dumps({"machine": {"cpus": os.cpu_count()}, "settings": settings, "table": table}))


if __name__ == "__main__":
    main()
