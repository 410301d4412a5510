"""MiniGPT-4's released files -> state dicts keyed for our modules, with explicit key maps (prefix-systems.md B, C).

Three files besides the Vicuna directory, each read without executing code (``read_torch_file``):

``eva_vit_g.pth`` (LAVIS) -> ``EvaVisionEncoder`` without ``ln_vision``. A raw state dict with unprefixed keys and
40 blocks; BLIP-2 and MiniGPT-4 build 39 and load with ``strict=False``, so the last block is never used - we
name its keys in ``report.ignored``. Map (transformers' ``convert_blip_2_original_to_pytorch.py``)::

    cls_token                 -> model.embeddings.class_embedding        [1, 1, d]
    pos_embed                 -> model.embeddings.position_embedding     [1, 257, d]
    patch_embed.proj.*        -> model.embeddings.patch_embedding.*
    blocks.i.norm1.* / norm2.*-> model.encoder.layers.i.layer_norm1.* / layer_norm2.*
    blocks.i.attn.qkv.weight  -> model.encoder.layers.i.self_attn.qkv.weight
    blocks.i.attn.q_bias, v_bias -> model.encoder.layers.i.self_attn.qkv.bias = cat(q_bias, zeros, v_bias)
    blocks.i.attn.proj.*      -> model.encoder.layers.i.self_attn.projection.*
    blocks.i.mlp.fc1.* / fc2.*-> model.encoder.layers.i.mlp.fc1.* / fc2.*

``blip2_pretrained_flant5xxl.pth`` (LAVIS runner layout ``{"model": {...}, "optimizer", "config", "scaler",
"epoch"}``; ``model`` holds what BLIP-2 stage 2 trained plus buffers) -> ``ln_vision`` and ``QFormerResampler``::

    ln_vision.*                                  -> (ln_vision) weight, bias
    query_tokens                                 -> query_tokens                        [1, q, 768]
    Qformer.bert.embeddings.LayerNorm.*          -> qformer.layernorm.*
    Qformer.bert.encoder.layer.i.X               -> qformer.encoder.layer.i.X with
        attention.self.{query,key,value}          -> attention.attention.{query,key,value}
        crossattention.self.{query,key,value}     -> crossattention.attention.{query,key,value}   (even i)
        {attention,crossattention}.output.{dense,LayerNorm}, intermediate_query.dense,
        output_query.{dense,LayerNorm}            -> unchanged

Skipped and named in ``report.ignored``: ``t5_proj.*`` (BLIP-2's projection into FlanT5), the
``Qformer.bert.embeddings.position_ids`` buffer (the LAVIS runner saves buffers with the trained parameters), and
the Q-Former text parts MiniGPT-4 deletes before loading (``embeddings.word_embeddings`` /
``position_embeddings``, each layer's text FFN ``intermediate`` / ``output``, ``Qformer.cls``): the released file
should not hold them (BLIP-2 stage 2 deletes them too), and if a file does they are never used. Errors: any other
key, in particular ``visual_encoder.*`` (a full model dump), ``opt_proj`` / ``llm_proj`` (a BLIP-2 file made for
another LM) and ``vision_proj`` / ``text_proj`` / ``itm_head`` / ``temp`` (stage-1 ``blip2_pretrained.pth``): their
Q-Former weights are not the ones MiniGPT-4 was trained on.

``pretrained_minigpt4*.pth`` (same runner layout) -> ``llama_proj``: ``model`` holds only ``llama_proj.weight``
[H, 768 or 5632] and ``llama_proj.bias`` [H]. ``describe_projection`` tells the release from the shape.

Every reader is strict: a key it does not understand is an error listing it. Tensors keep the file's dtype (the
releases are partly fp16); ``load_into`` copies them into a module of any dtype.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmgpt.model.checkpoints.keys import LoadReport, map_keys
from mmgpt.model.checkpoints.torch_files import read_torch_file

EVA_LAYERS = 39
_EVA_TOP = {
    "cls_token": "model.embeddings.class_embedding",
    "pos_embed": "model.embeddings.position_embedding",
    "patch_embed.proj.weight": "model.embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "model.embeddings.patch_embedding.bias",
}
_EVA_BLOCK = {  # q_bias / v_bias get temporary names and are fused into qkv.bias below
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.q_bias": "self_attn.q_bias",
    "attn.v_bias": "self_attn.v_bias",
    "attn.proj.weight": "self_attn.projection.weight",
    "attn.proj.bias": "self_attn.projection.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_EVA_HEADS = re.compile(r"^(norm|fc_norm|head)\.(weight|bias)$")  # EVA-CLIP tower ends BLIP-2 never builds

_QFORMER_LAYER = re.compile(
    r"^Qformer\.bert\.encoder\.layer\.(\d+)\."
    r"((?:attention|crossattention)\.(?:self\.(?:query|key|value)|output\.(?:dense|LayerNorm))"
    r"|intermediate_query\.dense|output_query\.(?:dense|LayerNorm))\.(weight|bias)$"
)
_QFORMER_UNUSED = re.compile(
    r"^t5_proj\.|^Qformer\.bert\.embeddings\.(position_ids$|word_embeddings\.|position_embeddings\.)"
    r"|^Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.|^Qformer\.cls\."
)

# llama_proj shape [H, d] -> the release it comes from (prefix-systems.md B).
PROJECTION_RELEASES = {
    (4096, 768): "MiniGPT-4 v1 for Vicuna-7B v0 (prerained_minigpt4_7b.pth)",
    (5120, 768): "MiniGPT-4 v1 for Vicuna-13B v0 (pretrained_minigpt4.pth)",
    (4096, 5632): "MiniGPT-4 for LLaMA-2-7B-chat, no Q-Former (pretrained_minigpt4_llama2_7b.pth)",
}


def read_eva_vit_g(path: str | Path, *, layers: int = EVA_LAYERS) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """``eva_vit_g.pth`` -> (state for ``EvaVisionEncoder`` without ``model.post_layernorm.*``, report).

    Blocks ``layers`` and above (the file's 40th block for the released 39) are not used: BLIP-2 takes the
    penultimate block's output. Their keys, and EVA-CLIP's ``norm`` / ``fc_norm`` / ``head`` should a file hold
    them, are listed in ``report.ignored``. A missing block, a wrapped file (``{"model": ...}``, a
    ``visual_encoder.`` prefix) or any other unknown key is an error: no such files of this ViT are known.
    """
    source = str(path)
    state = _tensor_dict(read_torch_file(path), source, expected="LAVIS' eva_vit_g.pth (cls_token, blocks.N...)")

    def mapper(key: str) -> str | None:
        if key in _EVA_TOP:
            return _EVA_TOP[key]
        match = _BLOCK_KEY.match(key)
        if match and int(match[1]) < layers and match[2] in _EVA_BLOCK:
            return f"model.encoder.layers.{match[1]}.{_EVA_BLOCK[match[2]]}"
        return None

    mapped, _, rejected, _ = map_keys(state, mapper, source)
    unused = [k for k in rejected if _EVA_HEADS.match(k) or ((m := _BLOCK_KEY.match(k)) and int(m[1]) >= layers)]
    unknown = sorted(set(rejected) - set(unused))
    required = set(_EVA_TOP) | {f"blocks.{i}.{part}" for i in range(layers) for part in _EVA_BLOCK}
    missing = sorted(required - set(state))  # named as in the file
    if unknown or missing:
        raise ValueError(
            f"{source} is not the EVA ViT-g file BLIP-2 / MiniGPT-4 load (eva_vit_g.pth: unprefixed keys cls_token, "
            f"pos_embed, patch_embed.proj.*, blocks.N.{{norm1,attn,norm2,mlp}}.*): {len(unknown)} unknown keys "
            f"{unknown[:8]}, {len(missing)} missing {missing[:8]}.{_layout_hint(unknown)} With "
            f"layers={layers} the file must hold blocks 0..{layers - 1}."
        )
    for i in range(layers):
        prefix = f"model.encoder.layers.{i}.self_attn."
        q, v = mapped.pop(prefix + "q_bias"), mapped.pop(prefix + "v_bias")
        mapped[prefix + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])  # the k bias is fixed at zero
    return mapped, LoadReport(source=source, loaded=sorted(mapped), ignored=sorted(unused))


def read_blip2_qformer(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], LoadReport]:
    """``blip2_pretrained_flant5xxl.pth`` -> (``ln_vision`` state {weight, bias}, ``QFormerResampler`` state, report).

    ``report.loaded`` names the resampler keys and ``ln_vision.weight`` / ``ln_vision.bias``; ``report.ignored``
    the skipped keys of ``["model"]`` (module docstring) and the entries beside it (``optimizer``, ``config``, ...).
    """
    source = str(path)
    weights, beside = _runner_checkpoint(read_torch_file(path), source, expected="blip2_pretrained_flant5xxl.pth")
    ln_vision, resampler, ignored, unknown = {}, {}, [], []
    for key, value in weights.items():
        if key in ("ln_vision.weight", "ln_vision.bias"):
            ln_vision[key.split(".")[1]] = value
        elif key == "query_tokens":
            resampler[key] = value
        elif key.startswith("Qformer.bert.embeddings.LayerNorm."):
            resampler["qformer.layernorm." + key.rsplit(".", 1)[1]] = value
        elif match := _QFORMER_LAYER.match(key):
            part = match[2].replace("attention.self.", "attention.attention.")
            resampler[f"qformer.encoder.layer.{match[1]}.{part}.{match[3]}"] = value
        elif _QFORMER_UNUSED.search(key):
            ignored.append(key)
        else:
            unknown.append(key)
    needed = ["query_tokens", "qformer.layernorm.weight", "qformer.layernorm.bias"]
    missing = [f"ln_vision.{k}" for k in ("weight", "bias") if k not in ln_vision]
    missing += [k for k in needed if k not in resampler]
    if unknown or missing:
        raise ValueError(
            f"{source}['model'] is not BLIP-2's FlanT5-XXL Q-Former file (blip2_pretrained_flant5xxl.pth, the one "
            f"MiniGPT-4 v1 loads): {len(unknown)} unknown keys {sorted(unknown)[:8]}, missing {missing}."
            f"{_layout_hint(unknown)}"
        )
    loaded = [*sorted(resampler), "ln_vision.bias", "ln_vision.weight"]
    return ln_vision, resampler, LoadReport(source=source, loaded=loaded, ignored=sorted(ignored) + beside)


def read_minigpt4_projection(path: str | Path) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """``pretrained_minigpt4*.pth`` -> (``llama_proj`` state {weight [H, d], bias [H]}, report).

    ``report.ignored`` names the training entries beside ``["model"]`` (``optimizer``, ``config``, ``scaler``,
    ``epoch``). Anything in ``["model"]`` besides ``llama_proj.weight`` / ``llama_proj.bias`` is an error."""
    source = str(path)
    weights, beside = _runner_checkpoint(read_torch_file(path), source, expected="pretrained_minigpt4*.pth")
    names = {"llama_proj.weight": "weight", "llama_proj.bias": "bias"}
    unknown = sorted(set(weights) - set(names))
    missing = sorted(set(names) - set(weights))
    if unknown or missing:
        hint = " It also holds LM weights (LoRA?): MiniGPT-4 v1 trains llama_proj only." if unknown else ""
        raise ValueError(
            f"{source}['model'] should hold exactly llama_proj.weight and llama_proj.bias (a MiniGPT-4 release: only "
            f"the trained projection is saved); unknown keys {unknown[:8]}, missing {missing}.{hint}"
        )
    state = {names[k]: v for k, v in weights.items()}
    weight, bias = state["weight"], state["bias"]
    if weight.dim() != 2 or bias.shape != weight.shape[:1]:
        raise ValueError(
            f"{source}: llama_proj.weight {tuple(weight.shape)} and llama_proj.bias {tuple(bias.shape)} do not form "
            "a Linear layer [H, d] + [H]; the file is damaged or not a MiniGPT-4 checkpoint"
        )
    return state, LoadReport(source=source, loaded=["bias", "weight"], ignored=beside)


def describe_projection(shape: Iterable[int]) -> str:
    """A ``llama_proj.weight`` shape [H, d] -> which release it is from, or a plain description."""
    shape = tuple(shape)
    known = PROJECTION_RELEASES.get(shape)
    return known or f"an unknown release (llama_proj {list(shape)}: a {shape[0]}-wide LM, {shape[1]}-wide features)"


def check_projection(state: dict[str, torch.Tensor], *, lm_width: int, image_width: int, source: str) -> None:
    """Raise if the projection does not map ``image_width`` resampler outputs to a ``lm_width``-wide LM."""
    rows, columns = state["weight"].shape
    release = describe_projection((rows, columns))
    if rows != lm_width:
        raise ValueError(
            f"{source}: this projection is for a {rows}-wide LM ({release}) but lm= is {lm_width} wide; use the "
            f"MiniGPT-4 checkpoint made for this LM (7B: 4096, 13B: 5120) or the LM this checkpoint was made for"
        )
    if columns != image_width:
        raise ValueError(
            f"{source}: this projection takes {columns}-wide image features ({release}) but the resampler gives "
            f"{image_width}; 768 = the Q-Former (v1 releases), 5632 = 4 concatenated EVA patches (LLaMA-2 release)"
        )


def load_into(module: nn.Module, state: dict[str, torch.Tensor], *, source: str, skip: Iterable[str] = ()) -> None:
    """Copy ``state`` into ``module`` (any dtype and device): every key of the module must be given, except those
    under a ``skip`` prefix (e.g. ``model.post_layernorm``, which comes from another file); extra keys and wrong
    shapes are errors naming ``source``."""
    skip = tuple(skip)
    targets = module.state_dict()
    missing = sorted(k for k in targets if k not in state and not any(k == s or k.startswith(s + ".") for s in skip))
    unexpected = sorted(k for k in state if k not in targets)
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(targets[k].shape)}"
        for k, v in state.items()
        if k in targets and v.shape != targets[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not fit {type(module).__name__}: {len(missing)} missing {missing[:8]}, {len(unexpected)} "
            f"unexpected {unexpected[:8]}, {len(wrong)} wrong shapes {wrong[:8]}; check that the model numbers "
            "(layers, widths, heads, queries, image size) match the checkpoint's"
        )
    with torch.no_grad():
        for key, value in state.items():
            targets[key].copy_(value)


def _tensor_dict(obj: Any, source: str, *, expected: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict; expected {expected}")
    if isinstance(obj.get("model"), dict):
        raise ValueError(
            f"{source} is a training checkpoint ({{'model': ..., {sorted(k for k in obj if k != 'model')}}}), not "
            f"{expected}, which is a raw state dict"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{source}: entries {bad[:8]} are not tensors; expected {expected}")
    return dict(obj)


def _runner_checkpoint(obj: Any, source: str, *, expected: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """LAVIS / MiniGPT-4 runner files: ``{"model": state, "optimizer": ..., ...}`` -> (state, names beside it)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{source} is not a LAVIS/MiniGPT-4 checkpoint ({expected}: {{'model': {{...}}, 'optimizer': ..., "
            f"...}}); it holds {keys}"
        )
    weights = obj["model"]
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{source}['model']: entries {bad[:8]} are not tensors; expected {expected}")
    return weights, sorted(k for k in obj if k != "model")


def _layout_hint(keys: list[str]) -> str:
    """A sentence saying which other file the unknown keys look like, or ''."""
    if any(k.startswith("visual_encoder.") for k in keys):
        return " The keys carry 'visual_encoder.': a full BLIP-2/MiniGPT-4 model dump, not a released file."
    if any(k.startswith(("embeddings.", "encoder.layers.", "post_layernorm.")) for k in keys):
        return " The keys are transformers' Blip2VisionModel names (a converted file); use LAVIS' eva_vit_g.pth."
    if any(k.startswith(("opt_proj.", "llm_proj.")) for k in keys):
        return " opt_proj / llm_proj: a BLIP-2 file made for another LM; MiniGPT-4 uses the FlanT5-XXL one."
    if any(k.startswith(("vision_proj.", "text_proj.", "itm_head.")) or k == "temp" for k in keys):
        return " vision_proj / text_proj / itm_head: BLIP-2 stage 1 (blip2_pretrained.pth), not the FlanT5-XXL file."
    return ""
