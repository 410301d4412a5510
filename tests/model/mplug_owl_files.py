"""A tiny mPLUG-Owl v1 release, written in the exact layout of ``MAGAer13/mplug-owl-llama-7b`` (prefix-systems.md
A2, B), and independent references of its ViT and abstractor written from the fact sheet, for the loading tests.

The directory: ``config.json`` as transformers 4.28.1 saved it (``model_type "mplug-owl"``, nested configs, a 4.28
LLaMA ``text_config`` with its generation fields), two fp16 shards ``pytorch_model-0000k-of-00002.bin`` and
``pytorch_model.bin.index.json`` (weight_map + metadata.total_size), the LLaMA ``rotary_emb.inv_freq`` buffers,
the ViT's fused per-head-interleaved ``query_key_value``. Users' LoRA adapters as mPLUG-Owl's train.py + peft
saved them: ``adapter_config.json`` (target_modules a regex over the whole model) + ``adapter_model.bin``.

Legend: N images, p tokens, q queries, d width.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, LlamaForCausalLM

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=24)
VISION |= dict(patch_size=8, layer_norm_eps=1e-6, hidden_act="quick_gelu", num_channels=3, projection_dim=768)
ABSTRACTOR = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
ABSTRACTOR |= dict(encoder_hidden_size=32, layer_norm_eps=1e-6, attention_probs_dropout_prob=0.1)
QUERIES = 6
# A LLaMA text_config as transformers 4.28.1's to_dict wrote it (generation fields and all).
TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=300)
TEXT |= dict(model_type="llama", hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=2048)
TEXT |= dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, use_cache=True)
TEXT |= dict(architectures=None, do_sample=False, max_length=20, num_beams=1, top_k=50, top_p=1.0, temperature=1.0)
TEXT |= dict(torch_dtype="float16", transformers_version="4.28.1", initializer_range=0.02, _name_or_path="")
LLAMA_7B = dict(TEXT, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32)
LLAMA_7B |= dict(vocab_size=32000)


def release_config(*, vision=VISION, abstractor=ABSTRACTOR, text=TEXT, queries=QUERIES) -> dict:
    """config.json of a release; the defaults are the tiny one."""
    return {
        "architectures": ["MplugOwlForConditionalGeneration"],
        "model_type": "mplug-owl",
        "num_query_tokens": queries,
        "vision_config": dict(vision, model_type="mplug_owl_vision_model"),
        "visual_abstractor_config": dict(abstractor, model_type="mplug_owl_visual_abstract"),
        "text_config": dict(text),
        "torch_dtype": "float16",
        "transformers_version": "4.28.1",
    }


# mPLUG-Owl-llama-7b's numbers (fact sheet A2; abstractor intermediate_size 2816 as in the released checkpoints).
MPLUG_OWL_7B = release_config(
    vision=dict(VISION, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
    | dict(image_size=224, patch_size=14),
    abstractor=dict(ABSTRACTOR, hidden_size=1024, num_hidden_layers=6, num_attention_heads=16, intermediate_size=2816)
    | dict(encoder_hidden_size=1024),
    text=LLAMA_7B,
    queries=64,
)


class ReferenceVit(nn.Module):
    """mPLUG's ViT from the fact sheet, in its key layout: pixels [N, 3, H, W] -> post_layernorm(all tokens)
    [N, 1 + p, d]. Pre-LN blocks, fused qkv interleaved per head, QuickGELU, every LayerNorm eps 1e-6."""

    def __init__(self, *, width: int, layers: int, heads: int, mlp: int, image_size: int, patch_size: int):
        super().__init__()
        self.heads = heads
        norm = lambda: nn.LayerNorm(width, eps=1e-6)  # noqa: E731
        self.embeddings = nn.Module()
        self.embeddings.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.embeddings.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.embeddings.position_embedding = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, width))
        self.embeddings.pre_layernorm = norm()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.input_layernorm, block.post_attention_layernorm = norm(), norm()
            block.self_attn = nn.Module()
            block.self_attn.query_key_value = nn.Linear(width, 3 * width)
            block.self_attn.dense = nn.Linear(width, width)
            block.mlp = nn.Module()
            block.mlp.fc1, block.mlp.fc2 = nn.Linear(width, mlp), nn.Linear(mlp, width)
            self.encoder.layers.append(block)
        self.post_layernorm = norm()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        emb = self.embeddings
        x = emb.patch_embed(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([emb.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + emb.position_embedding
        x = emb.pre_layernorm(x)
        for block in self.encoder.layers:
            n, t, d = x.shape
            qkv = block.self_attn.query_key_value(block.input_layernorm(x)).view(n, t, self.heads, 3, d // self.heads)
            q, k, v = (qkv[:, :, :, j].transpose(1, 2) for j in range(3))  # [N, heads, t, hd]
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
            x = x + block.self_attn.dense((scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d))
            h = block.mlp.fc1(block.post_attention_layernorm(x))
            x = x + block.mlp.fc2(h * torch.sigmoid(1.702 * h))
        return self.post_layernorm(x)


def reference_vit(config: dict = VISION) -> ReferenceVit:
    return ReferenceVit(
        width=config["hidden_size"],
        layers=config["num_hidden_layers"],
        heads=config["num_attention_heads"],
        mlp=config["intermediate_size"],
        image_size=config["image_size"],
        patch_size=config["patch_size"],
    )


def reference_abstractor(state: dict[str, torch.Tensor], image: torch.Tensor, *, heads: int) -> torch.Tensor:
    """The abstractor from the fact sheet's text, on release keys: image [N, p, d] -> [N, q, d] (eval mode)."""
    w = {k: v.float() for k, v in state.items()}

    def lin(x, name):
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def ln(x, name, eps):
        return F.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps)

    def split(t):  # [N, t, d] -> [N, heads, t, hd]
        return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    h = w["query_tokens"].expand(image.shape[0], -1, -1)
    layers = sorted({int(k.split(".")[3]) for k in w if k.startswith("abstractor.encoder.layers.")})
    for p in (f"abstractor.encoder.layers.{i}.crossattention." for i in layers):
        h = ln(h, p + "norm1", 1e-5)  # the residual stream becomes the normed queries
        kv = torch.cat([h, ln(image, p + "normk", 1e-5)], dim=1)  # queries first
        q, k, v = (
            split(lin(h, p + "attention.query")),
            split(lin(kv, p + "attention.key")),
            split(lin(kv, p + "attention.value")),
        )
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
        h = h + lin(attn.transpose(1, 2).flatten(2), p + "output.out_proj")
        x = ln(h, p + "output.norm2", 1e-5)
        gated = F.silu(lin(x, p + "output.mlp.w1")) * lin(x, p + "output.mlp.w3")
        h = h + lin(ln(gated, p + "output.mlp.ffn_ln", 1e-6), p + "output.mlp.w2")
    return h


