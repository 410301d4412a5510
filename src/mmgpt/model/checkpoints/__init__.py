"""Weights on disk: our own self-contained format, and strict loaders of each released layout.

``ours`` (save_pretrained / load_pretrained), ``openflamingo`` (``checkpoint.pt``), ``multimodal_gpt_lora`` (the
released LoRA), with ``keys`` (reading files, mapping keys, reports) and ``torch_files`` (the restricted unpickler,
safetensors without copies) underneath.
"""

from mmgpt.model.checkpoints.keys import LoadReport
from mmgpt.model.checkpoints.multimodal_gpt_lora import load_multimodal_gpt_lora
from mmgpt.model.checkpoints.openflamingo import load_openflamingo_checkpoint
from mmgpt.model.checkpoints.ours import CONFIG_FILE, load_pretrained, save_pretrained

__all__ = [
    "CONFIG_FILE",
    "LoadReport",
    "load_multimodal_gpt_lora",
    "load_openflamingo_checkpoint",
    "load_pretrained",
    "save_pretrained",
]
