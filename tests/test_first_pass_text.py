"""First-pass text in the deliberation model's written form (text/first_pass.py): the
spoken-English normaliser, one mask slot per word the vocabulary cannot represent, and the
model-free vocabulary filter."""

import pytest

from whisper_llada_jax.errors import DecodeConfigError
from whisper_llada_jax.text.first_pass import first_pass_ids, normalize_first_pass, spoken_en, vocabulary_filter
from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer, build_tokenizer_json

SPOKEN = ["the train left at seven thirty in the evening", "the red lamp costs two hundred and fifty four dollars",
          "my aunt has forty five cups at the park", "we need thirteen fifteen plates at nine o'clock",
          "the bus arrived at seven oh five", "Emma came third"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = build_tokenizer_json(SPOKEN * 20, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=200)
    return LLaDATokenizer(path)


@pytest.mark.parametrize("written, spoken", [
    ("The train left at 7:30 pm.", "The train left at seven thirty pm."),
    ("It costs $254 at 13-15 stores", "It costs two hundred and fifty four dollars at thirteen fifteen stores"),
    ("$1.05", "one dollar and five cents"),
    ("at 7:05 and 9:00", "at seven oh five and nine o'clock"),
    ("I came 3rd, 50% of 1,200", "I came third, fifty percent of one thousand two hundred"),
    ("forty-five apples & pears", "forty five apples and pears"),
    ("the bus arrived at seven oh five", "the bus arrived at seven oh five"),
])
def test_spoken_en(written, spoken):
    assert spoken_en(written) == spoken
    assert spoken_en(spoken) == spoken  # idempotent: normalising twice changes nothing


def test_normalizer_choice():
    assert normalize_first_pass("at 7:30", "none") == "at 7:30"
    assert normalize_first_pass("at 7:30", "spoken_en") == "at seven thirty"
    with pytest.raises(DecodeConfigError, match="first_pass_normalizer"):
        normalize_first_pass("x", "klingon")


def test_unknown_words_become_one_mask_slot(tokenizer):
    unk, mask = tokenizer.unk, tokenizer.mask
    assert unk is not None
    text = "the red lamp costs $254 at 13-15"
    raw = first_pass_ids(tokenizer, text)
    assert raw.count(unk) >= 6  # "$", digits and "-" are not in this vocabulary
    spoken = first_pass_ids(tokenizer, text, normalizer="spoken_en")
    assert unk not in spoken and tokenizer.decode(spoken).strip() == spoken_en(text)
    masked = first_pass_ids(tokenizer, text, unknown_words="mask", mask_id=mask)
    assert unk not in masked and masked.count(mask) == 2  # "$254" and "13-15": one slot each
    assert masked[:masked.index(mask)] == first_pass_ids(tokenizer, "the red lamp costs")
    # Known words are untouched; so is a text with nothing unknown.
    assert first_pass_ids(tokenizer, SPOKEN[0], unknown_words="mask", mask_id=mask) == tokenizer.encode(SPOKEN[0])


def test_vocabulary_filter_deletes_unknown_words(tokenizer):
    text = "the red lamp costs $254 at 13-15"
    assert vocabulary_filter(tokenizer, text) == "the red lamp costs at"
    assert vocabulary_filter(tokenizer, text, "spoken_en") == spoken_en(text)


def test_run_decode_prepares_first_passes_with_the_config(tokenizer, monkeypatch):
    """The wiring: run_decode tokenises each first pass with the config's normaliser and
    unknown-word rule before the fused program sees it."""
    import types

    import jax
    import numpy as np

    from whisper_llada_jax.decoding import api
    from whisper_llada_jax.inference import driver
    from whisper_llada_jax.decoding.config import DecodeConfig

    seen = {}

    def fake_deliberate(model, variables, inputs, first, cfg, rng, **kw):
        seen["first"] = first
        return api.DecodeOutput(np.zeros((len(first), cfg.gen_len), np.int32), np.ones(len(first), np.int32),
                                np.ones(len(first), np.int32))

    monkeypatch.setattr(api, "deliberate", fake_deliberate)
    tokens = tokenizer.token_config()
    loaded = types.SimpleNamespace(config=types.SimpleNamespace(tokens=tokens), tokenizer=tokenizer, model=None,
                                   variables=None)
    batch = {"encoder_out": np.zeros((1, 4, 8), np.float32), "first_pass": ["the red lamp costs $254"]}
    for normalizer, rule, want in (("none", "keep", tokenizer.encode("the red lamp costs $254")),
                                   ("spoken_en", "keep", tokenizer.encode(spoken_en("the red lamp costs $254"))),
                                   ("none", "mask", tokenizer.encode("the red lamp costs") + [tokens.mask])):
        cfg = DecodeConfig(strategy="diffusion", gen_len=32, first_pass_normalizer=normalizer, unknown_words=rule)
        driver.run_decode(loaded, batch, cfg, jax.random.key(0))
        assert seen["first"] == [want], (normalizer, rule)