_NORMS = ("layernorm.weight", "norm1.weight", "normk.weight", "norm2.weight", "ffn_ln.weight")


def _random(shape, gen: torch.Generator, name: str) -> torch.Tensor:
    """LayerNorm weights near 1, everything else small; fp16, as released."""
    noise = torch.randn(shape, generator=gen)
    return (1 + 0.1 * noise if name.endswith(_NORMS) else 0.1 * noise).half()


def release_state(*, seed: int = 0, config: dict | None = None) -> dict[str, torch.Tensor]:
    """Every key of a tiny release (fp16), in the order MplugOwlForConditionalGeneration's state_dict has them."""
    config = config or release_config()
    gen = torch.Generator().manual_seed(seed)
    vision, abstractor = config["vision_config"], config["visual_abstractor_config"]
    state = {f"vision_model.{k}": _random(v.shape, gen, k) for k, v in reference_vit(vision).state_dict().items()}
    d, f, lm = abstractor["hidden_size"], abstractor["intermediate_size"], config["text_config"]["hidden_size"]
    state["query_tokens"] = _random((1, config["num_query_tokens"], d), gen, "query_tokens")
    shapes = {"norm1": (d,), "normk": (d,), "attention.query": (d, d), "attention.key": (d, d)}
    shapes |= {"attention.value": (d, d), "output.out_proj": (d, d), "output.norm2": (d,)}
    shapes |= {"output.mlp.w1": (f, d), "output.mlp.w2": (d, f), "output.mlp.w3": (f, d), "output.mlp.ffn_ln": (f,)}
    for i in range(abstractor["num_hidden_layers"]):
        for name, shape in shapes.items():
            key = f"abstractor.encoder.layers.{i}.crossattention.{name}"
            state[f"{key}.weight"] = _random(shape, gen, f"{key}.weight")
            state[f"{key}.bias"] = _random(shape[:1], gen, f"{key}.bias")
    state["abstractor.visual_fc.weight"] = _random((lm, d), gen, "visual_fc.weight")
    state["abstractor.visual_fc.bias"] = _random((lm,), gen, "visual_fc.bias")
    state["abstractor.vit_eos"] = _random((1, 1, lm), gen, "vit_eos")
    torch.manual_seed(seed)
    text = dict(config["text_config"])
    llama = LlamaForCausalLM(AutoConfig.for_model(text.pop("model_type"), **text))
    head_dim = lm // config["text_config"]["num_attention_heads"]
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    for key, value in llama.state_dict().items():
        state[f"language_model.{key}"] = value.detach().half()
        if key.endswith("self_attn.o_proj.weight"):  # transformers 4.28 saved this buffer in every layer
            state[f"language_model.{key.rsplit('.', 2)[0]}.rotary_emb.inv_freq"] = inv_freq.half()
    return state


