import threading

import pytest
import torch

from mmgpt.generate import GenerationConfig, generate, next_tokens, stream
from tests.model.conftest import random_images, tiny_model

PROMPTS = {
    0: "Describe the image.",
    1: "<image>what color is the circle?",
    3: "<image>a red circle<|endofchunk|><image>a blue square<|endofchunk|><image>what is above?",
}


def greedy_by_recomputation(model, prompt, images, n):
    """Reference: run the whole sequence again at every step, no cache of any kind."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            kwargs = {"images": images[None]} if images is not None else {}
            logits = model(torch.tensor([ids]), **kwargs).logits[0, -1].clone()
            logits[[model.special.image, model.special.pad]] = float("-inf")
            token = int(logits.argmax())
            out.append(token)
            ids.append(token)
    return out


@pytest.fixture(scope="module", params=["previous", "following"])
def model_and_tokenizer(request):
    return tiny_model("llama", request.param)


@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_cached_greedy_equals_full_recomputation(model_and_tokenizer, n_images):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer(PROMPTS[n_images]).input_ids
    images = random_images(n_images) if n_images else None
    config = GenerationConfig(max_new_tokens=12, stop_token_ids=())
    eos = tokenizer.eos_token_id
    (gen,) = generate(model, tokenizer, [prompt], images=[images], config=config)
    expected = greedy_by_recomputation(model, prompt, images, 12)
    if eos in expected:
        expected = expected[: expected.index(eos)]
    assert gen.token_ids == expected


def test_padded_batch_of_two_equals_single_rows(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [tokenizer(PROMPTS[3]).input_ids, tokenizer(PROMPTS[1]).input_ids]
    images = [random_images(3, seed=5), random_images(1, seed=6)]
    config = GenerationConfig(max_new_tokens=10)
    batch = generate(model, tokenizer, prompts, images=images, config=config)
    for prompt, img, got in zip(prompts, images, batch, strict=True):
        (alone,) = generate(model, tokenizer, [prompt], images=[img], config=config)
        assert got.token_ids == alone.token_ids
        assert got.token_ids == greedy_by_recomputation(model, prompt, img, 10)[: len(got.token_ids)]


def test_batch_with_different_image_counts_including_zero():
    model, tokenizer = tiny_model("qwen2", "previous")
    prompts = [tokenizer(PROMPTS[n]).input_ids for n in (0, 3, 1)]
    images = [None, random_images(3, seed=1), random_images(1, seed=2)]
    config = GenerationConfig(max_new_tokens=8)
    batch = generate(model, tokenizer, prompts, images=images, config=config)
    for prompt, img, got in zip(prompts, images, batch, strict=True):
        assert got.token_ids == greedy_by_recomputation(model, prompt, img, 8)[: len(got.token_ids)]


def test_two_threads_generating_equal_sequential_runs():
    model, tokenizer = tiny_model("llama", "previous")
    jobs = [
        (tokenizer(PROMPTS[n]).input_ids, random_images(n, seed=s) if n else None) for s, n in enumerate([1, 3, 1, 0])
    ]
    config = GenerationConfig(max_new_tokens=10, temperature=0.9, top_p=0.9, seed=7)
    expected = [generate(model, tokenizer, [p], images=[i], config=config)[0].token_ids for p, i in jobs]
    got: dict[int, list] = {}
    barrier = threading.Barrier(2)

    def work(worker):
        barrier.wait()
        for j in range(worker, len(jobs), 2):
            p, i = jobs[j]
            got[j] = generate(model, tokenizer, [p], images=[i], config=config)[0].token_ids

    threads = [threading.Thread(target=work, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[j] for j in range(len(jobs))] == expected


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model, tokenizer = tiny_model("llama")
    prompt, img = tokenizer(PROMPTS[1]).input_ids, random_images(1)
    cfg = dict(max_new_tokens=16, temperature=1.5)
    a = generate(model, tokenizer, [prompt], images=[img], config=GenerationConfig(seed=1, **cfg))[0]
    b = generate(model, tokenizer, [prompt], images=[img], config=GenerationConfig(seed=1, **cfg))[0]
    c = generate(model, tokenizer, [prompt], images=[img], config=GenerationConfig(seed=2, **cfg))[0]
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    state = torch.random.get_rng_state()
    generate(model, tokenizer, [prompt], images=[img], config=GenerationConfig(**cfg))
    assert torch.equal(torch.random.get_rng_state(), state)  # unseeded sampling leaves the global RNG alone


def test_num_return_sequences_with_images():
    model, tokenizer = tiny_model("llama")
    prompts = [tokenizer(PROMPTS[1]).input_ids, tokenizer(PROMPTS[3]).input_ids]
    images = [random_images(1), random_images(3, seed=3)]
    config = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=0, num_return_sequences=3)
    out = generate(model, tokenizer, prompts, images=images, config=config)
    assert len(out) == 6
    assert [g.prompt_tokens for g in out] == [len(prompts[0])] * 3 + [len(prompts[1])] * 3
    assert len({tuple(g.token_ids) for g in out[:3]}) > 1


def test_stop_token_ids_and_max_new_tokens():
    model, tokenizer = tiny_model("llama")
    prompt, img = tokenizer(PROMPTS[1]).input_ids, random_images(1)
    (free,) = generate(model, tokenizer, [prompt], images=[img], config=GenerationConfig(max_new_tokens=6))
    assert free.finish_reason == "length" and len(free.token_ids) == 6
    stop = free.token_ids[3]
    first = free.token_ids.index(stop)
    (cut,) = generate(
        model,
        tokenizer,
        [prompt],
        images=[img],
        config=GenerationConfig(max_new_tokens=6, stop_token_ids=(stop,)),
    )
    assert cut.finish_reason == "stop"
    assert cut.token_ids == free.token_ids[:first]


def test_stop_strings_cut_the_text():
    model, tokenizer = tiny_model("llama")
    prompt, img = tokenizer(PROMPTS[1]).input_ids, random_images(1)
    (free,) = generate(model, tokenizer, [prompt], images=[img], config=GenerationConfig(max_new_tokens=20))
    needle = free.text[5:8]
    assert needle
    (cut,) = generate(
        model,
        tokenizer,
        [prompt],
        images=[img],
        config=GenerationConfig(max_new_tokens=20, stop_strings=(needle,)),
    )
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(needle)]
    assert len(cut.token_ids) < len(free.token_ids)


@pytest.mark.parametrize("stop_strings", [(), ("zz",), ("e",)])
def test_stream_deltas_join_to_the_generated_text(stop_strings):
    model, tokenizer = tiny_model("llama")
    prompt, img = tokenizer(PROMPTS[1]).input_ids, random_images(1)
    config = GenerationConfig(max_new_tokens=20, temperature=0.8, seed=3, stop_strings=stop_strings)
    (whole,) = generate(model, tokenizer, [prompt], images=[img], config=config)
    deltas = list(stream(model, tokenizer, prompt, images=img, config=config))
    assert "".join(deltas) == whole.text
    assert len(deltas) > 1 or len(whole.token_ids) <= 1


def test_image_and_pad_tokens_are_never_generated():
    model, tokenizer = tiny_model("llama")
    head = model.lang_encoder.get_output_embeddings().weight
    with torch.no_grad():  # make <image> and <PAD> the most likely tokens everywhere
        head[[model.special.image, model.special.pad]] = head[:4].sum(0) * 100
    prompt = tokenizer(PROMPTS[0]).input_ids
    (g,) = generate(model, tokenizer, [prompt], config=GenerationConfig(max_new_tokens=5))
    assert model.special.image not in g.token_ids and model.special.pad not in g.token_ids


def test_sampling_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    seen = torch.tensor([[0]])
    g = torch.Generator().manual_seed(0)
    greedy = GenerationConfig(temperature=0)
    assert next_tokens(logits, seen, greedy, None).tolist() == [0]
    assert next_tokens(logits, seen, GenerationConfig(repetition_penalty=10.0), None).tolist() == [1]
    top1 = GenerationConfig(temperature=1.0, top_k=1)
    assert {int(next_tokens(logits, seen, top1, g)) for _ in range(20)} == {0}
    nucleus = GenerationConfig(temperature=1.0, top_p=0.5)  # p(0) = 0.64 already reaches 0.5
    assert {int(next_tokens(logits, seen, nucleus, g)) for _ in range(20)} == {0}
    wide = GenerationConfig(temperature=1.0, top_p=0.85)  # p = .644, .237, .087, .032: needs tokens 0, 1
    assert {int(next_tokens(logits, seen, wide, g)) for _ in range(200)} == {0, 1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=-1), "temperature=-1"),
        (dict(top_p=0), "top_p=0"),
        (dict(max_new_tokens=0), "max_new_tokens=0"),
        (dict(num_return_sequences=2), "needs sampling"),
    ],
)
def test_bad_generation_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)
