"""tensorflow-datasets sources: the real ``librispeech`` builder and any tfds audio dataset.

Reading: a prepared dataset (ArrayRecord files) is opened with ``tfds.data_source``, which
gives random access, so Grain can shard, shuffle and resume it like any other source.
Preparing: ``tfds build librispeech`` downloads from openslr.org; ``prepare_librispeech``
instead runs the same builder over tarballs already extracted on disk (no network), handing
the builder's download manager the local folders.

Use the ``lazy_decode`` config: it stores the FLAC bytes as they are (tfds' default config
decodes them with pydub at preparation time); the pipeline decodes them in its workers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

from whisper_llada_jax.errors import DataError

# tfds split name -> folder name inside the extracted LibriSpeech tarballs
LIBRISPEECH_SPLITS = {
    "dev_clean": "dev-clean", "dev_other": "dev-other",
    "test_clean": "test-clean", "test_other": "test-other",
    "train_clean100": "train-clean-100", "train_clean360": "train-clean-360",
    "train_other500": "train-other-500",
}


def _tfds():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_datasets as tfds

    return tfds


def _builder(name: str, **kwargs):
    """``tfds.builder`` without its GCS lookup: for a dataset not yet prepared, tfds asks the
    ``gs://tfds-data`` bucket for pre-computed metadata, into a fresh ``mkdtemp`` folder under
    /tmp that it never removes (one empty folder per call; the lookup itself is off in tfds'
    default settings). Nothing here may reach the network, so the lookup is skipped."""
    tfds = _tfds()
    with mock.patch.object(tfds.core.DatasetInfo, "initialize_from_bucket", lambda self: None):
        return tfds.builder(name, **kwargs)


def _stage_split(root: Path, subset: str, stage: Path) -> Path:
    """A folder shaped like one extracted tarball (``LibriSpeech/<subset>`` + metadata files),
    made of symlinks, so the builder's per-split glob sees only that subset."""
    src = root / "LibriSpeech" if (root / "LibriSpeech").is_dir() else root
    out = stage / subset / "LibriSpeech"
    out.mkdir(parents=True)
    (out / subset).symlink_to((src / subset).resolve(), target_is_directory=True)
    for meta in ("SPEAKERS.TXT", "CHAPTERS.TXT"):
        if (src / meta).is_file():
            (out / meta).symlink_to((src / meta).resolve())
        else:  # the builder reads them for metadata only; ';' lines are comments
            (out / meta).write_text(";\n")
    return stage / subset


def prepare_librispeech(extracted_root: str | Path, data_dir: str | Path, *,
                        splits: tuple[str, ...] | None = None, config: str = "lazy_decode"):
    """Runs tfds' ``librispeech`` builder over extracted tarballs under ``extracted_root``
    (``LibriSpeech/dev-clean/...``), writing ArrayRecord files to ``data_dir``; no network.

    ``splits`` (tfds names, e.g. ``("dev_clean",)``) defaults to every subset present.
    Returns the prepared builder.
    """
    tfds = _tfds()
    root = Path(extracted_root).expanduser()
    base = root / "LibriSpeech" if (root / "LibriSpeech").is_dir() else root
    present = {k: v for k, v in LIBRISPEECH_SPLITS.items() if (base / v).is_dir()}
    if splits is not None:
        unknown = [s for s in splits if s not in LIBRISPEECH_SPLITS]
        missing = [s for s in splits if s in LIBRISPEECH_SPLITS and s not in present]
        if unknown or missing:
            raise DataError(f"{base}: splits {unknown or missing} are {'unknown' if unknown else 'not extracted there'}",
                            hint=f"tfds split names: {sorted(LIBRISPEECH_SPLITS)}")
        present = {s: present[s] for s in splits}
    if not present:
        raise DataError(f"{base}: no extracted LibriSpeech subset found",
                        hint="expected e.g. LibriSpeech/dev-clean/SPEAKER/CHAPTER/*.flac")
    builder = _builder(f"librispeech/{config}", data_dir=str(data_dir), file_format="array_record")
    with tempfile.TemporaryDirectory() as tmp:
        local = {split: _stage_split(root, subset, Path(tmp)) for split, subset in present.items()}

        def download_and_extract(self, urls):  # the builder asks for all seven tarballs
            return {k: local[k] for k in urls if k in local}

        # The same override tfds' DatasetBuilderTestCase applies to run a builder offline.
        with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", download_and_extract):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    return builder


