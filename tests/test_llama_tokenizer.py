"""mmgpt.llama_tokenizer: a tiny SentencePiece model trained here with LLaMA's settings, read as the originals did.

The oracle is SentencePiece itself (per segment) and, for text with added tokens, ids recorded from transformers
4.28.1's slow ``LlamaTokenizer`` (the version MiniGPT-4 and mPLUG-Owl ran) on the same model and folder layouts.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import sentencepiece
from sentencepiece import sentencepiece_model_pb2
from transformers import AutoTokenizer

from mmgpt.llama_tokenizer import load_sentencepiece_tokenizer, sentencepiece_mismatches

# LLaMA's trainer_spec / normalizer_spec (printed from its tokenizer.model), with a tiny vocabulary.
LLAMA_TRAINER = dict(
    model_type="bpe",
    vocab_size=600,
    character_coverage=0.99995,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    split_by_number=True,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    byte_fallback=True,
    max_sentencepiece_length=16,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    vocabulary_output_piece_score=True,
    hard_vocab_limit=True,
    num_threads=1,
    minloglevel=2,
)
PHRASES = [
    "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: ",
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you.",
    "The following is a conversation between a curious human and AI assistant.\nHuman: <image>\nHuman: What?\nAI: ",
    "The quick brown fox jumps over the lazy dog.###",
    "café naïve résumé Zürich 北京欢迎你 你好世界 emoji 😀 🚀",
    "numbers 12345 and 2023-04-19, then    four spaces\tand a tab",
]
# Vicuna v0 (FastChat <= 0.1.10): the slow tokenizer plus tokenizer.add_special_tokens({"pad_token": "[PAD]"}),
# saved by save_pretrained; these are the files transformers 4.28 writes for it (ids shifted to the tiny vocab).
_PIECE = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
VICUNA_FILES = {
    "added_tokens.json": {"[PAD]": 600},
    "special_tokens_map.json": {
        "bos_token": {"content": "<s>", **_PIECE},
        "eos_token": {"content": "</s>", **_PIECE},
        "pad_token": "[PAD]",
        "unk_token": {"content": "<unk>", **_PIECE},
    },
    "tokenizer_config.json": {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {"__type": "AddedToken", "content": "<s>", **_PIECE},
        "clean_up_tokenization_spaces": False,
        "eos_token": {"__type": "AddedToken", "content": "</s>", **_PIECE},
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": {"__type": "AddedToken", "content": "<unk>", **_PIECE},
    },
}
# mplug-owl-llama-7b's tokenizer class (tokenization_mplug_owl.py): pad <unk>, no BOS/EOS by default.
OWL_FILES = {"tokenizer_config.json": {"tokenizer_class": "MplugOwlTokenizer", "legacy": False}}


def _write(folder: Path, model: bytes, files: dict[str, dict]) -> Path:
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(model)
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    return folder


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    lines = [" ".join(PHRASES[(i + j) % len(PHRASES)] for j in range(3)) + f" {i}" for i in range(120)]
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, **LLAMA_TRAINER)
    return out.getvalue()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, model_bytes: bytes) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llama_tokenizer")
    return {
        "llama": _write(root / "llama", model_bytes, {}),
        "vicuna": _write(root / "vicuna", model_bytes, VICUNA_FILES),
        "owl": _write(root / "owl", model_bytes, OWL_FILES),
    }


@pytest.fixture(scope="module")
def sp(model_bytes: bytes) -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_proto=model_bytes)


def _segments() -> list[str]:
    """Named edge cases, MiniGPT-4 / mPLUG-Owl chunks, and seeded random text."""
    named = ["", " ", "  ", "\n", "\n\n", " hello", "hello ", "  two  ", "###", " ###", "a###", "▁", "▁x", "x▁ y"]
    named += [chunk for phrase in PHRASES for chunk in phrase.split("<ImageHere>")]
    named += ["\nHuman: ", "AI: ", "\nAI: ", "Human: <image>", " \t\r\u00a0\u2028", "Ωmega ∑ 😺 🐙 ü 가"]
    alphabet = [*"abcxyzHAI #:\n\t▁0123456789.<>/éü北京😀Ω가\u00a0\r ", "Human", "###", "<Img>", "image", "the "]
    rng = random.Random(0)
    return named + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(1500)]


@pytest.mark.parametrize("layout", ["llama", "vicuna", "owl"])
def test_each_segment_encodes_as_sentencepiece(folders, sp, layout):
    tokenizer = load_sentencepiece_tokenizer(folders[layout])
    texts = _segments()
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert ids == [sp.encode(text) for text in texts]
    # the data pipeline may call the Rust backend directly; it must give the same ids
    direct = [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    assert direct == ids


def test_minigpt4_prompt_golden_ids(folders, sp):
    tokenizer = load_sentencepiece_tokenizer(folders["vicuna"])
    stage2 = "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: "  # prompt_template
    before, after = stage2.split("<ImageHere>")
    ids = tokenizer([before, after], add_special_tokens=False)["input_ids"]
    assert [tokenizer.convert_ids_to_tokens(i) for i in ids] == [
        ["▁###", "Human", ":", "▁<", "Img", ">"],
        ["▁<", "/", "Img", ">", "▁Describe", "▁this", "▁image", "▁in", "▁detail", ".", "▁###", "Assistant", ":", "▁"],
    ]
    golden = [[309, 290, 547, 286, 273, 549], [286, 566, 273, 549, 459, 436, 291, 391, 449, 551, 309, 457, 547, 529]]
    assert ids == golden
    assert ids == [sp.encode(before), sp.encode(after)]
    # the dummy prefix makes "###" "▁###" at a segment start; inside text it is merged differently
    inside = tokenizer.encode("detail.###", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(inside) == ["▁detail", ".###"]


def test_special_and_added_token_ids(folders):
    llama, vicuna, owl = (load_sentencepiece_tokenizer(folders[k]) for k in ("llama", "vicuna", "owl"))
    for tokenizer in (llama, vicuna, owl):
        assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
        assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    assert (len(llama), llama.pad_token_id) == (600, None)
    assert (len(vicuna), vicuna.pad_token, vicuna.pad_token_id) == (601, "[PAD]", 600)
    assert (len(owl), owl.pad_token, owl.pad_token_id) == (600, "<unk>", 0)
    hello = vicuna("hello", add_special_tokens=False)["input_ids"]
    assert llama("hello")["input_ids"] == vicuna("hello")["input_ids"] == [1, *hello]  # LLaMA: BOS, no EOS
    assert owl("hello")["input_ids"] == hello  # MplugOwlTokenizer: neither


def test_text_with_added_tokens_matches_transformers_4_28(folders):
    """Split on <s>, </s>, [PAD]; each chunk gets its own dummy prefix; a plain-string token eats nearby spaces."""
    tokenizer = load_sentencepiece_tokenizer(folders["vicuna"])
    recorded = {  # transformers 4.28.1, LlamaTokenizer.from_pretrained(<vicuna folder>), add_special_tokens=False
        "a [PAD] b": [261, 600, 529, 546],
        "x[PAD]y": [529, 584, 600, 357],
        "<s>hi</s> there": [1, 353, 532, 2, 529, 276, 345],
        " <s> x": [267, 1, 267, 584],
        "a</s>": [261, 2],
        "\nHuman: what [PAD]\n\nAI:</s>": [529, 557, 290, 547, 529, 554, 541, 294, 600, 385, 547, 2],
    }
    assert {text: tokenizer(text, add_special_tokens=False)["input_ids"] for text in recorded} == recorded


def test_pad_token_without_added_tokens_file_is_appended(tmp_path, model_bytes):
    files = {k: v for k, v in VICUNA_FILES.items() if k != "added_tokens.json"}
    tokenizer = load_sentencepiece_tokenizer(_write(tmp_path / "v", model_bytes, files))
    assert (len(tokenizer), tokenizer.pad_token_id) == (601, 600)  # as transformers 4.28 added it


def test_empty_special_tokens_of_old_conversions_mean_llamas_pieces(tmp_path, model_bytes):
    config = {"bos_token": "", "eos_token": "", "unk_token": "", "tokenizer_class": "LLaMATokenizer"}
    tokenizer = load_sentencepiece_tokenizer(_write(tmp_path / "old", model_bytes, {"tokenizer_config.json": config}))
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)


def test_decode_round_trip(folders, sp):
    tokenizer = load_sentencepiece_tokenizer(folders["llama"])
    for text in _segments()[:400]:
        ids = sp.encode(text)
        assert tokenizer.decode(ids) == sp.decode(ids)
        assert tokenizer.decode(ids) == text.replace("▁", " ")  # SentencePiece reads a literal "▁" as a space


def test_file_path_and_save_pretrained_round_trip(folders, tmp_path):
    tokenizer = load_sentencepiece_tokenizer(folders["vicuna"] / "tokenizer.model")
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    texts = [*_segments()[:300], "a [PAD] b", "<s>hi</s> there"]
    assert reloaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert (len(reloaded), reloaded.pad_token_id, reloaded.bos_token_id) == (601, 600, 1)


def test_mismatch_report_names_texts(folders, sp):
    tokenizer = load_sentencepiece_tokenizer(folders["llama"])
    model_file = folders["llama"] / "tokenizer.model"
    assert sentencepiece_mismatches(tokenizer, model_file, [" hello", "x"]) == []
    tokenizer.backend_tokenizer.normalizer = None  # what a tokenizer without the dummy prefix does
    assert [text for text, _, _ in sentencepiece_mismatches(tokenizer, model_file, [" hello", "x", ""])] == [
        " hello",
        "x",
    ]


def test_errors_name_the_file_and_the_fix(tmp_path, model_bytes):
    with pytest.raises(FileNotFoundError, match=r"nowhere/tokenizer\.model does not exist"):
        load_sentencepiece_tokenizer(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        load_sentencepiece_tokenizer(tmp_path / "junk")
    proto = sentencepiece_model_pb2.ModelProto.FromString(model_bytes)
    proto.normalizer_spec.remove_extra_whitespaces = True
    with pytest.raises(ValueError, match="remove_extra_whitespaces"):
        load_sentencepiece_tokenizer(_write(tmp_path / "t5ish", proto.SerializeToString(), {}))
    gap = {"added_tokens.json": {"[PAD]": 601}}
    with pytest.raises(ValueError, match=r"added_tokens\.json.*ids \[600\]"):
        load_sentencepiece_tokenizer(_write(tmp_path / "gap", model_bytes, gap))
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "tokenizer.model").write_bytes(model_bytes)
    (tmp_path / "badjson" / "tokenizer_config.json").write_text("{")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json is not valid JSON"):
        load_sentencepiece_tokenizer(tmp_path / "badjson")
