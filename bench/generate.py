"""Decode speed of cached multimodal generation versus the reference's per-step recomputation and text-only.

A small LLaMA-style model (~60M LM parameters, vocabulary 32003, CLIP-L-width vision features, 64 latents per
image, a gated block every 4 layers) decodes a fixed number of tokens greedily after a prompt with 1 or 4 images:

- ours: KV cache + media keys/values projected once per generation (mmgpt's path);
- recompute: KV cache, but the media keys/values are projected again at every step (what OpenFlamingo's and
  MultiModal-GPT's reference code does);
- text-only: the bare LM (no gated blocks), same prompt minus images.

Only decode steps are timed (prefill excluded); each variant runs ``--repeats`` times, interleaved, median kept.
Prints a table, then one JSON line with the figures.

    python bench/generate.py [--new-tokens 64] [--repeats 5]

Both media masks are measured: under "following" (MultiModal-GPT's) generated tokens attend to no image.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from transformers import DynamicCache

from mmgpt.config import CrossAttentionConfig, LanguageModelConfig, ModelConfig, PerceiverConfig, VisionConfig
from mmgpt.generate import GenerationConfig, generate
from mmgpt.model.build import build_language_model, build_vision_encoder
from mmgpt.model.flamingo import build_flamingo
from mmgpt.model.language import lm_cache_argument
from mmgpt.tokens import SpecialTokenIds
from sizes import SMALL_LLAMA  # bench/ is on sys.path when a benchmark runs

VOCAB = 32000


def build(media_mask: str, every_n: int = 4):
    cfg = ModelConfig(
        vision=VisionConfig(image_size=224, patch_size=14, width=1024, layers=1, heads=16, mlp_dim=4096),
        perceiver=PerceiverConfig(depth=2, num_latents=64),
        cross_attention=CrossAttentionConfig(every_n_layers=every_n, media_mask=media_mask),
        lm=LanguageModelConfig(hf_config={**SMALL_LLAMA, "vocab_size": VOCAB}),
    )
    torch.manual_seed(0)
    lm = build_language_model(cfg.lm)
    special = SpecialTokenIds(end_of_chunk=VOCAB, image=VOCAB + 1, pad=VOCAB + 2, eos=2, bos=1)
    bare = copy.deepcopy(lm)
    model = build_flamingo(
        cfg=cfg, vision_encoder=build_vision_encoder(cfg.vision), lang_encoder=lm, special=special, vocab_size=VOCAB + 3
    ).eval()
    bare.resize_token_embeddings(VOCAB + 3, mean_resizing=False)
    with torch.no_grad():
        for block in model.gated_blocks().values():
            block.attn_gate.fill_(0.5)
            block.ff_gate.fill_(0.5)
    return model, bare.eval(), special


def prompt(special: SpecialTokenIds, n_images: int, text_tokens: int = 32) -> list[int]:
    gen = torch.Generator().manual_seed(n_images)
    ids = [special.bos]
    for _ in range(n_images):
        ids += [special.image, *torch.randint(3, VOCAB, (4,), generator=gen).tolist(), special.end_of_chunk]
    return ids + torch.randint(3, VOCAB, (text_tokens,), generator=gen).tolist()


@torch.no_grad()
def time_decode(step, first_logits, n: int) -> float:
    """Run n greedy decode steps; returns seconds."""
    token = first_logits.argmax(-1, keepdim=True)
    start = time.perf_counter()
    for _ in range(n):
        token = step(token).argmax(-1, keepdim=True)
    return time.perf_counter() - start


def run_flamingo(model, ids, images, n, *, recompute: bool) -> float:
    out = model(ids, images=images, use_cache=True)
    cache = out.cache

    blocks = list(model.gated_blocks().values())

    def step(token):
        nonlocal cache
        if recompute:  # the reference projects every image's latents in every block at every step
            for block in blocks:
                block.attn.project_media(cache.media.latents)
        o = model(token, cache=cache, use_cache=True)
        cache = o.cache
        return o.logits[:, -1]

    return time_decode(step, out.logits[:, -1], n)


def run_bare(lm, ids, n) -> float:
    kv = {lm_cache_argument(lm): DynamicCache()}
    out = lm(input_ids=ids, **kv, use_cache=True)

    def step(token):
        return lm(input_ids=token, **kv, use_cache=True).logits[:, -1]

    return time_decode(step, out.logits[:, -1], n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every-n", type=int, default=4, help="a gated block every n layers (9B v1: 4, 3B: 1)")
    args = parser.parse_args()
    n = args.new_tokens
    models = {mask: build(mask, args.every_n) for mask in ("previous", "following")}
    _, bare, special = models["previous"]
    lm_params = sum(p.numel() for p in bare.parameters())
    block_params = sum(p.numel() for b in models["previous"][0].gated_blocks().values() for p in b.parameters())

    inputs = {}
    for k in (1, 4):
        images = torch.randn(1, k, 1, 3, 224, 224, generator=torch.Generator().manual_seed(k))
        inputs[k] = (torch.tensor([prompt(special, k)]), images)
    text_ids = torch.tensor([prompt(special, 0)])
    for model, _, _ in models.values():
        run_flamingo(model, *inputs[1], 4, recompute=False)  # warm-up
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so machine noise hits every variant alike
        times.setdefault("text-only (bare LM)", []).append(run_bare(bare, text_ids, n))
        for mask, (model, _, _) in models.items():
            for k in (1, 4):
                for recompute in (False, True):
                    name = f"{'recompute' if recompute else 'ours'} {mask} {k}img"
                    times.setdefault(name, []).append(run_flamingo(model, *inputs[k], n, recompute=recompute))
    tps = {name: n / statistics.median(ts) for name, ts in times.items()}
    text = tps["text-only (bare LM)"]
    ratios = {}
    for mask in models:
        for k in (1, 4):
            ratios[f"ours_vs_text_{mask}_{k}img"] = tps[f"ours {mask} {k}img"] / text
            ratios[f"ours_vs_recompute_{mask}_{k}img"] = tps[f"ours {mask} {k}img"] / tps[f"recompute {mask} {k}img"]

    # The library's whole generate() (prefill + sampling loop) for reference.
    config = GenerationConfig(max_new_tokens=n, stop_token_ids=(), temperature=0)

    class _Tok:  # generate() needs only an EOS id and decode() here
        eos_token_id = -1

        @staticmethod
        def decode(ids, skip_special_tokens=True):
            return ""

    start = time.perf_counter()
    generate(models["previous"][0], _Tok, [inputs[4][0][0].tolist()], images=[inputs[4][1][0, :, 0]], config=config)
    generate_s = time.perf_counter() - start

    print(
        f"decode {n} tokens, median of {args.repeats}; LM {lm_params / 1e6:.1f}M params, gated blocks "
        f"{block_params / 1e6:.1f}M (every {args.every_n} layers), 64 latents x 1024 per image, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'variant':<28}{'tokens/s':>10}{'vs text-only':>14}")
    for name, value in tps.items():
        print(f"{name:<28}{value:>10.1f}{value / text:>14.2f}")
    for mask in models:
        print(
            f"{mask}: ours vs recompute {ratios[f'ours_vs_recompute_{mask}_1img']:.2f}x (1 image), "
            f"{ratios[f'ours_vs_recompute_{mask}_4img']:.2f}x (4 images)"
        )
    print(f"generate() end to end (prefill + {n} tokens, 4 images, previous): {generate_s:.2f} s")
    print(
        json.dumps(
            {
                "bench": "generate",
                "new_tokens": n,
                "repeats": args.repeats,
                "lm_params": lm_params,
                "gated_block_params": block_params,
                "every_n_layers": args.every_n,
                "tokens_per_s": {k: round(v, 2) for k, v in tps.items()},
                "ratios": {k: round(v, 3) for k, v in ratios.items()},
                "generate_e2e_4img_s": round(generate_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
