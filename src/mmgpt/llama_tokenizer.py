"""Read a LLaMA / Vicuna SentencePiece ``tokenizer.model`` so that it encodes exactly as the originals did.

MiniGPT-4 (Vicuna v0) and mPLUG-Owl (LLaMA-7B) ship only ``tokenizer.model`` (plus ``tokenizer_config.json``,
``special_tokens_map.json`` and, for Vicuna v0, ``added_tokens.json`` = ``{"[PAD]": 32000}``). Both used the slow
``LlamaTokenizer`` of transformers 4.28 and tokenised every text segment on its own with ``add_special_tokens=False``:
the text is split on added/special tokens and each piece is ``SentencePieceProcessor.encode``-d, so each gets its own
dummy prefix "▁" - also a segment that starts with a space (``" hi"`` -> ``"▁▁hi"``) or with "▁".

transformers 5.x has no slow LLaMA tokenizer. Its ``LlamaTokenizer`` (= ``LlamaTokenizerFast``), which
``AutoTokenizer`` picks for these folders (``tokenizer_class: LlamaTokenizer``), prepends the "▁" through a
``Metaspace`` pre-tokenizer that skips it when the text already starts with a space or "▁": one "▁" fewer than
SentencePiece for such segments (``legacy=False`` also drops it after every special token). The tokenizer built here
prepends unconditionally (the SentencePiece rule; nothing for empty text) and matches added tokens on the raw text,
so ``tokenizer(segments, add_special_tokens=False)["input_ids"]`` - and the Rust backend's ``encode_batch_fast`` -
equals ``SentencePieceProcessor.encode`` per segment; :func:`load_sentencepiece_tokenizer` checks that on load.
Added tokens keep 4.28's rules: ids from ``added_tokens.json``; a token written as a plain string eats the spaces
on both sides (4.28 stripped around them), one written as an AddedToken dict keeps its flags, ``<s>``/``</s>``/
``<unk>`` never strip. ``tokenizer_config.json``'s ``legacy`` and ``tokenizer_class`` are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, normalizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

TOKENIZER_MODEL = "tokenizer.model"
SPIECE_UNDERLINE = "▁"
_NORMAL, _USER_DEFINED = 1, 4
# The settings of LLaMA's tokenizer.model (LLaMA 1 and 2; Vicuna and mPLUG-Owl reuse it unchanged) that decide
# how text is encoded; the tokenizer built here reproduces exactly these.
_LLAMA_SETTINGS: dict[str, Any] = {
    "model_type": "BPE",
    "byte_fallback": True,
    "treat_whitespace_as_suffix": False,
    "user_defined_pieces": False,
    "normalization": "identity",
    "precompiled_charsmap": False,
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "escape_whitespaces": True,
}
# What the originals' tokenizer classes do when tokenizer_config.json says nothing (mPLUG-Owl's own subclass).
_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "MplugOwlTokenizer": {"add_bos_token": False, "add_eos_token": False, "pad_token": "<unk>"},
}
# Segments that exercise every rule above; checked against SentencePiece itself on every load.
_PROBES = ["", " ", "\n", " hi", "  two ", "\nAI: ", "###Human: <Img>", "▁x y", "Zürich 北京 😀 2023\t\u00a0"]


def load_sentencepiece_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A fast transformers tokenizer for a folder (or file) holding a LLaMA SentencePiece ``tokenizer.model``.

    Encodes exactly as transformers 4.28's slow ``LlamaTokenizer`` loaded from the same folder (module docstring):
    per segment, ``tokenizer(text, add_special_tokens=False)`` equals ``SentencePieceProcessor.encode(text)``.
    ``<unk>``/``<s>``/``</s>`` keep their SentencePiece ids (0/1/2 for LLaMA); added tokens keep their ids;
    ``add_bos_token``/``add_eos_token`` come from ``tokenizer_config.json`` (LLaMA's default: BOS only). Offline:
    nothing is looked up on the Hub. ``save_pretrained`` writes a ``tokenizer.json`` that reloads identically.
    ``decode`` equals 4.28's with ``skip_special_tokens=True`` (4.28 put a space before each kept special token).
    """
    folder, model_file = _locate(Path(path).expanduser())
    proto = _read_proto(model_file)
    _check_llama_settings(proto, model_file)
    config = _read_json(folder / "tokenizer_config.json")
    special = {**config, **_read_json(folder / "special_tokens_map.json")}  # 4.28: the map wins
    defaults = {"add_bos_token": True, "add_eos_token": False, **_CLASS_DEFAULTS.get(config.get("tokenizer_class"), {})}
    named = _named_tokens(special, defaults, proto.trainer_spec)
    by_content: dict[str, AddedToken] = {}
    for token in named.values():  # mPLUG-Owl's pad is <unk>: the first definition wins
        by_content.setdefault(token.content, token)
    pieces = {p.piece for p in proto.pieces}
    extra = special.get("additional_special_tokens") or []
    backend = _backend(proto)
    backend.add_special_tokens([t for t in by_content.values() if t.content in pieces])  # matched in raw text
    backend.add_tokens(_added_tokens(folder, config, by_content, extra, len(proto.pieces), pieces))
    # A named token in no file (e.g. pad_token "[PAD]" without added_tokens.json) goes last, as 4.28 added it.
    backend.add_special_tokens([t for t in by_content.values() if backend.token_to_id(t.content) is None])
    options = {key: config[key] for key in ("model_max_length", "padding_side", "truncation_side") if key in config}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{key: token.content for key, token in named.items()},
        add_bos_token=bool(config.get("add_bos_token", defaults["add_bos_token"])),
        add_eos_token=bool(config.get("add_eos_token", defaults["add_eos_token"])),
        clean_up_tokenization_spaces=False,
        **options,
    )
    tokenizer.name_or_path = str(folder)
    _check_against_sentencepiece(tokenizer, model_file, _PROBES)
    return tokenizer


