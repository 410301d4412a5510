import copy
import threading
import warnings

import pytest
import torch

from mmgpt.model.build import build_language_model, build_vision_encoder
from mmgpt.model.checkpoints import load_pretrained, save_pretrained
from mmgpt.model.flamingo import build_flamingo
from mmgpt.model.language import decoder_layers, lm_cache_argument
from mmgpt.tokens import add_special_tokens
from tests.model.conftest import make_tokenizer, openflamingo_9b_v1_on_meta, random_images, tiny_config, tiny_model
from tests.model.test_training_path import openflamingo_trainable

FAMILIES = ["llama", "gpt_neox", "mpt", "qwen2"]


def prompt_ids(tokenizer, text="<image>what color is the circle?<|endofchunk|><image>and the square?"):
    return torch.tensor([tokenizer(text).input_ids])


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_gates_give_the_bare_lm_logits(family):
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    cfg = tiny_config(family, vocab_size=len(tokenizer))
    special = add_special_tokens(tokenizer)
    lm = build_language_model(cfg.lm)
    bare = copy.deepcopy(lm)
    model = build_flamingo(
        cfg=cfg,
        vision_encoder=build_vision_encoder(cfg.vision),
        lang_encoder=lm,
        special=special,
        vocab_size=len(tokenizer),
    ).eval()
    bare.resize_token_embeddings(len(tokenizer))
    bare.load_state_dict({k: v for k, v in lm.state_dict().items() if "gated_cross_attn" not in k})
    bare.eval()
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        expected = bare(input_ids=ids).logits
        torch.testing.assert_close(model(ids, images=random_images(2)[None]).logits, expected, rtol=0, atol=1e-5)
        text = torch.tensor([tokenizer("no image here").input_ids])
        torch.testing.assert_close(model(text).logits, bare(input_ids=text).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_keep_the_lm_names_and_sit_before_layers(family):
    model, _ = tiny_model(family)
    path, layers = decoder_layers(model.lang_encoder)
    assert model.block_layers == [1, 3]
    keys = set(model.state_dict())
    assert f"lang_encoder.{path}.1.gated_cross_attn_layer.attn.to_kv.weight" in keys
    assert f"lang_encoder.{path}.3.gated_cross_attn_layer.ff.3.weight" in keys
    assert not any("decoder_layer." in k for k in keys)
    assert all(hasattr(layers[i], "gated_cross_attn_layer") == (i in (1, 3)) for i in range(4))


@pytest.mark.parametrize("family", FAMILIES)
def test_images_change_the_logits_with_open_gates(family):
    model, tokenizer = tiny_model(family)
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        a = model(ids, images=random_images(2, seed=1)[None]).logits
        b = model(ids, images=random_images(2, seed=2)[None]).logits
    assert (a - b).abs().max() > 1e-3


def test_language_only_bypass_skips_the_whole_block():
    model, tokenizer = tiny_model("llama")
    text = torch.tensor([tokenizer("no image here").input_ids])
    bypassing, _ = tiny_model("llama", language_only_bypass=False)
    with torch.no_grad():
        with_bypass = model(text).logits
        without = bypassing(text).logits
        # the ff branch (gate 0.5) runs without the bypass; with it the block is skipped entirely
        for block in model.gated_blocks().values():
            block.ff_gate.zero_()
        torch.testing.assert_close(model(text).logits, with_bypass, rtol=0, atol=0)
    assert (with_bypass - without).abs().max() > 1e-3


def test_mixed_batch_rows_match_single_rows():
    model, tokenizer = tiny_model("llama")
    a = tokenizer("<image>what color is the circle?").input_ids
    b = tokenizer("what color is it").input_ids
    width = max(len(a), len(b))
    ids = torch.full((2, width), model.special.pad)
    mask = torch.zeros(2, width, dtype=torch.long)
    ids[0, width - len(a) :], mask[0, width - len(a) :] = torch.tensor(a), 1
    ids[1, width - len(b) :], mask[1, width - len(b) :] = torch.tensor(b), 1
    images = torch.zeros(2, 1, 1, 3, 32, 32)
    images[0, 0, 0] = random_images(1)[0]
    with torch.no_grad():
        batch = model(ids, images=images, image_counts=torch.tensor([1, 0]), attention_mask=mask).logits
        single_a = model(torch.tensor([a]), images=images[:1]).logits
        single_b = model(torch.tensor([b])).logits
    torch.testing.assert_close(batch[0, width - len(a) :], single_a[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch[1, width - len(b) :], single_b[0], rtol=0, atol=1e-5)


def test_two_threads_on_one_model_equal_sequential_runs():
    model, tokenizer = tiny_model("llama")
    jobs = [(prompt_ids(tokenizer), random_images(2, seed=s)[None]) for s in range(4)]
    with torch.no_grad():
        expected = [model(ids, images=img).logits for ids, img in jobs]
    results: dict[int, list] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def work(worker: int):
        barrier.wait()
        with torch.no_grad():
            for _ in range(5):
                for j in range(worker, len(jobs), 2):
                    results[worker].append((j, model(jobs[j][0], images=jobs[j][1]).logits))

    threads = [threading.Thread(target=work, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results[0]) == len(results[1]) == 10
    for worker in results.values():
        for j, logits in worker:
            assert torch.equal(logits, expected[j])


def test_openflamingo_9b_v1_parameter_counts_on_meta():
    model = openflamingo_9b_v1_on_meta()
    assert model.block_layers == [3, 7, 11, 15, 19, 23, 27, 31]
    assert sum(p.numel() for p in model.perceiver.parameters()) == 63_019_008
    assert {sum(p.numel() for p in b.parameters()) for b in model.gated_blocks().values()} == {139_476_994}
    assert model.lang_encoder.get_input_embeddings().weight.shape == (32003, 4096)
    assert sum(p.numel() for p in openflamingo_trainable(model)) == 1_309_919_248
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_309_919_248


def test_new_embedding_rows_are_the_mean_of_the_old_ones():
    model, _tokenizer = tiny_model("llama")
    emb = model.lang_encoder.get_input_embeddings().weight
    base = model.special.end_of_chunk
    assert (model.special.end_of_chunk, model.special.image, model.special.pad) == (base, base + 1, base + 2)
    torch.testing.assert_close(emb[base:], emb[:base].mean(0, keepdim=True).expand(3, -1))
    head = model.lang_encoder.get_output_embeddings().weight
    torch.testing.assert_close(head[base:], head[:base].mean(0, keepdim=True).expand(3, -1))


def test_everything_is_frozen_after_build():
    model, _ = tiny_model("llama")
    assert not any(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------------------------ bad input
def test_wrong_image_rank_is_a_clear_error():
    model, tokenizer = tiny_model("llama")
    with pytest.raises(ValueError, match=r"images must have shape \[batch, images, frames, 3, H, W\].*4-d"):
        model(prompt_ids(tokenizer), images=random_images(2))


def test_more_image_tokens_than_images_is_a_clear_error():
    model, tokenizer = tiny_model("llama")
    with pytest.raises(ValueError, match="row 0 has 2 <image> tokens but 1 images"):
        model(prompt_ids(tokenizer), images=random_images(1)[None])


def test_wrong_image_size_is_a_clear_error():
    model, tokenizer = tiny_model("llama")
    with pytest.raises(ValueError, match=r"3 x 32 x 32.*\(3, 64, 64\)"):
        model(prompt_ids(tokenizer), images=torch.zeros(1, 2, 1, 3, 64, 64))


def test_unknown_lm_family_names_the_fix():
    cfg = tiny_config("llama")
    lm = build_language_model(cfg.lm)
    lm.config.model_type = "my_new_lm"
    with pytest.raises(ValueError, match=r"lm\.decoder_layers_path: 'model\.layers'"):
        decoder_layers(lm)
    assert decoder_layers(lm, "model.layers")[0] == "model.layers"


def test_calling_the_bare_lm_of_a_flamingo_is_a_clear_error():
    model, tokenizer = tiny_model("llama")
    with pytest.raises(RuntimeError, match=r"outside Flamingo\.forward"):
        model.lang_encoder(input_ids=prompt_ids(tokenizer))


# ------------------------------------------------------------------------------------------------ save/load
@pytest.mark.parametrize(("family", "mask"), [("llama", "following"), ("mpt", "previous")])
def test_save_and_load_round_trip_keeps_logits_and_media_mask(tmp_path, family, mask):
    model, tokenizer = tiny_model(family, mask)
    save_pretrained(model, tokenizer, tmp_path / "m")
    loaded, loaded_tok = load_pretrained(tmp_path / "m")
    assert loaded.config.cross_attention.media_mask == mask
    assert len(loaded_tok) == len(tokenizer)
    ids, images = prompt_ids(tokenizer), random_images(2)[None]
    with torch.no_grad():
        assert torch.equal(loaded(ids, images=images).logits, model(ids, images=images).logits)


def test_grown_latents_keep_the_trained_ones_and_save_and_load_grown(tmp_path):
    model, tokenizer = tiny_model()
    before = model.perceiver.latents.detach().clone()
    model.grow_latents(before.shape[0] + 4, seed=3)
    grown = model.perceiver.latents.detach()
    assert grown.shape == (before.shape[0] + 4, before.shape[1]) and torch.equal(grown[: before.shape[0]], before)
    torch.manual_seed(0)  # the new latents come from the seed alone, not from the global generator
    again, _ = tiny_model()
    again.grow_latents(before.shape[0] + 4, seed=3)
    assert torch.equal(again.perceiver.latents, model.perceiver.latents)
    assert model.config.perceiver.num_latents == before.shape[0] + 4
    loaded, _ = load_pretrained(save_pretrained(model, tokenizer, tmp_path / "grown"))
    assert torch.equal(loaded.perceiver.latents, model.perceiver.latents)
    with pytest.raises(ValueError, match="can grow to 2 only if"):
        model.grow_latents(2)
    with pytest.raises(ValueError, match="cannot add -1 latents"):
        model.perceiver.add_latents(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_lm_cache_goes_by_the_name_this_transformers_takes(family):
    model, tokenizer = tiny_model(family)
    ids = prompt_ids(tokenizer)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        out = model(ids, images=random_images(2)[None], use_cache=True)
        model(ids, images=random_images(2)[None])  # training-style call: no cache at all
    assert not [str(w.message) for w in caught if "past_key_values" in str(w.message)]
    assert out.cache is not None and out.cache.kv.get_seq_length() == ids.shape[1]


def test_lm_cache_argument_follows_the_forward_signature():
    class Before524(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=None): ...

    class Since524(torch.nn.Module):
        def forward(self, input_ids, cache=None, use_cache=None): ...

    assert lm_cache_argument(Before524()) == "past_key_values"
    assert lm_cache_argument(Since524()) == "cache"
