"""mmgpt: MultiModal-GPT (OpenFlamingo + LoRA instruction tuning) for multi-turn vision-language dialogue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
