"""Record sources behind one random-access interface, and the ``source`` spec parser.

A source is what Grain's ``MapDataset.source`` wants: ``len(src)`` and ``src[i]``, picklable
(worker processes receive a copy). ``src[i]`` is a record dict::

    {"id": str, "audio": path | float32 array @16 kHz | encoded bytes | int16 array,
     "text": str, "first_pass": str (optional)}

Audio is only decoded later, inside the pipeline's workers, so opening a source is cheap.

Spec strings (``parse_source``)::

    tfds:librispeech/lazy_decode?split=test_clean&data_dir=DIR   any tfds audio+text dataset
    librispeech:DIR                                               SPEAKER/CHAPTER/*.flac + *.trans.txt
    manifest:FILE.jsonl                                           JSON lines or the reference JSON
    synthetic:n=64,seed=0                                         sine/noise audio + random words
    DIR or FILE.jsonl / FILE.json                                 same as librispeech: / manifest:
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

import numpy as np

from whisper_llada_jax.data.manifest import read_manifest
from whisper_llada_jax.errors import DataError

SAMPLE_RATE = 16000


class RecordSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


class ListSource:
    """Records held in memory (manifests, LibriSpeech folders: paths + text only)."""

    def __init__(self, records: list[dict], name: str = "records"):
        self.records = list(records)
        self.name = name

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return dict(self.records[index])

    def __repr__(self) -> str:
        return f"ListSource({self.name}, {len(self)} utterances)"


def librispeech_folder(root: str | Path) -> ListSource:
    """A LibriSpeech-layout folder: ``SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt`` + FLACs.

    ``root`` may be one subset (``LibriSpeech/dev-clean``) or a folder above several; the
    transcript files are found recursively and sorted, so the order is stable.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: LibriSpeech folder does not exist",
                        hint="give the extracted subset folder, e.g. LibriSpeech/dev-clean")
    records = []
    for trans in sorted(root.rglob("*.trans.txt")):
        try:
            lines = trans.read_text(encoding="utf-8-sig").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{trans}: cannot read the transcript file ({e})",
                            hint="LibriSpeech transcripts are UTF-8 lines 'SPEAKER-CHAPTER-UTT TEXT'") from None
        for lineno, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            key, _, text = line.partition(" ")
            records.append({"id": key, "audio": str(trans.parent / f"{key}.flac"), "text": text})
    if not records:
        raise DataError(f"{root}: no *.trans.txt transcripts found",
                        hint="expected SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt next to the .flac files")
    return ListSource(records, name=str(root))


def manifest_source(path: str | Path) -> ListSource:
    return ListSource(read_manifest(path), name=str(path))


_WORDS = ("the quick brown fox jumps over a lazy dog while seven red birds sing near "
          "old river stone under bright morning light and nine small boats drift home").split()


class SyntheticSource:
    """``n`` utterances of sine + noise 'audio' with random words; record i depends only on
    (seed, i), so any worker builds the same record."""

    def __init__(self, n: int = 64, seed: int = 0, min_s: float = 1.0, max_s: float = 4.0,
                 min_words: int = 3, max_words: int = 12):
        if n < 1 or not 0 < min_s <= max_s or not 1 <= min_words <= max_words:
            raise DataError(f"synthetic source: bad parameters n={n} min_s={min_s} max_s={max_s} "
                            f"min_words={min_words} max_words={max_words}")
        self.n, self.seed = int(n), int(seed)
        self.min_s, self.max_s = float(min_s), float(max_s)
        self.min_words, self.max_words = int(min_words), int(max_words)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        index = int(index) % self.n
        rng = np.random.default_rng([self.seed, index])
        n = int(rng.uniform(self.min_s, self.max_s) * SAMPLE_RATE)
        t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
        freq = rng.uniform(100.0, 1000.0)
        audio = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)
        words = rng.choice(_WORDS, size=int(rng.integers(self.min_words, self.max_words + 1)))
        return {"id": f"synthetic-{self.seed}-{index:06d}", "audio": audio.astype(np.float32),
                "text": " ".join(words)}

    def __repr__(self) -> str:
        return f"SyntheticSource(n={self.n}, seed={self.seed})"


def _synthetic(arg: str) -> SyntheticSource:
    kw = {}
    for part in filter(None, (p.strip() for p in arg.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in ("n", "seed", "min_s", "max_s", "min_words", "max_words"):
            raise DataError(f"synthetic source: cannot parse {part!r}",
                            hint="synthetic:n=64,seed=0[,min_s=1,max_s=4,min_words=3,max_words=12]")
        try:
            kw[key] = float(value) if key in ("min_s", "max_s") else int(value)
        except ValueError:
            raise DataError(f"synthetic source: {key}={value!r} is not a number") from None
    return SyntheticSource(**kw)


def parse_source(spec: str) -> RecordSource:
    """Opens the source a spec string names (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError("empty data source", hint="e.g. manifest:data.jsonl, librispeech:DIR, synthetic:n=64")
    spec = spec.strip()
    kind, sep, arg = spec.partition(":")
    if sep and kind == "tfds":
        from whisper_llada_jax.data.librispeech_tfds import tfds_source

        name, _, query = arg.partition("?")
        # not parse_qsl: '+' joins tfds splits ("train_clean100+train_clean360")
        opts = {}
        for part in filter(None, query.split("&")):
            key, eq, value = part.partition("=")
            if not eq:
                raise DataError(f"tfds source: option {part!r} is not key=value", hint="tfds:NAME?split=test&data_dir=DIR")
            opts[unquote(key)] = unquote(value)
        return tfds_source(name, **opts)
    if sep and kind in ("librispeech", "manifest") and not arg.strip():
        raise DataError(f"data source {spec!r} names no path", hint=f"{kind}:PATH, e.g. manifest:test.jsonl")
    if sep and kind == "librispeech":
        return librispeech_folder(arg)
    if sep and kind == "manifest":
        return manifest_source(arg)
    if sep and kind == "synthetic":
        return _synthetic(arg)
    path = Path(spec).expanduser()
    if path.is_dir():
        return librispeech_folder(path)
    if path.suffix in (".jsonl", ".json"):
        return manifest_source(path)
    raise DataError(f"cannot tell what data source {spec!r} is",
                    hint="use tfds:NAME?split=..., librispeech:DIR, manifest:FILE.jsonl or synthetic:n=64")