def write_release(root: Path, state: dict[str, torch.Tensor], *, config: dict | None = None, layout: str = "shards"):
    """Write a release directory: ``layout`` "shards" (two .bin shards + index, as released), "single"
    (``pytorch_model.bin``) or "safetensors" (``model.safetensors``, a user's conversion)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config or release_config(), indent=2, sort_keys=True))
    if layout == "single":
        torch.save(state, root / "pytorch_model.bin")
    elif layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / "model.safetensors"))
    else:
        keys = list(state)
        half = len(keys) // 2
        weight_map = {}
        for n, chunk in enumerate((keys[:half], keys[half:]), start=1):
            name = f"pytorch_model-{n:05d}-of-00002.bin"
            torch.save({k: state[k] for k in chunk}, root / name)
            weight_map |= dict.fromkeys(chunk, name)
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (root / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return root


def write_lora(root: Path, *, seed: int = 0, naming: str = "old", weights: str = "bin") -> dict[str, torch.Tensor]:
    """A user's adapter as mPLUG-Owl's train.py --use-lora saved it (r 8, alpha 32, dropout 0.05 on q/v); returns
    its weights keyed inside the LM. ``naming`` "new": peft's ``lora_A.default.weight``; ``weights``
    "safetensors": ``adapter_model.safetensors``."""
    text = dict(TEXT)
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(AutoConfig.for_model(text.pop("model_type"), **text))
    inject_adapter_in_model(LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"]), llama)
    gen = torch.Generator().manual_seed(seed)
    inner = {k: torch.randn(v.shape, generator=gen) for k, v in get_peft_model_state_dict(llama).items()}
    tail = ".default.weight" if naming == "new" else ".weight"
    saved = {f"base_model.model.language_model.{k.removesuffix('.weight')}{tail}": v for k, v in inner.items()}
    config = {"peft_type": "LORA", "task_type": None, "r": 8, "lora_alpha": 32, "lora_dropout": 0.05}
    config |= {"target_modules": r".*language_model.*\.(q_proj|v_proj)", "bias": "none", "fan_in_fan_out": False}
    config |= {"base_model_name_or_path": "MAGAer13/mplug-owl-llama-7b-pt", "inference_mode": True}
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_config.json").write_text(json.dumps(config, indent=2))
    if weights == "safetensors":
        save_file(saved, str(root / "adapter_model.safetensors"))
    else:
        torch.save(saved, root / "adapter_model.bin")
    return inner
