"""LLaDA tokenizer: special ids by string, chat prompt ids (vs transformers' chat template), round trips."""

import json

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.text.llada_tokenizer import SPECIALS, LLaDATokenizer, build_tokenizer_json

CORPUS = ["the quick brown fox jumps over the lazy dog", "speech recognition with diffusion models",
          "hello world", "a masked diffusion language model reads the audio"] * 4

# LLaDA-8B-Instruct's chat template (LLaMA-3 style), written from SPEC section 4.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build_tokenizer_json(CORPUS, tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory):
    """A byte-level BPE like the real LLaDA tokenizer, specials at high ids as in LLaDA."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(list(SPECIALS))
    # Like LLaMA-3-style tokenizer.json files: a post-processor that prepends bos. The chat
    # prompt must not get a second bos from it (transformers renders, then encodes without it).
    bos = tok.token_to_id("<|startoftext|>")
    tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", bos)])
    path = tmp_path_factory.mktemp("bl") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_special_ids_follow_the_token_strings(small, byte_level):
    t = LLaDATokenizer(small)
    assert (t.bos, t.eos, t.mask, t.start_header, t.end_header, t.eot) == (1, 2, 3, 4, 5, 6)
    assert t.pad == t.eos
    b = LLaDATokenizer(byte_level.parent)  # a directory holding tokenizer.json works too
    vocab = json.loads(byte_level.read_text())["added_tokens"]
    by_name = {a["content"]: a["id"] for a in vocab}
    assert b.mask == by_name["<|mdm_mask|>"] and b.eot == by_name["<|eot_id|>"] and b.bos == by_name["<|startoftext|>"]


def test_chat_template_pieces_are_whole_tokens(tmp_path):
    # A corpus much larger than the template, none of whose words it shares: the template's
    # words still merge into single tokens (12 ids: 7 specials, 5 pieces) instead of dozens.
    texts = [f"numbers {i} and {i + 1} go here" for i in range(500)]
    t = LLaDATokenizer(build_tokenizer_json(texts, tmp_path / "tokenizer.json", vocab_size=300))
    ids = t.chat_prompt_ids("Transcribe the audio:")
    assert len(ids) == 12, [t.decode([i]) for i in ids]


def test_chat_prompt_ids_structure(small):
    t = LLaDATokenizer(small)
    ids = t.chat_prompt_ids("Transcribe the audio:")
    assert ids[:2] == [t.bos, t.start_header] and ids.count(t.eot) == 1
    first_end, eot = ids.index(t.end_header), ids.index(t.eot)
    second_start = ids.index(t.start_header, 2)
    second_end = ids.index(t.end_header, first_end + 1)
    assert second_start == eot + 1
    assert t.decode(ids[2:first_end]).strip() == "user"
    assert t.decode(ids[first_end + 1:eot]).strip() == "Transcribe the audio:"
    assert t.decode(ids[second_start + 1:second_end]).strip() == "assistant"
    assert t.decode(ids[second_end + 1:]).strip(" ") == "\n\n"
    assert 0 not in ids  # no <unk>: the template words are in the vocabulary
    cfg = t.token_config()
    assert cfg.prompt_ids == tuple(ids) and cfg.mask == 3 and cfg.prompt_text == "Transcribe the audio:"
    # The tiny model config's specials match this tokenizer, so it can drive tiny models.
    tiny = load_model_config("tiny").tokens
    assert (tiny.bos, tiny.eos, tiny.mask, tiny.start_header, tiny.end_header, tiny.eot) == (1, 2, 3, 4, 5, 6)
    assert max(ids) < load_model_config("tiny").llm.vocab_size


@pytest.mark.parametrize("which", ["small", "byte_level"])
def test_chat_prompt_matches_transformers_template(which, request):
    from transformers import PreTrainedTokenizerFast

    path = request.getfixturevalue(which)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    hf.chat_template = CHAT_TEMPLATE
    for content in ("Transcribe the audio:", "  hello world "):
        want = hf.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        assert LLaDATokenizer(path).chat_prompt_ids(content) == list(want)


def test_byte_level_prompt_decodes_to_the_template(byte_level):
    t = LLaDATokenizer(byte_level)
    ids = t.chat_prompt_ids("Transcribe the audio:")
    assert ids.count(t.bos) == 1 and t.encode("hello")[0] != t.bos  # the post-processor's bos is not added
    assert t.decode(ids) == "user\n\nTranscribe the audio:assistant\n\n"
    assert ids[-1] != t.end_header  # the "\n\n" after the assistant header is part of the prompt


@pytest.mark.parametrize("which", ["small", "byte_level"])
def test_round_trip_and_specials_dropped(which, request):
    t = LLaDATokenizer(request.getfixturevalue(which))
    text = "the quick brown fox jumps over the lazy dog"
    ids = t.encode(text)
    assert all(i not in t.special_ids for i in ids)
    assert t.decode(ids) == text
    # eos padding, masks and headers vanish on decode
    assert t.decode([*ids, t.eos, t.eos, t.mask]) == text
    assert t.decode_batch([[t.mask, *ids], ids]) == [text, text]
    assert t.encode_batch([text, "hello world"])[0] == ids


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        LLaDATokenizer(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a Hugging Face tokenizer.json"):
        LLaDATokenizer(bad)
    plain = tokenizers.Tokenizer(models.BPE())
    plain.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=60, show_progress=False))
    plain.save(str(tmp_path / "plain.json"))
    with pytest.raises(CheckpointError, match="not a LLaDA tokenizer"):
        LLaDATokenizer(tmp_path / "plain.json")
