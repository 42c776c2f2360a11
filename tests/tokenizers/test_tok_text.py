"""Text tokenizers: markers, round trips, chat framing, save/load and boundary errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, Qwen2Tokenizer

from emcot.tokenizers.text import (
    ACTION_END,
    ACTION_START,
    ENDOFTEXT,
    IM_END,
    IM_START,
    MARKERS,
    THINK_END,
    THINK_START,
    VISION_END,
    VISION_START,
    HFTextTokenizer,
    PromptTemplate,
    SentencePieceTextTokenizer,
    TextTokenizer,
    load_text_tokenizer,
)
from tokenizers import AddedToken

CORPUS = [
    "You are an embodied agent. Your task is to: pick up the red cube. Plan and act.",
    "Place the cube in the bowl, then close the drawer.",
    "The robot arm moves left 12 cm and lowers the gripper.",
    "What colour is the block on the table? It is blue.",
    "Grasp the handle; pull it open slowly.\nRelease when done.",
] * 4

TRICKY = [
    "hello world",
    "  leading and trailing  ",
    "multiple    spaces\tand\ttabs",
    "line one\nline two\n\nline four\n",
    "\r\nwindows line\r\n",
    "digits 0123456789 and 3.14159, -42",
    "punctuation: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "",
    " ",
    "\n",
]
NON_ASCII = ["héllo wörld", "世界 🤖 robot", "naïve café — ok"]


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory) -> SentencePieceTextTokenizer:
    out = tmp_path_factory.mktemp("sp")
    return SentencePieceTextTokenizer.train(CORPUS, vocab_size=320, out_dir=out)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    HFTextTokenizer.train(CORPUS, vocab_size=400, out_dir=out)
    return out


@pytest.fixture(scope="module")
def hf_tok(hf_dir) -> HFTextTokenizer:
    return HFTextTokenizer.from_pretrained(hf_dir)


@pytest.fixture(params=["sp", "hf"])
def tok(request, sp_tok, hf_tok) -> TextTokenizer:
    return sp_tok if request.param == "sp" else hf_tok


def test_markers_are_single_distinct_ids(tok):
    ids = [tok.encode(m) for m in MARKERS]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(MARKERS)
    s = tok.special
    assert tok.encode(THINK_START) == [s.think_start]
    assert tok.encode(THINK_END) == [s.think_end]
    assert tok.encode(VISION_START) == [s.vision_start]
    assert tok.encode(VISION_END) == [s.vision_end]
    assert tok.encode(ACTION_START) == [s.action_start]
    assert tok.encode(ACTION_END) == [s.action_end]
    assert tok.encode(IM_START) == [s.im_start]
    assert tok.encode(IM_END) == [s.im_end]
    assert tok.encode(ENDOFTEXT) == [s.eos] == [s.pad]
    assert all(0 <= i < tok.vocab_size == len(tok) for i in s.all_ids())


def test_markers_inside_text(tok):
    ids = tok.encode(f"a{THINK_START}b c{ACTION_END}")
    assert ids.count(tok.special.think_start) == 1
    assert ids.count(tok.special.action_end) == 1
    assert ids[0] != tok.special.think_start  # no implicit prefix token


@pytest.mark.parametrize("text", TRICKY + NON_ASCII)
def test_exact_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_decode_skip_special(tok):
    text = f"{THINK_START}move left{THINK_END}\n{ACTION_START}"
    ids = tok.encode(text)
    assert tok.decode(ids) == "move left\n"
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(torch.tensor(ids), skip_special_tokens=False) == text


def test_frame_prompt_and_question(tok):
    ids = tok.frame_prompt("stack the blocks")
    expected = (
        f"{IM_START}user\nYou are an embodied agent. Your task is to: stack the blocks. Plan and act."
        f"{IM_END}\n{IM_START}assistant\n"
    )
    assert tok.decode(ids, skip_special_tokens=False) == expected
    assert ids[0] == tok.special.im_start
    assert ids.count(tok.special.im_end) == 1
    q = tok.frame_question("What is {this}?")
    text = tok.decode(q, skip_special_tokens=False)
    assert text == f"{IM_START}user\nWhat is {{this}}?{IM_END}\n{IM_START}assistant\n"
    assert "embodied" not in text


def test_custom_template_survives_save(sp_tok, tmp_path):
    template = PromptTemplate(agent="Task: {instruction}\n", question="Q: {question}\nA:")
    tok = SentencePieceTextTokenizer.from_pretrained(_save(sp_tok, tmp_path / "a"), template=template)
    tok.save_pretrained(tmp_path / "b")
    again = load_text_tokenizer(tmp_path / "b")
    assert again.template == template
    assert again.decode(again.frame_prompt("go")) == "Task: go\n"


def _save(tok: TextTokenizer, folder):
    tok.save_pretrained(folder)
    return folder


def test_sentencepiece_save_load(sp_tok, tmp_path):
    loaded = load_text_tokenizer(_save(sp_tok, tmp_path))
    assert isinstance(loaded, SentencePieceTextTokenizer)
    assert len(loaded) == len(sp_tok)
    assert loaded.special == sp_tok.special
    assert loaded.encode(CORPUS[0]) == sp_tok.encode(CORPUS[0])


def test_sentencepiece_training_is_deterministic(sp_tok, tmp_path):
    again = SentencePieceTextTokenizer.train(CORPUS, vocab_size=320)
    assert len(again) == len(sp_tok)
    for text in CORPUS[:5] + TRICKY:
        assert again.encode(text) == sp_tok.encode(text)
    # The learnt merges make common text shorter than its bytes.
    assert len(sp_tok.encode(CORPUS[0])) < len(CORPUS[0].encode())


def test_sentencepiece_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        SentencePieceTextTokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="empty"):
        SentencePieceTextTokenizer.train(["", ""], vocab_size=320)
    with pytest.raises(ValueError, match="sentencepiece.model"):
        SentencePieceTextTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Corrupt"):
        SentencePieceTextTokenizer(b"not a model")


def test_hf_reuses_base_ids_and_adds_missing(hf_dir):
    base = AutoTokenizer.from_pretrained(str(hf_dir))
    vocab = base.get_vocab()
    # The saved folder already holds every marker, so loading it again adds nothing.
    assert HFTextTokenizer(base).num_added == 0

    fresh = HFTextTokenizer.train(CORPUS, vocab_size=400)
    raw = fresh.hf_tokenizer
    assert raw.convert_ids_to_tokens(fresh.special.im_start) == IM_START
    assert fresh.num_added == 4  # think/action start/end; Qwen already has im_* and vision_*
    assert fresh.required_vocab_size == len(fresh) == len(vocab)
    base_ids = {m: vocab[m] for m in (IM_START, IM_END, VISION_START, VISION_END, ENDOFTEXT)}
    assert base_ids[IM_START] == fresh.special.im_start
    assert base_ids[VISION_END] == fresh.special.vision_end
    new_ids = [
        fresh.special.think_start,
        fresh.special.think_end,
        fresh.special.action_start,
        fresh.special.action_end,
    ]
    assert min(new_ids) > max(base_ids.values())


def test_hf_wraps_qwen_tokenizer_without_new_markers(hf_dir, tmp_path):
    tok = HFTextTokenizer.from_pretrained(hf_dir)
    assert tok.hf_tokenizer.__class__.__name__ == "Qwen2Tokenizer"
    loaded = load_text_tokenizer(_save(tok, tmp_path))
    assert isinstance(loaded, HFTextTokenizer)
    assert loaded.special == tok.special
    assert loaded.encode(TRICKY[3]) == tok.encode(TRICKY[3])


def test_hf_folder_without_metadata_is_detected(hf_dir, tmp_path):
    base = AutoTokenizer.from_pretrained(str(hf_dir))
    base.save_pretrained(str(tmp_path))
    assert isinstance(load_text_tokenizer(tmp_path), HFTextTokenizer)


def test_hf_non_atomic_marker_rejected():
    raw = HFTextTokenizer.train(CORPUS, vocab_size=400).hf_tokenizer
    vocab = raw.get_vocab()
    # Build a tokenizer where a marker is an ordinary vocabulary entry, not an added token.
    plain = {k: v for k, v in vocab.items() if not k.startswith("<|")}
    plain[THINK_START] = len(plain)
    bare = Qwen2Tokenizer(vocab=plain, merges=[])
    bare.add_tokens([AddedToken(m, special=True) for m in MARKERS if m != THINK_START], special_tokens=True)
    with pytest.raises(ValueError, match="atomic"):
        HFTextTokenizer(bare)


def test_hf_empty_tokenizer_rejected():
    with pytest.raises(ValueError, match="only"):
        HFTextTokenizer(Qwen2Tokenizer(vocab={}, merges=[]))


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_text_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="no known text tokenizer"):
        load_text_tokenizer(tmp_path)
    (tmp_path / "emcot_text_tokenizer.json").write_text(json.dumps({"kind": "nope"}))
    with pytest.raises(ValueError, match="no known text tokenizer"):
        load_text_tokenizer(tmp_path)


def test_boundary_errors(tok):
    with pytest.raises(ValueError, match="str"):
        tok.encode(123)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([len(tok)])
    with pytest.raises(ValueError, match="flat sequence"):
        tok.decode([[1, 2]])
    with pytest.raises(ValueError, match="instruction"):
        tok.frame_prompt(None)
    with pytest.raises(ValueError, match="instruction"):
        PromptTemplate(agent="no placeholder")