def sentencepiece_mismatches(
    tokenizer: PreTrainedTokenizerBase, model_file: str | Path, texts: list[str]
) -> list[tuple[str, list[int], list[int]]]:
    """``(text, tokenizer ids, SentencePiece ids)`` for each text the tokenizer encodes unlike the originals.

    The originals' per-segment ids are ``SentencePieceProcessor.encode(text)`` for text without added tokens;
    use this to check any tokenizer (e.g. one from ``AutoTokenizer``) before training on its segment ids.
    """
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    ours = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [(t, ids, processor.encode(t)) for t, ids in zip(texts, ours, strict=True) if ids != processor.encode(t)]


def _locate(path: Path) -> tuple[Path, Path]:
    folder, model_file = (path.parent, path) if path.is_file() else (path, path / TOKENIZER_MODEL)
    if not model_file.is_file():
        raise FileNotFoundError(
            f"{model_file} does not exist; point the tokenizer path at a folder holding LLaMA's SentencePiece "
            f"{TOKENIZER_MODEL} (e.g. the Vicuna or mplug-owl-llama-7b download) or at the file itself"
        )
    return folder, model_file


def _read_proto(model_file: Path) -> Any:  # sentencepiece_model_pb2.ModelProto
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as error:
        raise ImportError(
            f"reading {model_file} needs the sentencepiece and protobuf packages ({error}); "
            "run `pip install sentencepiece protobuf` (both are mmgpt dependencies)"
        ) from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as error:  # protobuf raises its own DecodeError
        raise ValueError(f"{model_file} is not a SentencePiece model ({error}); use LLaMA's tokenizer.model") from None
    if not proto.pieces:
        raise ValueError(f"{model_file} is not a SentencePiece model (no pieces); use LLaMA's tokenizer.model")
    return proto


def _check_llama_settings(proto: Any, model_file: Path) -> None:
    """Only LLaMA's SentencePiece settings are reproduced; anything else would encode differently."""
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    found = {
        "model_type": trainer.ModelType.Name(trainer.model_type),
        "byte_fallback": trainer.byte_fallback,
        "treat_whitespace_as_suffix": trainer.treat_whitespace_as_suffix,
        "user_defined_pieces": any(p.type == _USER_DEFINED for p in proto.pieces),
        "normalization": normalizer.name,
        "precompiled_charsmap": bool(normalizer.precompiled_charsmap),
        "add_dummy_prefix": normalizer.add_dummy_prefix,
        "remove_extra_whitespaces": normalizer.remove_extra_whitespaces,
        "escape_whitespaces": normalizer.escape_whitespaces,
    }
    wrong = {key: value for key, value in found.items() if value != _LLAMA_SETTINGS[key]}
    if wrong:
        raise ValueError(
            f"{model_file} is not a LLaMA-style SentencePiece model: it has {wrong}, LLaMA {_LLAMA_SETTINGS}; "
            "load other tokenizers with transformers.AutoTokenizer"
        )


