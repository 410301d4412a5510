"""mmgpt: MultiModal-GPT (OpenFlamingo + LoRA instruction tuning) for multi-turn vision-language dialogue."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

# peft imports bitsandbytes whenever it is installed (the quant extra); on a CPU with AVX-512 BF16 its CPU backend
# then warns, at every import, that an optional kernel from the Hugging Face hub is missing. Nothing to act on.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
__all__ = ["load"]

if TYPE_CHECKING:
    from mmgpt.load import load


def __getattr__(name: str) -> Any:
    # `import mmgpt` stays instant (the CLI's --help, data tools): torch and transformers load on first use.
    if name == "load":
        from mmgpt.load import load

        globals()["load"] = load  # importing the submodule mmgpt.load set this attribute to the module
        return load
    raise AttributeError(f"module 'mmgpt' has no attribute {name!r}")
