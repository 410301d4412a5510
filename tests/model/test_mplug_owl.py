"""mPLUG-Owl as an mmgpt model, loaded with ``mmgpt.load(DIR)`` from a tiny release directory in the exact layout
of ``MAGAer13/mplug-owl-llama-7b`` (tests/model/mplug_owl_tiny.py): the preset's counts on the meta device, logits
against an independent reference written from the fact sheet (the original's ViT, abstractor, visual_fc + vit_eos,
its splice by concatenation), adjacent images, dtypes, memory, errors, export, and users' LoRA adapters.
Generation, chat and the API: tests/test_mplug_owl_chat.py.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import mmgpt
from mmgpt.cli import main
from mmgpt.load import load_preset
from mmgpt.model.build import build_model
from mmgpt.model.checkpoints.mplug_owl_release import load_mplug_owl_lora
from mmgpt.model.contract import CONNECTOR, EMBEDDINGS, LM_MLP, LM_OTHER, RESAMPLER, SELF_ATTENTION, VISION
from mmgpt.model.lora import adapter_names, load_named_adapter, save_adapter, select_adapter
from mmgpt.tokens import IMAGE_POSITION
from tests.model import mplug_owl_fixtures
from tests.model.mplug_owl_files import ABSTRACTOR, write_lora
from tests.model.mplug_owl_tiny import (
    PER_IMAGE,
    TEXT_CONFIG,
    Reference,
    pixels_of,
    prompt_ids,
    write_tiny_release,
)

spm, release, loaded = mplug_owl_fixtures.spm, mplug_owl_fixtures.release, mplug_owl_fixtures.loaded  # shared fixtures


@pytest.fixture(scope="module")
def reference(release) -> Reference:
    return Reference(release)


# ---------------------------------------------------------------------------------------------- the preset
def test_the_preset_on_the_meta_device_has_the_released_counts(loaded):
    preset = load_preset("mplug-owl-llama-7b")
    assert (preset.release, preset.model.fusion, preset.model.prompt_style) == ("mplug_owl", "prefix", "mplug-owl")
    model, _ = build_model(preset.model, tokenizer=loaded[1], device="meta", init_weights=False)
    counts = dict.fromkeys((VISION, RESAMPLER, CONNECTOR, EMBEDDINGS, SELF_ATTENTION, LM_MLP, LM_OTHER), 0)
    for name, p in model.named_parameters():
        counts[model.parameter_group(name)] += p.numel()
    assert counts[VISION] == 303_179_776
    assert counts[RESAMPLER] == 77_205_504 + 65_536  # the abstractor's layers + query tokens
    assert counts[CONNECTOR] == 4_198_400 + 4_096  # visual_fc + vit_eos
    assert counts[RESAMPLER] + counts[CONNECTOR] - 65_536 == 81_408_000
    assert sum(counts[g] for g in (EMBEDDINGS, SELF_ATTENTION, LM_MLP, LM_OTHER)) == 6_738_415_616
    assert model.tokens_per_image == 65 and model.vision_encoder.tokens == 257
    assert model.image_transform().resize == "squash" and model.vision_encoder.cfg.final_norm == "post_layernorm"


# ---------------------------------------------------------------------------------------------- loading
def test_mmgpt_load_of_the_directory_computes_what_the_original_computes(loaded, reference):
    model, tokenizer = loaded
    assert type(model).__name__ == "PrefixLM" and model.tokens_per_image == PER_IMAGE
    assert model.config.prefix.abstractor.intermediate == ABSTRACTOR["intermediate_size"]  # from config.json
    assert model.config.vision.eps == 1e-6 and model.config.vision.keep_cls
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    ids = prompt_ids(model, tokenizer, "What is in the image?", 1)
    pixels = pixels_of(model, 1)
    with torch.no_grad():
        got = model(torch.tensor([ids]), images=pixels[None]).logits[0]
        other = model(torch.tensor([ids]), images=pixels_of(model, 2)[None]).logits[0]
    want = reference.logits(ids, pixels)
    assert (got - want).abs().max() < 1e-3  # logits up to ~10 in float32
    assert (got - other).abs().max() > 1e-2  # the image matters


def test_layouts_dtypes_and_the_default_dtype(release, loaded, tmp_path, spm):
    model, _ = loaded
    state = {k: v.clone() for k, v in model.state_dict().items()}
    single = write_tiny_release(tmp_path / "single", model=spm, layout="safetensors")
    other, _ = mmgpt.load(single, dtype="float32")
    assert all(torch.equal(v, state[k]) for k, v in other.state_dict().items())
    for dtype in (torch.bfloat16, torch.float16):
        half, _ = mmgpt.load(release, dtype=dtype)
        assert {p.dtype for p in half.parameters()} == {dtype} and half.config.dtype == str(dtype)[6:]
        assert torch.equal(half.connector.end_tokens, state["connector.end_tokens"].to(dtype))
    default, _ = mmgpt.load(release)
    assert {p.dtype for p in default.parameters()} == {torch.bfloat16}  # the preset's: the original served bf16


ANON_MEMORY = """
import sys, torch
import mmgpt
from mmgpt.model.build import build_model