def _backend(proto: Any) -> Tokenizer:
    """SentencePiece's BPE as a ``tokenizers`` model: merges ranked by the merged piece's score, then its id."""
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    normal = {p.piece: (-p.score, i) for i, p in enumerate(proto.pieces) if p.type == _NORMAL}
    ranked = sorted(
        (rank, piece[:cut], piece[cut:])
        for piece, rank in normal.items()
        for cut in range(1, len(piece))
        if piece[:cut] in normal and piece[cut:] in normal
    )
    model = BPE(
        vocab=vocab,
        merges=[(left, right) for _, left, right in ranked],
        unk_token=proto.trainer_spec.unk_piece,
        fuse_unk=True,
        byte_fallback=True,
    )
    backend = Tokenizer(model)
    # SentencePiece: dummy prefix on every non-empty text (even one starting with a space), then spaces -> "▁".
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE_UNDERLINE), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return backend


def _named_tokens(special: dict, defaults: dict, spec: Any) -> dict[str, AddedToken]:
    """unk/bos/eos (LLaMA's pieces; 4.28 wrapped them without stripping) and the pad token, if any."""
    named = {
        key: _token(special.get(key), piece, strip=False, special=True)
        for key, piece in (("unk_token", spec.unk_piece), ("bos_token", spec.bos_piece), ("eos_token", spec.eos_piece))
    }
    if pad := special.get("pad_token") or defaults.get("pad_token"):
        named["pad_token"] = _token(pad, "", strip=True, special=True)
    return named


def _token(value: Any, default: str, *, strip: bool, special: bool) -> AddedToken:
    """A token as 4.28 held it, matched on the raw text (``normalized=False``) so each chunk gets its own "▁".

    ``value`` is a plain string (``strip`` says whether 4.28 stripped spaces around it), an AddedToken dict (its
    flags win) or empty (pre-4.28 LLaMA conversions wrote ``""``: the model's own piece ``default``).
    """
    if isinstance(value, dict):  # {"content": ..., "lstrip": ..., ...}, with or without "__type"
        lstrip, rstrip = bool(value.get("lstrip", False)), bool(value.get("rstrip", False))
        return AddedToken(str(value["content"]), lstrip=lstrip, rstrip=rstrip, normalized=False, special=special)
    return AddedToken(str(value or default), lstrip=strip, rstrip=strip, normalized=False, special=special)


def _added_tokens(
    folder: Path, config: dict, named: dict[str, AddedToken], extra: list, size: int, pieces: set[str]
) -> list[AddedToken]:
    """Tokens beyond the SentencePiece vocabulary, in id order; their ids must follow it without gaps."""
    specials = set(named) | {v["content"] if isinstance(v, dict) else str(v) for v in extra}
    by_id: dict[int, AddedToken] = {}
    file = folder / "added_tokens.json"
    for content, index in _read_json(file).items():  # {"[PAD]": 32000}: plain strings, stripped around in 4.28
        by_id[int(index)] = named.get(content) or _token(content, "", strip=True, special=content in specials)
    for index, value in config.get("added_tokens_decoder", {}).items():  # the layout of transformers >= 4.34
        if int(index) >= size:
            by_id[int(index)] = _token(value, "", strip=False, special=bool(value.get("special", True)))
    expected = list(range(size, size + len(by_id)))
    if sorted(by_id) != expected or any(t.content in pieces for t in by_id.values()):
        listed = {i: t.content for i, t in sorted(by_id.items())}
        raise ValueError(
            f"added tokens {listed} in {file} / tokenizer_config.json must be new tokens with ids {expected} "
            f"(right after the {size} pieces of {TOKENIZER_MODEL}); fix the file or remove it"
        )
    return [by_id[i] for i in expected]


def _read_json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON ({error}); fix or delete it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} holds a {type(data).__name__}, not a JSON object; fix or delete it")
    return data


def _check_against_sentencepiece(tokenizer: PreTrainedTokenizerBase, model_file: Path, texts: list[str]) -> None:
    wrong = sentencepiece_mismatches(tokenizer, model_file, texts)
    if wrong:
        text, ours, theirs = wrong[0]
        raise RuntimeError(
            f"the tokenizer built from {model_file} encodes {text!r} as {ours}, SentencePiece as {theirs}; "
            "this tokenizers/transformers version changed behaviour - please report it with both versions"
        )
