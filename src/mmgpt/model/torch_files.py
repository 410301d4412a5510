"""Reading ``.pt`` checkpoints without executing code from the file.

A pickle can name any importable callable and call it while loading (``os.system``). We first use torch's own
``weights_only`` loader (tensors and plain containers only). Training checkpoints also hold pickled objects of the
training script's classes (MultiModal-GPT's ``tuning_config``), which ``weights_only`` refuses; for those we read
again with a restricted unpickler that imports nothing outside a short allowlist:

- tensor rebuild functions, ``collections.OrderedDict``, ``torch.Size``/dtypes, and harmless builtins (set, ...);
- any other global from the standard library, torch, numpy or this project is refused with an error naming it
  (that is where the callables of a malicious pickle live: os, subprocess, builtins.eval, ...);
- any other global (a class of the training script, e.g. ``mmengine.config.Config``) is never imported: it
  becomes an :class:`InertObject` that records its name and pickled state and has no behaviour.

Inert objects are tolerated only beside the weights (``{"model_state_dict": ..., "tuning_config": <inert>}``);
anywhere inside the weights they are an error. Zip-format files are memory-mapped, so a multi-GB checkpoint is
not copied into memory before the weights are copied into the model.
"""

from __future__ import annotations

import collections
import pickle
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

# (module, name) pairs the restricted unpickler may resolve to the real object.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("_codecs", "encode"): __import__("_codecs").encode,  # how protocol 2 pickles bytes
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
}
_REFUSED_PACKAGES = set(sys.stdlib_module_names) | {"torch", "numpy", "mmgpt", "transformers", "peft", "safetensors"}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file asks to run code (or build objects) that a checkpoint never needs; nothing was executed."""


class InertObject(dict):
    """Stands in for an object of an unknown class: keeps the class name, constructor args and pickled state.

    A dict subclass so that pickled dict subclasses (config dicts) fill it; it never runs code of the original class.
    """

    pickled_class = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.setdefault("_items", []).append(item)

    def extend(self, items: Any) -> None:
        self.setdefault("_items", []).extend(items)

    def __repr__(self) -> str:
        return f"<inert {self.pickled_class}>"

    def __reduce__(self):  # never pickled again as if it were the original
        raise TypeError(f"an inert placeholder for {self.pickled_class} cannot be pickled")


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.split(".")[0] in _REFUSED_PACKAGES:
            raise UnsafeCheckpointError(
                f"the pickle asks for {module}.{name}, which no checkpoint needs (a pickle that names it can run "
                "code); refusing to load it - nothing was executed"
            )
        return type(name, (InertObject,), {"pickled_class": f"{module}.{name}", "__module__": "mmgpt.inert"})


def _restricted_module() -> types.ModuleType:
    module = types.ModuleType("mmgpt_restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    module.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()
    module.UnpicklingError = pickle.UnpicklingError
    return module


def read_torch_file(path: str | Path) -> Any:
    """Load a ``torch.save`` file onto the CPU without executing code from it (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    mmap = zipfile.is_zipfile(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            obj = torch.load(
                path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_restricted_module()
            )
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise ValueError(f"{path} is not a PyTorch checkpoint (torch.save file) this loader can read: {err}") from err
    _check_no_inert_weights(obj, path)
    return obj


def _check_no_inert_weights(obj: Any, path: Path) -> None:
    if isinstance(obj, InertObject):
        raise UnsafeCheckpointError(f"{path} holds a pickled {obj.pickled_class} object, not a state dict")
    if not isinstance(obj, dict):
        return
    weights = obj.get("model_state_dict", obj)
    values = weights.values() if isinstance(weights, dict) else [weights]
    bad = [repr(v) for v in values if isinstance(v, InertObject)]
    if isinstance(weights, InertObject) or bad:
        raise UnsafeCheckpointError(f"{path}: the weights hold pickled objects of unknown classes {bad[:3]}")