def anonymous():  # resident memory that is no file's page (the model's tensors), MiB
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon:")) // 1024

before = anonymous()
model, _ = mmgpt.load(sys.argv[1], dtype="float32")
size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) // 2**20
print(anonymous() - before, size)
"""


@pytest.mark.slow
def test_loading_holds_one_copy_of_the_weights(tmp_path, spm):
    """A ~130M-parameter release (fp16 shards) loaded in float32: the process's anonymous memory grows by one copy
    of the model. The memory-mapped shards add file pages on top (page cache, which the kernel can drop)."""
    import subprocess
    import sys

    from tests.model.mplug_owl_files import release_config, release_state, write_release

    text = dict(TEXT_CONFIG, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=16)
    config = release_config(text=text)
    root = write_release(tmp_path / "big", release_state(config=config), config=config)
    (root / "tokenizer.model").write_bytes(spm)
    out = subprocess.run([sys.executable, "-c", ANON_MEMORY, str(root)], capture_output=True, text=True, check=True)
    grown, size = map(int, out.stdout.split())
    assert size > 500
    assert grown < 1.15 * size, f"anonymous memory grew by {grown} MiB for {size} MiB of weights"


def test_errors_name_the_problem_before_anything_large_is_read(release, tmp_path, spm):
    broken = write_tiny_release(tmp_path / "no-tokenizer", model=spm)
    (broken / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.model or tokenizer\.json"):
        mmgpt.load(broken)
    with pytest.raises(ValueError, match=r"release directory and holds every weight: drop lm="):
        mmgpt.load(release, lm=tmp_path)
    with pytest.raises(ValueError, match=r"needs checkpoint= \(an mPLUG-Owl HF directory"):
        mmgpt.load("mplug-owl-llama-7b")
    extra = write_tiny_release(tmp_path / "extra", model=spm, layout="single")
    state = torch.load(extra / "pytorch_model.bin")
    state["abstractor.encoder.layers.0.crossattention.gate"] = torch.zeros(1)
    torch.save(state, extra / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"1 unexpected keys \['abstractor\.encoder\.layers\.0\.crossattention\.gate"):
        mmgpt.load(extra)


def test_export_writes_a_directory_every_verb_accepts(release, loaded, tmp_path, capsys):
    assert main(["export", str(release), "--out", str(tmp_path / "exported"), "--dtype", "float32"]) == 0
    assert "load it with mmgpt.load" in capsys.readouterr().out
    model, tokenizer = mmgpt.load(tmp_path / "exported")
    base, base_tokenizer = loaded
    assert model.config.prompt_style == "mplug-owl" and model.tokens_per_image == PER_IMAGE
    ids = prompt_ids(base, base_tokenizer, "Describe it panel by panel.", 2)
    assert prompt_ids(model, tokenizer, "Describe it panel by panel.", 2) == ids
    pixels = pixels_of(base, 1, 2)[None]
    with torch.no_grad():
        assert torch.equal(
            model(torch.tensor([ids]), images=pixels).logits, base(torch.tensor([ids]), images=pixels).logits
        )


def test_users_lora_adapters_load_save_and_serve_by_name(release, loaded, tmp_path):
    base, tokenizer = loaded
    inner = write_lora(tmp_path / "bin")  # adapter_model.bin with the original's keys, r 8, alpha 32, q/v
    model, _ = mmgpt.load(release, dtype="float32", lora=tmp_path / "bin")
    assert sorted(adapter_names(model)) == ["default"]
    merged, _ = mmgpt.load(release, dtype="float32")
    with torch.no_grad():  # the reference: W + B A * alpha / r on every q/v of the LM
        for key in (k for k in inner if k.endswith("lora_A.weight")):
            module = merged.language_model.get_submodule(key.removesuffix(".lora_A.weight"))
            module.weight += inner[key.replace("lora_A", "lora_B")] @ inner[key] * (32 / 8)
    ids, pixels = prompt_ids(base, tokenizer, "What is it?", 1), pixels_of(base, 3)[None]
    with torch.no_grad():
        tuned = model(torch.tensor([ids]), images=pixels).logits
        torch.testing.assert_close(tuned, merged(torch.tensor([ids]), images=pixels).logits, rtol=1e-4, atol=1e-3)
        assert (tuned - base(torch.tensor([ids]), images=pixels).logits).abs().max() > 1e-3
    ours = save_adapter(model, tmp_path / "ours")  # our peft format: a named adapter of a served base
    served, _ = mmgpt.load(release, dtype="float32")
    load_named_adapter(served, ours, "user").eval()  # its new dropout modules start in training mode
    select_adapter(served, "user")
    with torch.no_grad():
        assert torch.equal(served(torch.tensor([ids]), images=pixels).logits, tuned)


def test_every_saved_form_of_a_users_adapter_gives_the_same_model(release, tmp_path):
    """peft's old and new key naming (.bin) and a safetensors conversion, through load_mplug_owl_lora."""
    outputs = []
    for name, kwargs in [("old", {}), ("new", {"naming": "new"}), ("st", {"weights": "safetensors"})]:
        write_lora(tmp_path / name, **kwargs)
        model, tokenizer = mmgpt.load(release, dtype="float32")
        report = load_mplug_owl_lora(model, tmp_path / name)
        assert len(report.loaded) == 2 * 2 * 2  # layers x (q, v) x (A, B)
        ids, pixels = prompt_ids(model, tokenizer, "What is it?", 1), pixels_of(model, 3)[None]
        with torch.no_grad():
            outputs.append(model(torch.tensor([ids]), images=pixels).logits)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        load_mplug_owl_lora(model, tmp_path / "old")