def _pick(features: dict, wanted: str | None, kind, what: str, name: str) -> str:
    if wanted:
        if wanted not in features:
            raise DataError(f"tfds:{name}: no feature {wanted!r}", hint=f"features are {sorted(features)}")
        return wanted
    found = [k for k, f in features.items() if isinstance(f, kind)]
    if not found:
        raise DataError(f"tfds:{name}: no {what} feature", hint=f"name one with {what}=FEATURE; features are {sorted(features)}")
    return found[0]


class TfdsSource:
    """Random access into a prepared tfds dataset (ArrayRecord) through ``tfds.data_source``.

    Picklable: worker processes reopen the files rather than receiving open handles.
    """

    def __init__(self, name: str, split: str, data_dir: str | None = None, audio: str | None = None,
                 text: str | None = None, id: str | None = None, first_pass: str | None = None):
        self.name, self.split, self.data_dir = name, split, data_dir
        tfds = _tfds()
        try:
            builder = _builder(name, data_dir=data_dir)
        except Exception as e:  # tfds raises several types for an unknown or unprepared name
            raise DataError(f"tfds:{name}: cannot open ({str(e).splitlines()[0]})",
                            hint="prepare it first (`tfds build`, or prepare_librispeech) and pass data_dir=") from None
        if not builder.is_prepared():
            raise DataError(f"tfds:{name}: not prepared under {builder.data_dir}",
                            hint="run `tfds build NAME --file_format=array_record` or data.librispeech_tfds.prepare_librispeech")
        feats = builder.info.features
        self.audio_key = _pick(feats, audio, tfds.features.Audio, "audio", name)
        self.text_key = _pick(feats, text, tfds.features.Text, "text", name)
        self.id_key = id if id else ("id" if "id" in feats else None)
        self.first_pass_key = first_pass
        self.sample_rate = int(feats[self.audio_key].sample_rate or 16000)
        self._ds = None
        self._len = len(self._open())

    def _open(self):
        if self._ds is None:
            tfds = _tfds()
            try:
                self._ds = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir, download=False)
            except Exception as e:
                raise DataError(f"tfds:{self.name}?split={self.split}: cannot open as a data source "
                                f"({str(e).splitlines()[0]})",
                                hint="the dataset must be prepared with file_format=array_record") from None
        return self._ds

    def __getstate__(self):
        return {**self.__dict__, "_ds": None}

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        ex = self._open()[int(index)]
        text = ex[self.text_key]
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        uid = ex[self.id_key] if self.id_key else f"{self.split}-{int(index):08d}"
        uid = uid.decode("utf-8") if isinstance(uid, bytes) else str(uid)
        audio = ex[self.audio_key]
        if isinstance(audio, np.ndarray) and audio.dtype == object:
            audio = audio.item()
        rec = {"id": uid, "audio": audio, "text": text, "sample_rate": self.sample_rate}
        if self.first_pass_key:
            fp = ex[self.first_pass_key]
            rec["first_pass"] = fp.decode("utf-8") if isinstance(fp, bytes) else str(fp)
        return rec

    def __repr__(self) -> str:
        return f"TfdsSource({self.name}, split={self.split}, {len(self)} utterances)"


def tfds_source(name: str, split: str | None = None, data_dir: str | None = None, **keys) -> TfdsSource:
    """``tfds:NAME?split=...&data_dir=...&audio=FEATURE&text=FEATURE&id=FEATURE``."""
    if not name:
        raise DataError("tfds source needs a dataset name", hint="tfds:librispeech/lazy_decode?split=test_clean")
    if not split:
        raise DataError(f"tfds:{name}: no split given", hint="add ?split=NAME, e.g. ?split=test_clean")
    allowed = {"audio", "text", "id", "first_pass"}
    if set(keys) - allowed:
        raise DataError(f"tfds:{name}: unknown option(s) {sorted(set(keys) - allowed)}",
                        hint="options: split, data_dir, audio, text, id, first_pass")
    return TfdsSource(name, split, data_dir=data_dir or None, **{k: v or None for k, v in keys.items()})


