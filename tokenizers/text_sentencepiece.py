"""SentencePiece text tokenizer for tiny models, trained offline and exactly reversible."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from emcot.tokenizers.text_base import MARKERS, PromptTemplate, SpecialTokenIds, TextTokenizer, ids_to_list

MODEL_FILE = "sentencepiece.model"

# Newline is its own piece so multi-line reasoning does not cost one byte token per line break.
_EXTRA_SYMBOLS: tuple[str, ...] = ("\n",)
# <unk> + 256 byte-fallback pieces + markers + extra symbols must fit, plus a few learnt merges.
MIN_VOCAB_SIZE = 1 + 256 + len(MARKERS) + len(_EXTRA_SYMBOLS) + 8


class SentencePieceTextTokenizer(TextTokenizer):
    """Byte-fallback BPE SentencePiece tokenizer with every marker as one user-defined piece.

    Normalisation is the identity and no dummy prefix is added, so ``decode(encode(s)) == s`` for
    any text without the character U+2581 ("▁"), which SentencePiece uses internally for spaces.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, template: PromptTemplate | None = None) -> None:
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError as err:
            raise ValueError(
                f"Corrupt SentencePiece model ({err}); re-train or re-save the tokenizer."
            ) from err
        self._proto = model_proto
        self.template = template or PromptTemplate()
        lookup: dict[str, int] = {}
        for marker in MARKERS:
            idx = self._sp.piece_to_id(marker)
            # piece_to_id answers the unk id for unknown pieces, and only a user-defined piece is
            # guaranteed to be cut out of running text as one id.
            if idx == self._sp.unk_id() or list(self._sp.encode(marker)) != [idx]:
                raise ValueError(
                    f"SentencePiece model has no user-defined piece {marker!r}; "
                    "train it with SentencePieceTextTokenizer.train()."
                )
            lookup[marker] = idx
        self.special = SpecialTokenIds.from_lookup(lookup)
        self._special_ids = self.special.all_ids()

    @classmethod
    def train(
        cls,
        corpus: Iterable[str],
        vocab_size: int,
        out_dir: str | os.PathLike | None = None,
        template: PromptTemplate | None = None,
    ) -> SentencePieceTextTokenizer:
        """Train a deterministic byte-fallback BPE model on ``corpus`` (saved to ``out_dir`` if given)."""
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: byte fallback and markers need at least "
                f"{MIN_VOCAB_SIZE}; pass vocab_size >= {MIN_VOCAB_SIZE}."
            )
        # Training splits input into lines, so multi-line documents become one sentence per line.
        sentences = [line for text in corpus for line in str(text).split("\n") if line]
        if not sentences:
            raise ValueError("corpus is empty; pass at least one non-empty string to train on.")
        spm.set_random_generator_seed(0)
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=buffer,
            vocab_size=vocab_size,
            model_type="bpe",
            user_defined_symbols=list(MARKERS) + list(_EXTRA_SYMBOLS),
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            character_coverage=1.0,
            # A soft limit: tiny corpora may not yield enough merges to reach vocab_size exactly.
            hard_vocab_limit=False,
            num_threads=1,
            shuffle_input_sentence=False,
            input_sentence_size=0,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            minloglevel=2,
        )
        tokenizer = cls(buffer.getvalue(), template=template)
        if out_dir is not None:
            tokenizer.save_pretrained(out_dir)
        return tokenizer

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, template: PromptTemplate | None = None):
        """Load ``sentencepiece.model`` from ``folder``."""
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise ValueError(
                f"{path} not found; train one with SentencePieceTextTokenizer.train(..., out_dir)."
            )
        return cls(path.read_bytes(), template=template)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; marker strings become their single ids."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}.")
        return list(self._sp.encode(text))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; markers are dropped when ``skip_special_tokens``."""
        ids = ids_to_list(ids)
        size = len(self)
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise ValueError(f"Token ids {bad[:5]} are outside the vocabulary [0, {size}).")
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self._sp.decode(ids)

    def __len__(self) -> int:
        return self._sp.get_piece_size()

    def _save_files(self, folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(self._proto)
