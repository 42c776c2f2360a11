"""Text tokenizers: the common interface, the Hugging Face (Qwen2) wrapper and the folder loader.

Use :class:`HFTextTokenizer` for models initialised from Qwen2/Qwen2.5 checkpoints and
:class:`SentencePieceTextTokenizer` for tiny models; :func:`load_text_tokenizer` picks the right
one from the files in a folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2Tokenizer

from emcot.tokenizers.text_base import (
    ACTION_END,
    ACTION_START,
    DEFAULT_AGENT_TEMPLATE,
    DEFAULT_QUESTION_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    IM_START,
    MARKERS,
    METADATA_FILE,
    THINK_END,
    THINK_START,
    VISION_END,
    VISION_START,
    PromptTemplate,
    SpecialTokenIds,
    TextTokenizer,
    ids_to_list,
    read_metadata,
)
from emcot.tokenizers.text_sentencepiece import MODEL_FILE as SENTENCEPIECE_MODEL_FILE
from emcot.tokenizers.text_sentencepiece import SentencePieceTextTokenizer
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, trainers

__all__ = [
    "ACTION_END",
    "ACTION_START",
    "DEFAULT_AGENT_TEMPLATE",
    "DEFAULT_QUESTION_TEMPLATE",
    "ENDOFTEXT",
    "IM_END",
    "IM_START",
    "MARKERS",
    "THINK_END",
    "THINK_START",
    "VISION_END",
    "VISION_START",
    "HFTextTokenizer",
    "PromptTemplate",
    "SentencePieceTextTokenizer",
    "SpecialTokenIds",
    "TextTokenizer",
    "load_text_tokenizer",
]

# Qwen2's pre-tokenisation pattern (contractions, letter runs, single digits, punctuation,
# newlines, whitespace), used when training a tiny tokenizer so it splits text like the real one.
_QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Special tokens every Qwen2.5 vocabulary already carries; a trained tiny tokenizer gets them too.
_QWEN_BASE_SPECIALS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END)
_HF_FILES = ("tokenizer.json", "vocab.json")


class HFTextTokenizer(TextTokenizer):
    """A Hugging Face tokenizer (Qwen2/Qwen2.5 byte-level BPE) with all emcot markers ensured.

    Markers the base vocabulary already has keep their ids; missing ones are appended (in place,
    to the wrapped tokenizer) as special added tokens. ``num_added`` says how many were appended and ``required_vocab_size`` (largest
    id + 1) how many embedding rows a model needs.
    """

    kind = "hf"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: PromptTemplate | None = None) -> None:
        if len(tokenizer) <= len(_QWEN_BASE_SPECIALS):
            # Guards the transformers trap where Qwen2Tokenizer(vocab_file=...) builds an empty vocab.
            raise ValueError(
                f"The Hugging Face tokenizer has only {len(tokenizer)} tokens; build it with "
                "AutoTokenizer.from_pretrained(folder) or Qwen2Tokenizer(vocab=..., merges=...)."
            )
        self._tok = tokenizer
        self.template = template or PromptTemplate()
        vocab = tokenizer.get_vocab()
        missing = [m for m in MARKERS if m not in vocab]
        if missing:
            tokenizer.add_tokens(
                [AddedToken(m, special=True, normalized=False) for m in missing], special_tokens=True
            )
        self.num_added = len(missing)
        vocab = tokenizer.get_vocab()
        lookup = {m: vocab[m] for m in MARKERS}
        for marker, idx in lookup.items():
            # A marker that exists only as an ordinary BPE entry would not be cut out of running
            # text as one id; refuse such a vocabulary instead of silently mis-tokenising.
            if self.encode(marker) != [idx]:
                raise ValueError(
                    f"Marker {marker!r} (id {idx}) is not an atomic added token in this tokenizer; "
                    "register it with tokenizer.add_tokens(..., special_tokens=True) before wrapping."
                )
        self.special = SpecialTokenIds.from_lookup(lookup)
        self._special_ids = self.special.all_ids()
        self.required_vocab_size = max(vocab.values()) + 1

    @property
    def hf_tokenizer(self) -> PreTrainedTokenizerBase:
        """The wrapped Hugging Face tokenizer."""
        return self._tok

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, template: PromptTemplate | None = None):
        """Load a Hugging Face tokenizer folder with ``AutoTokenizer`` and ensure the markers."""
        path = Path(folder)
        if not any((path / name).is_file() for name in _HF_FILES):
            raise ValueError(
                f"{path} holds no Hugging Face tokenizer (expected one of {list(_HF_FILES)}); "
                "pass a Qwen2/Qwen2.5 checkpoint or tokenizer folder."
            )
        return cls(AutoTokenizer.from_pretrained(str(path)), template=template)

    @classmethod
    def train(
        cls,
        corpus: Iterable[str],
        vocab_size: int,
        out_dir: str | os.PathLike | None = None,
        template: PromptTemplate | None = None,
    ) -> HFTextTokenizer:
        """Train a tiny Qwen2-format byte-level BPE tokenizer offline (saved to ``out_dir`` if given).

        The result is a genuine ``Qwen2Tokenizer`` with Qwen2.5's base special tokens, so tests and
        tiny models exercise the same code path as a real Qwen2.5 checkpoint.
        """
        texts = [str(t) for t in corpus if t]
        if not texts:
            raise ValueError("corpus is empty; pass at least one non-empty string to train on.")
        if vocab_size <= 256 + len(MARKERS):
            raise ValueError(
                f"vocab_size={vocab_size} is too small for a byte-level BPE (256 bytes + markers); "
                f"pass vocab_size > {256 + len(MARKERS)}."
            )
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_QWEN2_SPLIT_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - len(_QWEN_BASE_SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(texts, trainer=trainer)
        model = json.loads(bpe.to_str())["model"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
        # transformers 5 takes merge pairs at run time; its annotation still names only strings.
        hf = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)  # type: ignore[arg-type]
        hf.add_tokens(
            [AddedToken(s, special=True, normalized=False) for s in _QWEN_BASE_SPECIALS], special_tokens=True
        )
        tokenizer = cls(hf, template=template)
        if out_dir is not None:
            tokenizer.save_pretrained(out_dir)
        return tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; marker strings become their single ids, nothing is added."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}.")
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; markers are dropped when ``skip_special_tokens``."""
        ids = ids_to_list(ids)
        size = len(self)
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise ValueError(f"Token ids {bad[:5]} are outside the vocabulary [0, {size}).")
        if skip_special_tokens:
            # Filter our markers explicitly: a base vocabulary may not flag all of them as special.
            ids = [i for i in ids if i not in self._special_ids]
        # No clean-up of spaces, so byte-level BPE round trips exactly.
        text = self._tok.decode(
            ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )
        assert isinstance(text, str)  # one id list decodes to one string
        return text

    def __len__(self) -> int:
        return len(self._tok)

    def _save_files(self, folder: Path) -> None:
        self._tok.save_pretrained(str(folder))


def load_text_tokenizer(folder: str | os.PathLike) -> TextTokenizer:
    """Load the text tokenizer saved in ``folder``, picking the implementation from its files."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"Tokenizer folder {path} does not exist; pass the folder given to save_pretrained.")
    meta = read_metadata(path)
    template = PromptTemplate.from_dict(meta["template"]) if meta and "template" in meta else None
    kind = meta.get("kind") if meta else None
    if kind is None:
        if any((path / name).is_file() for name in _HF_FILES):
            kind = HFTextTokenizer.kind
        elif (path / SENTENCEPIECE_MODEL_FILE).is_file():
            kind = SentencePieceTextTokenizer.kind
    if kind == HFTextTokenizer.kind:
        return HFTextTokenizer.from_pretrained(path, template=template)
    if kind == SentencePieceTextTokenizer.kind:
        return SentencePieceTextTokenizer.from_pretrained(path, template=template)
    raise ValueError(
        f"{path} holds no known text tokenizer: expected {METADATA_FILE}, a Hugging Face tokenizer "
        f"({' or '.join(_HF_FILES)}) or {SENTENCEPIECE_MODEL_FILE}; save one with save_pretrained()."
    )
