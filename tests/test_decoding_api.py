"""Decode API: validation before compilation, the autoregressive baseline, the composite path
(audio encoded once inside the program, trimmed audio span, text-only deliberation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_decode as ref
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.decoding import api
from whisper_llada_jax.inference import driver
from whisper_llada_jax.decoding.backbone import Backbone, Prefix
from whisper_llada_jax.decoding.config import DecodeConfig, load_decode_config
from whisper_llada_jax.errors import DataError, DecodeConfigError
from whisper_llada_jax.models.composite import WhisperLLaDA, init_variables

BAD = [
    dict(decoder="semi_ar", gen_len=128, block_length=48),  # block does not divide gen_len
    dict(decoder="semi_ar", gen_len=128, block_length=32, steps=30),  # steps not divisible by 4 blocks
    dict(gen_len=16, steps=32),  # more steps than slots
    dict(strategy="diffusion", mask_ratio=1.5),
    dict(strategy="diffusion", mask_ratio=-0.1),
    dict(threshold=0.0),
    dict(threshold=1.2),
    dict(strategy="semi_ar", num_chunks=4, steps=2),
    dict(temperature=-1.0),
    dict(decoder="autoregressive", strategy="diffusion"),
    dict(text_only=True),
    dict(edit_length=True, strategy="semi_ar"),
    dict(length_buckets=(256,)),
    dict(decoder="semi_ar", block_length=32, length_buckets=(48,)),
]


@pytest.mark.parametrize("bad", BAD, ids=[",".join(f"{k}={v}" for k, v in b.items()) for b in BAD])
def test_bad_configs_fail_before_compilation(bad, monkeypatch):
    def never(*a, **k):
        raise AssertionError("compiled before validating")

    for name in ("_diffusion_program", "_deliberation_program", "_autoregressive_program"):
        monkeypatch.setattr(api, name, never)
    cfg = DecodeConfig(**bad)
    model = ref.tiny_llm()
    prefix = ref.random_prefix(1)
    with pytest.raises(DecodeConfigError) as e:
        if cfg.strategy != "none":
            api.deliberate(model, {}, prefix, [[7, 8]], cfg, jax.random.key(0), tokens=ref.TOKENS)
        elif cfg.decoder == "autoregressive":
            api.autoregressive_decode(model, {}, prefix, cfg, tokens=ref.TOKENS)
        else:
            api.diffusion_decode(model, {}, prefix, cfg, jax.random.key(0), tokens=ref.TOKENS)
    assert "decode config field" in str(e.value) and "hint" in str(e.value)
    with pytest.raises(DecodeConfigError):  # the YAML path validates too
        load_decode_config({k: list(v) if isinstance(v, tuple) else v for k, v in bad.items()})


def test_empty_or_long_first_pass_is_a_clear_error():
    model = ref.tiny_llm()
    cfg = DecodeConfig(strategy="diffusion", gen_len=8, steps=4)
    with pytest.raises(DataError, match="utt-7"):
        api.deliberate(model, {}, ref.random_prefix(2), [[7], []], cfg, jax.random.key(0), tokens=ref.TOKENS,
                       names=["utt-1", "utt-7"])
    with pytest.raises(DecodeConfigError, match="gen_len"):
        api.deliberate(model, {}, ref.random_prefix(1), [list(range(7, 20))], cfg, jax.random.key(0),
                       tokens=ref.TOKENS)


def test_autoregressive_cache_equals_full_recompute():
    """Greedy with the fixed K/V buffer == re-running the causal GQA model on the whole
    sequence for every token; rows stop at their own eos."""
    model = ref.tiny_llm(causal=True, kv_heads=2)
    variables = ref.init_vars(model, seed=7)
    prefix = ref.random_prefix(3, seed=8)
    bb = Backbone(model, composite=False)
    eos = 9  # a token this random model does produce, to exercise per-row stopping
    tokens = ref.TOKENS.__class__(**{**ref.TOKENS.__dict__, "eos": eos, "pad": eos})
    cfg = DecodeConfig(decoder="autoregressive", max_new_tokens=10)
    out = api.autoregressive_decode(model, variables, prefix, cfg, tokens=tokens)

    @jax.jit
    def next_logits(pre, ids, n):  # causal: the padding after position P + n - 1 is invisible to it
        emb = jnp.concatenate([pre, bb.embed(variables, ids)], axis=1)
        return bb.head(variables, bb.hidden(variables, embeds=emb).hidden[:, pre.shape[1] + n - 1])

    for b in range(3):
        ids = []
        while len(ids) < cfg.max_new_tokens:
            buf = np.zeros((1, cfg.max_new_tokens), np.int32)
            buf[0, :len(ids)] = ids
            nxt = int(jnp.argmax(next_logits(prefix.embeds[b:b + 1], jnp.asarray(buf), len(ids))))
            ids.append(nxt)
            if nxt == eos:
                break
        n = len(ids) - (ids[-1] == eos)
        np.testing.assert_array_equal(out.tokens[b, :len(ids)], ids)
        assert out.length[b] == n and out.nfe[b] == len(ids)
        assert (out.tokens[b, len(ids):] == eos).all()


class _Tok:
    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


@pytest.fixture(scope="module")
def composite():
    cfg = load_model_config("tiny")
    variables = init_variables(cfg, jax.random.key(0))
    loaded = type("Loaded", (), {})()
    loaded.config, loaded.model, loaded.variables, loaded.tokenizer = cfg, WhisperLLaDA(cfg), variables, _Tok()
    return loaded


def _batch(cfg, n=2, seconds=(0.6, 1.1)):
    feats = np.asarray(jax.random.normal(jax.random.key(1), (n, cfg.whisper.n_mels, cfg.whisper.input_frames)))
    return {"features": feats, "audio_len": np.array([int(s * 16000) for s in seconds], np.int32),
            "valid": np.ones(n, bool), "ids": [f"u{i}" for i in range(n)], "text": ["a", "b"]}


def test_composite_run_decode_full_and_trimmed_audio(composite):
    """The program encodes the audio once and decodes; the trimmed span keeps the windows that
    cover the longest clip (+ margin) and equals decoding that shorter prefix directly."""
    cfg = DecodeConfig(decoder="semi_ar", gen_len=8, block_length=4, steps=4)
    batch = _batch(composite.config)
    rows = driver.run_decode(composite, batch, cfg, jax.random.key(0))
    assert len(rows) == 2 and all(set(r) == {"hypothesis", "tokens", "nfe"} for r in rows)
    assert all(0 < r["nfe"] <= 4 for r in rows)

    trimmed = DecodeConfig(**{**cfg.__dict__, "audio_span": "trimmed", "audio_margin_windows": 1})
    n_tok = driver.trimmed_audio_tokens(batch["audio_len"], composite.config, 1)
    # 1.1 s = 55 encoder frames = 4 windows of 17, + 1 margin, rounded up to an eighth of 11 (2)
    assert n_tok == 6 * composite.config.projector.num_queries < composite.config.audio_tokens
    rows_t = driver.run_decode(composite, batch, trimmed, jax.random.key(0))
    m, v = composite.model, composite.variables
    audio = m.apply(v, features=jnp.asarray(batch["features"]), method="encode_audio")[:, :n_tok]
    pre = m.apply(v, audio, 2, method="prefix_embeds")
    direct = api.diffusion_decode(m, v, Prefix(pre, jnp.ones(pre.shape[:2], bool)), cfg, jax.random.key(0),
                                  row_ids=[driver._stable_id(i) for i in batch["ids"]])
    for r, toks, length in zip(rows_t, direct.tokens, direct.length):
        assert r["tokens"] == api.response_tokens(toks, length, composite.config.tokens)


def test_composite_text_only_deliberation(composite):
    cfg = DecodeConfig(strategy="diffusion", masking="low_confidence", mask_ratio=0.5, steps=4, gen_len=8,
                       text_only=True)
    batch = _batch(composite.config)
    batch["first_pass"] = ["20 21 22 23", "30 31 32 33 34 35"]
    rows = driver.run_decode(composite, batch, cfg, jax.random.key(0))
    # one confidence forward + min(steps, int(n * 0.5)) steps; unmasked tokens are kept
    assert [r["nfe"] for r in rows] == [1 + 2, 1 + 3]
    assert [len(r["tokens"]) <= n for r, n in zip(rows, (4, 6))] == [True, True]


def test_transcribe_files_sorts_batches_by_length_and_keeps_input_order(tmp_path, monkeypatch):
    """Clips of similar length share a batch (a batch runs until its longest row ends); the
    output comes back in input order with each clip's own result."""
    import soundfile

    secs = [2.0, 0.3, 1.5, 0.4, 2.2, 0.2]
    items = []
    for i, s in enumerate(secs):
        path = tmp_path / f"c{i}.wav"
        soundfile.write(path, np.zeros(int(16000 * s), np.float32), 16000)
        items.append({"id": f"c{i}", "audio": str(path)})
    cfg = load_model_config("tiny")
    loaded = type("L", (), {"config": cfg})()
    monkeypatch.setattr(driver, "load_model_dir", lambda path, *a, **kw: loaded)
    seen = []

    def fake_run_decode(_, batch, dcfg, rng):
        seen.append([(i, int(n)) for i, n, ok in zip(batch["ids"], batch["audio_len"], batch["valid"]) if ok])
        return [{"hypothesis": f"h{i}", "tokens": [], "nfe": int(n)} for i, n in zip(batch["ids"], batch["audio_len"])]

    monkeypatch.setattr(driver, "run_decode", fake_run_decode)
    out = list(driver.transcribe_files("unused", items, DecodeConfig(), batch_size=2))
    assert [r["id"] for r in out] == [it["id"] for it in items]
    assert [r["hypothesis"] for r in out] == [f"hc{i}" for i in range(len(secs))]
    assert [r["nfe"] for r in out] == [int(16000 * s) for s in secs]
    assert [[i for i, _ in b] for b in seen] == [["c5", "c1"], ["c3", "c2"], ["c0", "c4"]]
    # samples the up-front check kept are decoded from memory: only the others are read again
    from whisper_llada_jax.audio.io import load_audio_files

    kept = load_audio_files([it["audio"] for it in items], keep_bytes=4 * int(16000 * 2.3))  # c0, c1
    assert [a is not None for a in kept] == [True, True, False, False, False, False]  # a prefix
    read = []
    monkeypatch.setattr(driver, "load_audio", lambda p: read.append(p) or load_audio_files([p])[0])
    seen.clear()
    again = list(driver.transcribe_files("unused", items, DecodeConfig(), batch_size=2, audio=kept))
    assert again == out and [[i for i, _ in b] for b in seen] == [["c5", "c1"], ["c3", "c2"], ["c0", "c4"]]
    assert read == [it["audio"] for it in items[2:]]
    with pytest.raises(ValueError, match="5 audio entries for 6 items"):
        list(driver.transcribe_files("unused", items, DecodeConfig(), batch_size=2, audio=kept[:5]))


def test_schedule_argmax_is_the_first_maximum_without_a_variadic_reduce():
    """``schedule.argmax`` equals ``jnp.argmax`` (ties: the lowest index) and on CPU compiles to
    plain max / min reductions, not the (value, index) reduce XLA's CPU backend runs slowly."""
    from whisper_llada_jax.decoding import schedule

    logits = jnp.asarray(np.random.default_rng(0).integers(0, 4, (3, 5, 37)).astype(np.float32))  # many ties
    fn = jax.jit(schedule.argmax)
    np.testing.assert_array_equal(np.asarray(fn(logits)), np.asarray(jnp.argmax(logits, -1)))
    assert fn(logits).dtype == jnp.int32
    hlo = fn.lower(logits).compile().as_text()
    assert not [line for line in hlo.splitlines() if ") reduce(" in line and "= (" in line]
    plain = jax.jit(lambda z: jnp.argmax(z, -1)).lower(logits).compile().as_text()
    assert [line for line in plain.splitlines() if ") reduce(" in line and "= (" in line]  # the check sees one
