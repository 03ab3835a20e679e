"""The demo's speech corpus: generated sentences spoken by eSpeak NG, as FLAC + JSONL manifests.

``build_corpus(out_dir, ...)`` writes ``out_dir/{train,val,test}/<id>.flac`` and
``out_dir/{train,val,test}.jsonl`` (``id``, ``audio`` relative to the manifest, ``text``,
``voice``, ``wpm``, ``seconds``). Voice and speed of every utterance are drawn from the seed,
and each clip is a pure function of its text, voice and speed (``demo.tts`` speaks every
utterance from a fresh eSpeak NG state with a fixed noise seed), so the corpus is the same
bit for bit whatever the number of workers and the order they take the clips in. A stamp file
records the parameters; a second call with the same parameters returns the cached corpus at
once. Synthesis runs in worker processes (one eSpeak NG instance each: the library is not
re-entrant).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import warnings
from pathlib import Path

import numpy as np

from whisper_llada_jax.demo.text_corpus import split_sentences
from whisper_llada_jax.errors import UserError

SPLITS = ("train", "val", "test")
DEFAULT_VOICES = ("en-us", "en", "en-gb-x-rp", "en+f3", "en+m3", "en-us+f2", "en-gb-scotland", "en-029")
DEFAULT_SPEEDS = (130, 190)  # words per minute, drawn uniformly in this range
STAMP = "corpus.json"
# 2: every clip from a fresh eSpeak NG state, noise seed 1 (version 1's audio depended on which
# clips a worker had spoken before and on the clock).
_VERSION = 2


@dataclasses.dataclass(frozen=True)
class Corpus:
    root: Path
    manifests: dict[str, Path]
    counts: dict[str, int]
    max_seconds: float
    total_seconds: float
    engine: str

    def manifest(self, split: str) -> Path:
        return self.manifests[split]


_SYNTH = None


def _init_worker(engine: str) -> None:
    global _SYNTH
    from whisper_llada_jax.demo.tts import Synthesizer

    _SYNTH = Synthesizer(engine)


def _engine_info() -> tuple[str, bool]:
    return _SYNTH.name, _SYNTH.deterministic


def _speak(job: tuple[str, str, str, int, str]) -> tuple[str, float]:
    import soundfile

    uid, text, voice, wpm, path = job
    audio = np.clip(_SYNTH.synthesize(text, voice, wpm), -1.0, 1.0)
    soundfile.write(path, audio, 16000, subtype="PCM_16")
    return uid, len(audio) / 16000


def corpus_params(n_train: int, n_val: int, n_test: int, seed: int, voices: tuple[str, ...] = DEFAULT_VOICES,
                  speeds: tuple[int, int] = DEFAULT_SPEEDS) -> dict:
    """The corpus's identity as its stamp records it (``version`` changes when the audio does)."""
    return {"version": _VERSION, "n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed,
            "voices": list(voices), "speeds": list(speeds)}


def _plan(params: dict) -> dict[str, list[dict]]:
    """Every utterance's id, text, voice and speed (deterministic in the seed)."""
    sentences = split_sentences(params["n_train"], params["n_val"], params["n_test"], params["seed"])
    r = random.Random(params["seed"] + 1)
    lo, hi = params["speeds"]
    plan = {}
    for split in SPLITS:
        plan[split] = [{"id": f"{split}{i:05d}", "audio": f"{split}/{split}{i:05d}.flac", "text": text,
                        "voice": r.choice(params["voices"]), "wpm": r.randint(lo, hi)}
                       for i, text in enumerate(sentences[split])]
    return plan


def load_cached(out_dir: str | Path, params: dict | None = None) -> Corpus | None:
    """The corpus in ``out_dir`` if its stamp matches ``params`` (any params if None)."""
    root = Path(out_dir)
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if params is not None and stamp.get("params") != params:
        return None
    manifests = {s: root / f"{s}.jsonl" for s in SPLITS}
    if not all(p.exists() for p in manifests.values()):
        return None
    return Corpus(root, manifests, stamp["counts"], stamp["max_seconds"], stamp["total_seconds"], stamp["engine"])


def build_corpus(out_dir: str | Path, n_train: int = 2000, n_val: int = 200, n_test: int = 200,
                 seed: int = 0, voices: tuple[str, ...] = DEFAULT_VOICES,
                 speeds: tuple[int, int] = DEFAULT_SPEEDS, workers: int | None = None,
                 engine: str = "auto", progress: bool = True) -> Corpus:
    """Synthesises (or reuses) the corpus; returns where its manifests are."""
    if len(set(voices)) < 1 or speeds[0] > speeds[1] or min(n_train, n_val, n_test) < 1:
        raise UserError(f"build_corpus: bad parameters voices={voices} speeds={speeds}",
                        hint="give at least one voice, speeds as (low, high) wpm and >= 1 utterance per split")
    params = corpus_params(n_train, n_val, n_test, seed, voices, speeds)
    root = Path(out_dir)
    cached = load_cached(root, params)
    if cached is not None:
        return cached
    (root / STAMP).unlink(missing_ok=True)
    plan = _plan(params)
    jobs = []
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
        jobs += [(u["id"], u["text"], u["voice"], u["wpm"], str(root / u["audio"])) for u in plan[split]]
    workers = workers or min(2, os.cpu_count() or 1)
    from tqdm import tqdm

    seconds: dict[str, float] = {}
    bar = tqdm(total=len(jobs), desc="speech corpus (eSpeak NG)", unit="utt", disable=not progress)
    # Workers are spawned, not forked: the parent may hold JAX's threads and gigabytes, and each
    # worker forks once per utterance (demo.tts), which is cheap only from a small process.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(engine,)) as pool:
        engine_name, deterministic = pool.apply(_engine_info)
        if not deterministic:
            warnings.warn(f"{engine_name}: this eSpeak NG (< 1.52, no -D) seeds its breath noise from the "
                          "clock, so clips of breathy voices differ from run to run; install espeakng-loader "
                          "for a reproducible corpus", stacklevel=2)
        # Small corpora still reach every worker (the clips do not depend on who speaks them).
        chunk = max(1, min(16, len(jobs) // (4 * workers)))
        for uid, sec in pool.imap_unordered(_speak, jobs, chunksize=chunk):
            seconds[uid] = sec
            bar.update()
    bar.close()
    for split in SPLITS:
        with open(root / f"{split}.jsonl", "w") as f:
            for u in plan[split]:
                f.write(json.dumps({**u, "seconds": round(seconds[u["id"]], 3)}) + "\n")
    stamp = {"params": params, "counts": {s: len(plan[s]) for s in SPLITS},
             "max_seconds": max(seconds.values()), "total_seconds": sum(seconds.values()),
             "engine": engine_name}
    tmp = root / (STAMP + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=1))
    tmp.replace(root / STAMP)
    return load_cached(root, params)
