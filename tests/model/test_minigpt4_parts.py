"""MiniGPT-4's building blocks (EVA ViT-g, Q-Former, patch concatenation) and the loaders of its released files.

Tiny random references in LAVIS' layout (tests/model/minigpt4_files.py, written from prefix-systems.md, not from
transformers) are saved in the exact released file layouts, read back through our key maps into our modules, and
compared numerically; full-size configs are counted on the meta device against prefix-systems.md section B.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from mmgpt.config import VisionConfig
from mmgpt.data.images import CLIP_MEAN
from mmgpt.model.checkpoints.minigpt4 import (
    check_projection,
    describe_projection,
    load_into,
    read_blip2_qformer,
    read_eva_vit_g,
    read_minigpt4_projection,
)
from mmgpt.model.encoders.eva import EvaVisionEncoder, eva_vision_config
from mmgpt.model.resamplers.patch_concat import PatchConcat
from mmgpt.model.resamplers.qformer import QFormerResampler, qformer_config
from tests.model.minigpt4_files import (
    RefBlip2,
    RefEvaViT,
    randomize,
    write_blip2_file,
    write_eva_vit_g,
    write_minigpt4_projection,
)

EVA = dict(image_size=28, patch_size=7, width=64, heads=4, mlp_dim=96)
LAYERS = 2  # built; the file holds one more block, as eva_vit_g.pth holds 40 for 39
QF = dict(hidden=32, layers=3, heads=4, intermediate=48, encoder_width=64, queries=5)
LM_WIDTH = 40


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("minigpt4")
    vit = randomize(RefEvaViT(blocks=LAYERS + 1, **EVA), seed=0)  # fp16-exact values: the file is fp16
    blip2 = randomize(
        RefBlip2(image_dim=64, dim=32, layers=3, heads=4, intermediate=48, queries=5), seed=1, dtype=torch.float32
    )
    proj = randomize(nn.Linear(32, LM_WIDTH), seed=2)
    write_eva_vit_g(vit, root / "eva_vit_g.pth")
    write_blip2_file(blip2, root / "blip2_pretrained_flant5xxl.pth")
    write_minigpt4_projection(proj, root / "pretrained_minigpt4.pth", dtype=torch.float16)
    return dict(root=root, vit=vit.eval(), blip2=blip2.eval(), proj=proj)


@pytest.fixture(scope="module")
def loaded(files):
    root = files["root"]
    encoder = EvaVisionEncoder(eva_vision_config(layers=LAYERS, **EVA))
    vit_state, vit_report = read_eva_vit_g(root / "eva_vit_g.pth", layers=LAYERS)
    load_into(encoder, vit_state, source="eva_vit_g.pth", skip=["model.post_layernorm"])
    ln_state, q_state, q_report = read_blip2_qformer(root / "blip2_pretrained_flant5xxl.pth")
    load_into(encoder.ln_vision, ln_state, source="blip2")
    resampler = QFormerResampler(qformer_config(**QF)).requires_grad_(False).eval()
    load_into(resampler, q_state, source="blip2")
    proj_state, proj_report = read_minigpt4_projection(root / "pretrained_minigpt4.pth")
    proj = nn.Linear(32, LM_WIDTH)
    load_into(proj, proj_state, source="pretrained_minigpt4.pth")
    reports = dict(vit=vit_report, qformer=q_report, proj=proj_report)
    return dict(encoder=encoder, resampler=resampler, proj=proj, vit_state=vit_state, reports=reports)


def test_full_size_parameter_counts():
    with torch.device("meta"):
        encoder = EvaVisionEncoder(eva_vision_config())
        resampler = QFormerResampler(qformer_config())
        proj_7b, proj_13b = nn.Linear(768, 4096), nn.Linear(768, 5120)
    blocks = encoder.model.encoder.layers
    assert len(blocks) == 39 and encoder.tokens == 257 and encoder.width == 1408
    # HF's qkv.bias holds a zero k slice LAVIS does not count (q_bias + v_bias only): 1408 per block.
    k_bias_slices = 39 * 1408
    assert count(encoder.ln_vision) == 2_816
    assert count(encoder) - count(encoder.ln_vision) - k_bias_slices == 985_894_528
    assert count(blocks[0]) - 1408 == 25_248_768
    assert count(resampler.qformer) == 105_137_664 and resampler.query_tokens.numel() == 24_576
    assert not [k for k in resampler.state_dict() if re.search(r"layer\.\d+\.(intermediate|output)\.", k)]  # text FFN
    assert count(proj_7b) == 3_149_824 and count(proj_13b) == 3_937_280


def test_eva_encoder_settings():
    encoder = EvaVisionEncoder.from_numbers(layers=LAYERS, **EVA)
    assert encoder.model.post_layernorm.eps == 1e-5 and encoder.model.encoder.layers[0].layer_norm1.eps == 1e-6
    assert encoder.model.config.hidden_act == "gelu" and encoder.model.config._attn_implementation == "sdpa"
    assert encoder.resize == "squash" and encoder.mean[0] == 0.48145466 and encoder.std[2] == 0.27577711
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.train().model.training  # frozen: stays in eval mode
    with pytest.raises(ValueError, match="built for 28x28"):
        encoder(torch.zeros(1, 3, 32, 32))
    transform = encoder.image_transform()
    assert (transform.size, transform.resize, transform.mean) == (28, "squash", CLIP_MEAN)


def test_eva_encoder_from_our_config():
    cfg = VisionConfig(kind="eva", layers=LAYERS, eps=1e-6, keep_cls=True, resize="squash", **EVA)
    cfg = dataclasses.replace(cfg, final_norm="post_layernorm", final_norm_eps=1e-5)
    encoder = EvaVisionEncoder.from_config(cfg)
    assert encoder.describe() == cfg and encoder.model.post_layernorm.eps == 1e-5 and encoder.tokens == 17
    no_cls = EvaVisionEncoder.from_config(dataclasses.replace(cfg, keep_cls=False))
    no_cls.load_state_dict(encoder.state_dict())
    pixels = torch.randn(1, 3, 28, 28)
    assert no_cls.tokens == 16 and torch.equal(no_cls(pixels), encoder(pixels)[:, 1:])
    with pytest.raises(ValueError, match="final_norm: post_layernorm"):
        EvaVisionEncoder.from_config(dataclasses.replace(cfg, final_norm="none"))


def test_eva_file_round_trip(files, loaded):
    vit, state, report = files["vit"], loaded["vit_state"], loaded["reports"]["vit"]
    assert report.ignored == sorted(f"blocks.{LAYERS}.{k}" for k, _ in vit.blocks[LAYERS].state_dict().items())
    assert all(v.dtype == torch.float16 for v in state.values())  # the file's dtype, converted by load_into
    model = loaded["encoder"].model
    assert torch.equal(model.embeddings.class_embedding, vit.cls_token)
    assert torch.equal(model.embeddings.position_embedding, vit.pos_embed)
    assert torch.equal(model.embeddings.patch_embedding.bias, vit.patch_embed.proj.bias)
    for ours, ref in zip(model.encoder.layers, vit.blocks[:LAYERS], strict=True):
        zeros = torch.zeros_like(ref.attn.q_bias)
        assert torch.equal(ours.self_attn.qkv.bias, torch.cat([ref.attn.q_bias, zeros, ref.attn.v_bias]))
        assert torch.equal(ours.self_attn.qkv.weight, ref.attn.qkv.weight)
        assert torch.equal(ours.self_attn.projection.weight, ref.attn.proj.weight)
        assert torch.equal(ours.layer_norm2.bias, ref.norm2.bias)
        assert torch.equal(ours.mlp.fc2.weight, ref.mlp.fc2.weight)
    expected = set(loaded["encoder"].state_dict()) - {"model.post_layernorm.weight", "model.post_layernorm.bias"}
    assert set(report.loaded) == expected
    bf16 = EvaVisionEncoder(eva_vision_config(layers=LAYERS, **EVA)).to(torch.bfloat16)  # fp16 file, any dtype
    load_into(bf16, state, source="eva", skip=["model.post_layernorm"])
    assert torch.equal(bf16.model.embeddings.class_embedding, vit.cls_token.to(torch.bfloat16))


def test_eva_matches_reference(files, loaded):
    vit, ln_vision = files["vit"], files["blip2"].ln_vision
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ln_vision(vit(pixels, layers=LAYERS))
        out = loaded["encoder"](pixels)
    assert out.shape == (2, 17, 64)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    swapped = EvaVisionEncoder(eva_vision_config(layers=LAYERS, **EVA))  # a wrong map shows: k and v biases swapped
    swapped.load_state_dict(loaded["encoder"].state_dict())
    with torch.no_grad():
        for layer in swapped.model.encoder.layers:
            q, k, v = layer.self_attn.qkv.bias.chunk(3)
            layer.self_attn.qkv.bias.copy_(torch.cat([q, v, k]))
        assert (swapped(pixels) - expected).abs().max() > 1e-2


def test_qformer_file_round_trip_and_reference(files, loaded):
    blip2, resampler, report = files["blip2"], loaded["resampler"], loaded["reports"]["qformer"]
    skipped = ["Qformer.bert.embeddings.position_ids", "t5_proj.bias", "t5_proj.weight"]
    assert report.ignored == [*skipped, "config", "epoch", "optimizer"]
    assert set(report.loaded) == set(resampler.state_dict()) | {"ln_vision.weight", "ln_vision.bias"}
    layer0 = resampler.qformer.encoder.layer[0]
    ref0 = blip2.Qformer.bert.encoder.layer[0]
    assert torch.equal(layer0.crossattention.attention.key.weight, ref0.crossattention.self.key.weight)
    assert torch.equal(layer0.output_query.LayerNorm.bias, ref0.output_query.LayerNorm.bias)
    assert torch.equal(resampler.qformer.layernorm.weight, blip2.Qformer.bert.embeddings.LayerNorm.weight)
    assert torch.equal(loaded["encoder"].ln_vision.bias, blip2.ln_vision.bias)
    image = torch.randn(3, 17, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = blip2(image)
        out = resampler(image)
        batched = resampler(image.unflatten(0, (1, 3)))  # [b, m, p, d_v] works too
    assert out.shape == (3, 5, 32) and batched.shape == (1, 3, 5, 32)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[0], out)


def test_pixels_to_lm_embeddings_match_reference(files, loaded):
    """The whole MiniGPT-4 v1 image path from the three files: EVA -> ln_vision -> Q-Former -> llama_proj."""
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(5))
    vit, blip2, proj = files["vit"], files["blip2"], files["proj"]
    with torch.no_grad():
        expected = proj(blip2(blip2.ln_vision(vit(pixels, layers=LAYERS))))
        out = loaded["proj"](loaded["resampler"](loaded["encoder"](pixels)))
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


def test_qformer_file_extra_keys(files, tmp_path):
    blip2 = files["blip2"]
    text_ffn = "Qformer.bert.encoder.layer.1.intermediate.dense.weight"  # deleted by MiniGPT-4: skipped, named
    write_blip2_file(blip2, tmp_path / "text.pth", extra={text_ffn: torch.zeros(48, 32)})
    assert text_ffn in read_blip2_qformer(tmp_path / "text.pth")[2].ignored
    other_files = [
        ("opt_proj.weight", "another LM"),
        ("visual_encoder.cls_token", "visual_encoder"),
        ("temp", "stage 1"),
    ]
    for key, hint in other_files:
        write_blip2_file(blip2, tmp_path / "bad.pth", extra={key: torch.zeros(1)})
        with pytest.raises(ValueError, match=hint) as err:
            read_blip2_qformer(tmp_path / "bad.pth")
        assert key in str(err.value) and "bad.pth" in str(err.value)
    torch.save({k: v for k, v in blip2.state_dict().items()}, tmp_path / "raw.pth")  # no {"model": ...}
    with pytest.raises(ValueError, match="not a LAVIS/MiniGPT-4 checkpoint"):
        read_blip2_qformer(tmp_path / "raw.pth")


def test_qformer_layers_must_match(files, tmp_path):
    _, state, _ = read_blip2_qformer(files["root"] / "blip2_pretrained_flant5xxl.pth")
    two_layers = QFormerResampler(qformer_config(**{**QF, "layers": 2}))
    with pytest.raises(ValueError, match=r"blip2 does not fit QFormerResampler: 0 missing .* 26 unexpected .*layer.2"):
        load_into(two_layers, state, source="blip2")


def test_eva_file_layout_errors(files, tmp_path):
    state = {k: v.half() for k, v in files["vit"].state_dict().items()}
    with pytest.raises(ValueError, match=r"13 missing .*blocks\.3\.attn\.q_bias.*must hold blocks 0..3"):
        read_eva_vit_g(files["root"] / "eva_vit_g.pth", layers=4)
    cases = [
        ({"model": state, "epoch": 1}, "training checkpoint"),
        ({f"visual_encoder.{k}": v for k, v in state.items()}, "visual_encoder"),
        ({"embeddings.class_embedding": state["cls_token"], **state}, "Blip2VisionModel names"),
    ]
    for obj, message in cases:
        torch.save(obj, tmp_path / "eva.pth")
        with pytest.raises(ValueError, match=message) as err:
            read_eva_vit_g(tmp_path / "eva.pth", layers=LAYERS)
        assert "eva.pth" in str(err.value)


def test_projection_file(files, loaded, tmp_path):
    proj, report = files["proj"], loaded["reports"]["proj"]
    assert report.ignored == ["config", "epoch", "optimizer", "scaler"] and report.loaded == ["bias", "weight"]
    assert torch.equal(loaded["proj"].weight, proj.weight) and torch.equal(loaded["proj"].bias, proj.bias)
    state, _ = read_minigpt4_projection(files["root"] / "pretrained_minigpt4.pth")
    assert state["weight"].dtype == torch.float16
    assert "Vicuna-13B" in describe_projection((5120, 768)) and "LLaMA-2" in describe_projection((4096, 5632))
    big = {"weight": torch.zeros(5120, 768), "bias": torch.zeros(5120)}
    check_projection(big, lm_width=5120, image_width=768, source="p.pth")
    with pytest.raises(ValueError, match=r"p.pth: this projection is for a 5120-wide LM \(.*Vicuna-13B.*4096 wide"):
        check_projection(big, lm_width=4096, image_width=768, source="p.pth")
    with pytest.raises(ValueError, match=r"5632-wide image features .*LLaMA-2.* gives 768"):
        check_projection({"weight": torch.zeros(4096, 5632)}, lm_width=4096, image_width=768, source="p.pth")
    lora = {"llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 40)}
    write_minigpt4_projection(proj, tmp_path / "lora.pth", extra=lora)
    with pytest.raises(ValueError, match=r"lora_A.*LoRA"):
        read_minigpt4_projection(tmp_path / "lora.pth")


def test_patch_concat_order():
    """LLaMA-2 release: CLS dropped, patches 4j..4j+3 side by side (minigpt4.py L138-143: [:, 1:] then view)."""
    n, p, d = 2, 257, 3
    tokens = torch.arange(n * p * d, dtype=torch.float32).reshape(n, p, d)
    concat = PatchConcat()
    out = concat(tokens)
    assert out.shape == (2, 64, 12) and concat.output_tokens(257) == 64 and concat.output_width(1408) == 5632
    for i in range(n):
        for j in (0, 1, 63):
            for k in range(4):
                assert torch.equal(out[i, j, k * d : (k + 1) * d], tokens[i, 1 + 4 * j + k])
    assert torch.equal(PatchConcat(drop_cls=False)(tokens[:, 1:]), out)
    assert PatchConcat()(tokens.unflatten(0, (1, 2))).shape == (1, 2, 64, 12)
    assert not list(concat.parameters())
    with pytest.raises(ValueError, match="multiple of 4"):
        concat(tokens[:, :-1])  # 255 patches after CLS
