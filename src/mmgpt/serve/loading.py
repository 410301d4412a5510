"""``--model PATH_OR_PRESET`` for ``mmgpt chat`` and ``mmgpt serve``: the model, its adapters, one ChatModel.

``load_model`` is the one place that turns the argument into a model: ``tiny-random`` builds the randomly
initialised tiny model of ``mmgpt.tiny_random`` (the commands run without weights); anything else goes to
:func:`mmgpt.load.load` (a directory saved by mmgpt or ``mmgpt export``, or a preset).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from transformers import PreTrainedTokenizerBase

from mmgpt.chat import ChatModel
from mmgpt.data.images import DEFAULT_MAX_PIXELS
from mmgpt.model.contract import VisionLanguageModel
from mmgpt.model.lora import load_named_adapter

TINY_RANDOM = "tiny-random"
T = TypeVar("T")


def load_model(
    spec: str, *, device: str = "cpu", dtype: str | None = None, quantize: str | None = None
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    if spec == TINY_RANDOM:
        from mmgpt.config import DTYPES, dtype_name
        from mmgpt.model.quantize import quantize_language_model
        from mmgpt.tiny_random import tiny_random_model

        model, tokenizer = tiny_random_model(0)
        dtype = dtype_name(dtype)
        model.to(dtype=DTYPES[dtype] if dtype else None)
        if quantize is not None:
            quantize_language_model(model, quantize, device=device)
        return model.to(device=device).eval(), tokenizer
    from mmgpt.load import load

    return load(spec, dtype=dtype, device=device, quantize=quantize)


def parse_adapters(specs: Sequence[str]) -> dict[str, str]:
    """``NAME=PATH`` arguments -> {name: path}; a bare PATH is named after its folder."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
        if not name or not path or name in adapters:
            raise ValueError(f"--adapter {spec!r}: give NAME=PATH with a new name for each adapter")
        adapters[name] = path
    return adapters


def parse_models(specs: Sequence[str]) -> list[tuple[str | None, str]]:
    """``--model [NAME=]MODEL`` arguments -> [(name or None, model)]: ``NAME=`` names a served model (default: the
    directory's name), e.g. to serve two directories that share one."""
    models = []
    for spec in specs:
        name, sep, model = spec.partition("=")
        if not sep or "/" in name or "\\" in name:  # no name given (an '=' inside a path is part of the path)
            name, model = None, spec
        if name == "" or not model:
            raise ValueError(f"--model {spec!r}: give MODEL or NAME=MODEL")
        models.append((name, model))
    return models


def load_chat_model(
    spec: str,
    *,
    name: str | None = None,
    adapters: dict[str, str] | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    quantize: str | None = None,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
) -> ChatModel:
    """The model of ``spec`` (called ``name``, default the directory's name; its language model quantized with
    ``quantize``) with each named adapter loaded beside the others over the shared base."""
    model, tokenizer = load_model(spec, device=device, dtype=dtype, quantize=quantize)
    for adapter, path in (adapters or {}).items():
        load_named_adapter(model, path, adapter)
    base_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())  # not a quantized weight's
    model.to(device=device, dtype=base_dtype)  # adapters join the base's device and dtype
    name = name or (TINY_RANDOM if spec == TINY_RANDOM else Path(spec).name)
    return ChatModel.wrap(model, tokenizer, name=name, max_image_pixels=max_image_pixels)


def on_a_passing_thread(fn: Callable[[], T]) -> T:
    """``fn()`` - loading the models a server will serve - on a thread that ends when it returns; its result, or its
    error.

    On a CPU, PyTorch's OpenMP runtime (libgomp) keeps a pool of worker threads for every thread that ran a parallel
    operation, for as long as that thread lives; once the pools' threads outnumber the cores, it cuts how long idle
    workers spin, so every operation pays to wake them. Models loaded on the main thread left its pool behind, and
    each decode step of the batching scheduler (a thread of its own) ran 2.3x slower on 2 cores (one row of the
    benchmark model: 12.8 against 5.5 ms). A passing thread's pool ends with it.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as error:  # re-raised on the caller's thread
            box["error"] = error

    thread = threading.Thread(target=run, name="mmgpt-load", daemon=True)  # Ctrl-C while loading ends the process
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
