"""Training-step speed and memory: LoRA (MultiModal-GPT) versus full fine-tuning, with and without gradient
checkpointing, on a small Flamingo (~58M LM parameters: LLaMA-style, width 512, 8 layers, vocabulary 32003,
a gated block every 4 layers, a 2-layer ViT at 224 px) on this machine's CPU, fp32.

Each variant runs in its own process (so its peak RSS is its own) through the real ``Trainer.train_step``:
micro-batches of one vision-language and one language-only batch (``--batch`` samples of ``--tokens``
tokens each, one image per vision-language sample), ``--steps`` timed optimiser steps after one warm-up step.
The FLOPs of one step are counted by ``torch.utils.flop_counter`` (the matmuls actually run, forward and
backward), and the achieved FLOP/s is reported as a fraction of this machine's measured fp32 matmul FLOP/s
(a large square ``torch.mm`` on the same threads): the physical limit here.

    python bench/train.py [--batch 2] [--tokens 128] [--steps 3] [--threads 1]

Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace

import torch

from sizes import SMALL_LLAMA  # bench/ is on sys.path when a benchmark runs

VOCAB = 32000
VARIANTS = {  # name: (trainable, gradient checkpointing)
    "lora": ("lora", False),
    "lora+checkpointing": ("lora", True),
    "full": ("full", False),
    "full+checkpointing": ("full", True),
}


def build_model():
    from mmgpt.config import CrossAttentionConfig, LanguageModelConfig, ModelConfig, PerceiverConfig, VisionConfig
    from mmgpt.model.build import build_language_model, build_vision_encoder
    from mmgpt.model.flamingo import build_flamingo
    from mmgpt.tokens import SpecialTokenIds

    cfg = ModelConfig(
        vision=VisionConfig(image_size=224, patch_size=14, width=256, layers=2, heads=4, mlp_dim=1024),
        perceiver=PerceiverConfig(depth=2, num_latents=64, heads=4),
        cross_attention=CrossAttentionConfig(every_n_layers=4),
        lm=LanguageModelConfig(hf_config={**SMALL_LLAMA, "vocab_size": VOCAB}),
    )
    torch.manual_seed(0)
    special = SpecialTokenIds(end_of_chunk=VOCAB, image=VOCAB + 1, pad=VOCAB + 2, eos=2, bos=1)
    model = build_flamingo(
        cfg=cfg,
        vision_encoder=build_vision_encoder(cfg.vision),
        lang_encoder=build_language_model(cfg.lm),
        special=special,
        vocab_size=VOCAB + 3,
    )
    return model, special


def make_batches(special, batch: int, tokens: int):
    """One fixed PairedBatch, repeated: vision-language rows start with an image; the second half is trained."""
    from mmgpt.data.collate import Batch
    from mmgpt.data.loader import PairedBatch
    from mmgpt.tokens import IGNORE_INDEX

    gen = torch.Generator().manual_seed(0)

    def rows(with_image: bool) -> Batch:
        ids = torch.randint(3, VOCAB, (batch, tokens), generator=gen)
        ids[:, 0] = special.bos
        if with_image:
            ids[:, 1] = special.image
        labels = ids.clone()
        labels[:, : tokens // 2] = IGNORE_INDEX
        media = torch.randn(batch, 1, 1, 3, 224, 224, generator=gen) if with_image else None
        counts = torch.full((batch,), int(with_image))
        return Batch(ids, torch.ones_like(ids), labels, media, counts)

    paired = PairedBatch(rows(True), rows(False), step=0, state={})

    class Fixed:
        steps_per_epoch = 10**6

        def __iter__(self):
            while True:
                yield paired

        def state_dict(self):
            return {}

    return Fixed()


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def run_variant(name: str, args: argparse.Namespace) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from mmgpt.data.config import DataConfig
    from mmgpt.train.config import LoggingConfig, OptimizerConfig, TrainConfig
    from mmgpt.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    trainable, checkpointing = VARIANTS[name]
    model, special = build_model()
    cfg = TrainConfig(
        model="(bench)",
        data=DataConfig(),
        run_dir="/tmp/mmgpt-bench-train",
        trainable=trainable,
        gradient_checkpointing=checkpointing,
        max_steps=10**6,
        optimizer=replace(OptimizerConfig(), lr=1e-4, warmup_steps=0),
        logging=LoggingConfig(progress=False),
    )
    batches = make_batches(special, args.batch, args.tokens)
    trainer = Trainer(cfg, model, tokenizer=None, batches=batches)
    model.train()
    stream = iter(trainer.batches)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(stream)  # also the warm-up step
    flops = counter.get_total_flops()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        trainer.train_step(stream)
        times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]
    peak = matmul_flops_per_s()  # measured beside the steps, under the same load
    return {
        "matmul_peak_flops_per_s": peak,
        "fraction_of_matmul_peak": flops / step_s / peak,
        "variant": name,
        "trainable_params": trainer.trainable["total"],
        "total_params": sum(p.numel() for p in model.parameters()),
        "step_s": step_s,
        "samples_per_s": 2 * args.batch / step_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flops_per_step": flops,
        "achieved_flops_per_s": flops / step_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", choices=list(VARIANTS), help="(internal) run one variant and print its JSON")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    results = []
    for name in VARIANTS:
        command = [sys.executable, __file__, "--variant", name]
        command += ["--batch", str(args.batch), "--tokens", str(args.tokens), "--steps", str(args.steps)]
        command += ["--threads", str(args.threads)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    lora = results[0]
    print(f"fp32, {args.threads} thread(s); 'of peak': achieved FLOP/s / a 2048^3 torch.mm's, measured in each run")
    print(f"micro-step: {args.batch} vision-language + {args.batch} language-only samples x {args.tokens} tokens")
    header = (
        f"{'variant':<20} {'trainable':>11} {'step s':>7} {'samples/s':>9} {'RSS MB':>7} {'GFLOP/s':>8} {'of peak':>7}"
    )
    print(header)
    for r in results:
        print(
            f"{r['variant']:<20} {r['trainable_params']:>11,} {r['step_s']:>7.2f} {r['samples_per_s']:>9.2f} "
            f"{r['peak_rss_mb']:>7.0f} {r['achieved_flops_per_s'] / 1e9:>8.1f} "
            f"{r['matmul_peak_flops_per_s'] / 1e9:>6.1f} {r['fraction_of_matmul_peak']:>7.0%}"
        )
    summary = {
        "threads": args.threads,
        "batch": args.batch,
        "tokens": args.tokens,
        "variants": results,
        "lora_fraction_of_peak": lora["fraction_of_matmul_peak"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