def test_a_users_safetensors_adapter_through_mmgpt_load(release, tmp_path):
    """An adapter saved by the original scripts as safetensors reads as peft's format, but its keys name the
    release's own module tree: mmgpt.load hands it to the release's loader."""
    write_lora(tmp_path / "st", weights="safetensors")
    model, _ = mmgpt.load(release, dtype="float32", lora=tmp_path / "st")
    assert any(".lora_A." in name for name, _ in model.named_parameters())


def test_adjacent_images_are_two_images(loaded, reference):
    """The original found images as runs of negative ids, so two adjacent images were one run and the second was
    never spliced; positions are counted here."""
    model, tokenizer = loaded
    head = tokenizer("Compare:", add_special_tokens=False)["input_ids"]
    ids = [1, *head, *[IMAGE_POSITION] * (2 * PER_IMAGE), *tokenizer("Same?", add_special_tokens=False)["input_ids"]]
    pixels = pixels_of(model, 4, 5)
    with torch.no_grad():
        got = model(torch.tensor([ids]), images=pixels[None]).logits[0]
        first_twice = model(torch.tensor([ids]), images=pixels[[0, 0]][None]).logits[0]
    assert (got - reference.logits(ids, pixels)).abs().max() < 1e-3  # logits up to ~10 in float32
    assert (got[-1] - first_twice[-1]).abs().max() > 1e-2  # the second image is there


def test_training_images_are_never_flipped_or_cropped(loaded):
    """The original trained with RandomHorizontalFlip (and random crops): here training uses the model's one
    deterministic transform, squash to the ViT's size, so left stays left."""
    model, _ = loaded
    size = model.image_transform().size
    pixels = torch.zeros(size, size, 3, dtype=torch.uint8)
    pixels[:, : size // 2, 0] = 255  # red on the left only
    image = Image.fromarray(pixels.numpy())
    first, again = model.image_transform()(image), model.image_transform()(image)
    assert torch.equal(first, again)
    assert first[0, :, 0].min() > first[0, :, -1].max()  # still red on the left


def test_export_merges_a_users_adapter(release, tmp_path, capsys):
    write_lora(tmp_path / "adapter")
    assert main(["export", str(release), "--lora", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged"),
                 "--dtype", "float32"]) == 0  # fmt: skip
    merged, tokenizer = mmgpt.load(tmp_path / "merged")
    tuned, _ = mmgpt.load(release, dtype="float32", lora=tmp_path / "adapter")
    assert not any(".lora_" in name for name, _ in merged.named_parameters())
    ids, pixels = prompt_ids(merged, tokenizer, "What is it?", 1), pixels_of(merged, 3)[None]
    with torch.no_grad():
        want = tuned(torch.tensor([ids]), images=pixels).logits
        torch.testing.assert_close(merged(torch.tensor([ids]), images=pixels).logits, want, rtol=1e-4, atol=1e-3)
