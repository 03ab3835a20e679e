"""JSON-lines manifests and the published system's JSON layout, as lists of records.

Accepted layouts (paths relative to the manifest's folder):

- JSON lines, one utterance per line: ``{"id", "audio", "text", "first_pass"?}``;
  ``path`` is accepted for ``audio`` and ``origin_transcripts`` / ``first_pass`` for the
  first-pass transcript.
- The reference JSON: ``{"annotation": [{"path", "text", "origin_transcripts"?}, ...]}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from whisper_llada_jax.errors import DataError

_AUDIO_KEYS = ("audio", "path", "audio_path", "audio_filepath")
_FIRST_PASS_KEYS = ("first_pass", "origin_transcripts", "origin_transcript")


def _first_pass(entry: dict):
    for k in _FIRST_PASS_KEYS:
        if k in entry:
            v = entry[k]
            # the reference keeps a list of n-best transcripts: the first is the first pass
            if isinstance(v, list):
                v = v[0] if v else ""
            return str(v)
    return None


def _record(entry, where: str, base: Path, index: int) -> dict:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: entry is not a JSON object", hint='each entry needs "audio" and "text"')
    audio = next((entry[k] for k in _AUDIO_KEYS if k in entry), None)
    if audio is None or "text" not in entry:
        raise DataError(f"{where}: entry has no audio path or no text",
                        hint='give "audio" (or "path") and "text" fields')
    path = Path(str(audio)).expanduser()
    if not path.is_absolute():
        path = base / path
    uid = str(entry.get("id") or entry.get("key") or Path(str(audio)).stem or index)
    rec = {"id": uid, "audio": str(path), "text": str(entry["text"] or "")}
    fp = _first_pass(entry)
    if fp is not None:
        rec["first_pass"] = fp
    return rec


def read_manifest(path: str | Path) -> list[dict]:
    """Records ``{id, audio (absolute path), text, first_pass?}`` from either layout."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest does not exist", hint="give a .jsonl or .json manifest file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:  # e.g. an audio file given as the manifest
        raise DataError(f"{path}: cannot read the manifest ({e})", hint="give a .jsonl or .json manifest file") from None
    base = path.parent
    stripped = text.lstrip()
    if stripped.startswith("{") and '"annotation"' in stripped[:4096]:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(doc, dict) and isinstance(doc.get("annotation"), list):
            return [_record(e, f"{path}: annotation[{i}]", base, i) for i, e in enumerate(doc["annotation"])]
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})",
                            hint="one JSON object per line, or the reference {\"annotation\": [...]} layout") from None
        records.append(_record(entry, f"{path}:{lineno}", base, lineno - 1))
    if not records:
        raise DataError(f"{path}: manifest holds no utterances")
    return records


def write_manifest(path: str | Path, records: list[dict]) -> None:
    """Writes JSON lines (``first_pass`` kept when present); audio must be a path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            entry = {"id": r["id"], "audio": str(r["audio"]), "text": r["text"]}
            if r.get("first_pass") is not None:
                entry["first_pass"] = r["first_pass"]
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
