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

The end of the module streams safetensors files (our own format) tensor by tensor, for the same reason.
"""

from __future__ import annotations

import collections
import json
import pickle
import struct
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


# ---------------------------------------------------------------------------------------------------------------
# safetensors, one tensor at a time.
#
# ``safetensors.torch.save_file`` turns every tensor into bytes before writing (a second copy of the model), and
# ``load_file`` returns the whole state dict (a second copy while it is copied into the model). The format is
# simple (8-byte little-endian header length, a JSON header of dtype/shape/byte offsets, then the raw bytes), so
# we write and read it tensor by tensor: saving holds one tensor's bytes at a time, loading reads each tensor
# straight into the parameter's memory when dtype and device match (no page cache mapped, no temporary copy).
# Files are the standard format: safetensors' own ``safe_open`` / ``load_file`` read them (tested).

SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_TORCH_DTYPES = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def write_safetensors(state: dict[str, torch.Tensor], path: str | Path, *, metadata: dict[str, str]) -> None:
    """Write ``state`` as a .safetensors file, streaming one tensor at a time (no tensor may share storage)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, tensor in state.items():
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{key}: dtype {tensor.dtype} cannot be stored in safetensors")
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape)}
        header[key]["data_offsets"] = [offset, offset + size]
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for tensor in state.values():
            f.write(_raw_bytes(tensor))


def safetensors_header(path: str | Path) -> tuple[dict[str, dict[str, Any]], int]:
    """The tensor entries of a .safetensors file (name -> dtype, shape, data_offsets) and where the data starts."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", prefix)
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a safetensors file (its header is not JSON: {err})") from None
    header.pop("__metadata__", None)
    return header, 8 + length


def read_safetensors_into(path: str | Path, targets: dict[str, torch.Tensor], *, keys: list[str]) -> None:
    """Fill ``targets[key]`` (parameters or buffers, any dtype and device) from the file, one tensor at a time.

    Shapes must match (checked before anything is read); dtypes are converted, devices moved, by ``copy_``.
    """
    header, start = safetensors_header(path)
    wrong = [
        f"{k}: file {tuple(header[k]['shape'])} vs model {tuple(targets[k].shape)}"
        for k in keys
        if tuple(header[k]["shape"]) != tuple(targets[k].shape)
    ]
    if wrong:
        raise ValueError(f"{path}: {len(wrong)} tensors have the wrong shape: {wrong[:8]}")
    with open(path, "rb", buffering=0) as f, torch.no_grad():
        for key in keys:
            entry, target = header[key], targets[key]
            dtype = _TORCH_DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            direct = target.dtype == dtype and target.device.type == "cpu" and target.is_contiguous()
            buffer = target if direct else torch.empty(tuple(entry["shape"]), dtype=dtype)
            if end > begin:
                f.seek(start + begin)
                view = memoryview(buffer.detach().reshape(-1).view(torch.uint8).numpy())
                while view.nbytes:
                    n = f.readinto(view)
                    if not n:
                        raise ValueError(f"{path} is truncated: {key} ends past the end of the file")
                    view = view[n:]
            if not direct:
                target.copy_(buffer)
