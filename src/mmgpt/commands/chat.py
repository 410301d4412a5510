"""chat with a model in the terminal (streaming, multi-turn, images; scriptable through a pipe)

Type a message and press Enter. Commands: /image PATH (attach to the next message), /reset, /undo,
/regenerate, /prompt (show the exact prompt), /save FILE (the conversation as JSON), /quit.
When stdin is not a terminal, each line is a message or a command and only the answers are printed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from mmgpt.commands._options import add_quantize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="model directory (save_pretrained), tiny-world (the shipped pretrained tiny model) or tiny-random",
    )
    parser.add_argument("--image", action="append", default=[], metavar="FILE", help="attach to the first message")
    parser.add_argument("--adapter", default=None, metavar="PATH", help="a LoRA adapter (peft folder) to chat with")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's)")
    add_quantize(parser)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--context", type=int, default=None, help="context budget in tokens (default: the model's)")


def run(args: argparse.Namespace) -> int:
    from mmgpt.chat import ChatSession
    from mmgpt.generate import GenerationConfig
    from mmgpt.serve.loading import load_chat_model

    try:
        adapters = {"adapter": args.adapter} if args.adapter else {}
        chat_model = load_chat_model(
            args.model, adapters=adapters, device=args.device, dtype=args.dtype, quantize=args.quantize
        )
        config = GenerationConfig(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
        )
        session = ChatSession(chat_model, adapter="adapter" if args.adapter else None, context_budget=args.context)
        for image in args.image:
            session.add_image(image)
    except (ValueError, FileNotFoundError, ImportError) as error:  # ImportError: an extra (--quantize)
        print(f"error: {error}", file=sys.stderr)
        return 2
    return chat_loop(session, config, sys.stdin, sys.stdout, interactive=sys.stdin.isatty())


def chat_loop(session, config, lines: TextIO, out: TextIO, *, interactive: bool) -> int:
    """Read messages and commands from ``lines``; stream answers to ``out``. Returns the exit status."""
    from mmgpt.chat import ContextOverflowError
    from mmgpt.data.images import ImageError

    def say(text: str) -> None:
        print(text, file=out if interactive else sys.stderr, flush=True)

    if interactive:
        say(f"mmgpt chat with {session.chat_model.name}; /image PATH, /undo, /reset, /save FILE, /quit")
    status = 0
    while True:
        if interactive:
            print("\nYou: ", end="", file=out, flush=True)
        line = lines.readline()
        if not line:
            return status
        line = line.strip()
        if not line:
            continue
        command, _, argument = line.partition(" ")
        try:
            if command == "/quit":
                return status
            elif command == "/image":
                session.add_image(argument.strip())
                say(f"attached {argument.strip()} to the next message")
            elif command == "/reset":
                session.reset()
                say("conversation cleared")
            elif command == "/undo":
                say("removed the last exchange" if session.undo() else "nothing to undo")
            elif command == "/save":
                say(f"saved to {session.save(argument.strip())}")
            elif command == "/prompt":
                print(session.prompt_text(), file=out, flush=True)
            elif command == "/regenerate":
                _print_answer(session.regenerate(config), out, interactive)
            elif command.startswith("/"):
                say(
                    f"unknown command {command}; commands: /image PATH, /reset, /undo, /regenerate, /prompt, /save FILE"
                )
            else:
                stream = session.send(line, config=config)
                for notice in session.notices:
                    say(f"[{notice}]")
                session.notices.clear()
                _print_answer(stream, out, interactive)
        except (ImageError, ContextOverflowError, ValueError, OSError) as error:
            say(f"error: {error}")
            status = 1


def _print_answer(stream, out: TextIO, interactive: bool) -> None:
    if interactive:
        print("Assistant: ", end="", file=out, flush=True)
    for delta in stream:
        print(delta, end="", file=out, flush=True)
    print(file=out, flush=True)
