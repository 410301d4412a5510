"""merge a LoRA into its base and save one self-contained model directory

The directory (model.safetensors, mmgpt.yaml with the architecture and the media-mask behaviour, tokenizer/) is
what `mmgpt.load(PATH)` and every verb accept; the LM, CLIP and checkpoint files are no longer needed. Example:

    mmgpt export multimodal-gpt --lm llama-7b-hf --clip clip-vit-large-patch14 \\
        --checkpoint OpenFlamingo-9B/checkpoint.pt --lora mmgpt_lora_v0_with_demo.pt --dtype bfloat16 --out mmgpt-9b
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "source", help="a model preset (multimodal-gpt, openflamingo-9b-v1, ...), its YAML, or a saved dir"
    )
    parser.add_argument("--out", required=True, help="the directory to write (created; must not hold a model yet)")
    parser.add_argument("--lm", help="the language model's HF directory")
    parser.add_argument("--clip", help="the CLIP (ViT-L/14) HF directory")
    parser.add_argument("--checkpoint", help="OpenFlamingo's checkpoint.pt")
    parser.add_argument("--lora", help="MultiModal-GPT's LoRA .pt or a peft adapter directory; merged into the weights")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the LM's)")
    parser.add_argument("--eva", help="MiniGPT-4: eva_vit_g.pth")
    parser.add_argument("--qformer", help="MiniGPT-4: blip2_pretrained_flant5xxl.pth")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="dtype of the saved weights")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import mmgpt
    from mmgpt.model.checkpoints import CONFIG_FILE, save_pretrained

    out = Path(args.out)
    if (out / CONFIG_FILE).exists():
        print(f"error: {out} already holds a model ({CONFIG_FILE}); choose another --out or remove it")
        return 2
    try:
        model, tokenizer = mmgpt.load(
            args.source,
            lm=args.lm,
            clip=args.clip,
            checkpoint=args.checkpoint,
            eva=args.eva,
            qformer=args.qformer,
            lora=args.lora,
            tokenizer=args.tokenizer,
            dtype=args.dtype,
            merge_lora=True,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}")
        return 2
    save_pretrained(model, tokenizer, out)
    size = sum(p.numel() for p in model.parameters())
    print(f"saved {size:,} parameters ({model.config.dtype}) to {out}; load it with mmgpt.load({str(out)!r})")
    return 0
