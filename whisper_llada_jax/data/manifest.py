"""JSON-lines manifests and the published system's JSON layout, as lists of records.

Accepted layouts (paths relative to the manifest's folder):

- JSON lines, one utterance per line: ``{"id", "audio", "text", "first_pass"?}``;
  ``path`` is accepted for ``audio`` and ``origin_transcripts`` / ``first_pass`` for the
  first-pass transcript.
- The reference JSON: ``{"annotation": [{"path", "text", "origin_transcripts"?}, ...]}``.

Files are UTF-8 (a byte-order mark is dropped; CRLF line ends and blank lines are fine). Fields
are typed: ``audio`` and ``text`` strings, ``id`` a string or an integer (absent: the audio
file's stem), ``first_pass`` a string (or a list of strings); a wrong type, NaN or a line that
is not a JSON object is a ``DataError`` naming the line, never a value read as its Python
spelling. Every JSON-lines reader of the project (manifests, first-pass files) goes through
``json_lines``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from whisper_llada_jax.errors import DataError

_AUDIO_KEYS = ("audio", "path", "audio_path", "audio_filepath")
_FIRST_PASS_KEYS = ("first_pass", "origin_transcripts", "origin_transcript")


# ----------------------------------------------------------------------------- JSON lines
def read_text_file(path: str | Path, what: str, hint: str) -> str:
    """The UTF-8 text of ``path`` (a byte-order mark dropped); DataError naming the file when it
    is missing, a folder or not UTF-8 text."""
    path = Path(path)
    if not path.is_file():
        state = ("is a folder, not a file" if path.is_dir() else "is not a regular file (a pipe or device)"
                 if path.exists() else "does not exist")
        raise DataError(f"{path}: {what} {state}", hint=hint)
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:  # e.g. an audio file given as the manifest
        raise DataError(f"{path}: cannot read the {what} ({e})", hint=hint) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def json_lines(path: str | Path, what: str, hint: str, text: str | None = None) -> Iterator[tuple[str, dict]]:
    """``(where, object)`` per non-blank line of a JSON-lines file, ``where`` = ``PATH:LINE``.

    Lines end at ``\n`` only (CRLF files work): a transcript holding U+2028 or a form feed,
    which JSON writers leave unescaped, stays one record. NaN / Infinity (Python's json
    extension, not JSON) and anything but an object are errors naming the line; lines are
    yielded in order, so the first problem of the file is the one reported."""
    path = Path(path)
    text = read_text_file(path, what, hint) if text is None else text
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            entry = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})", hint=hint) from None
        except ValueError as e:
            raise DataError(f"{where}: {e}", hint=hint) from None
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(entry).__name__}", hint=hint)
        yield where, entry


def _unicode(value: str, key: str, where: str) -> str:
    """``value`` if it is text: JSON's ``\\udce9`` escapes make unpaired surrogates, which no
    UTF-8 output can hold (a transcript file would fail half-written)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: {key!r} holds an unpaired surrogate escape ({ascii(value)[:60]}), not text",
                        hint="write the file as UTF-8 text") from None
    return value


def string_field(entry: dict, key: str, where: str, *, required: bool = False, empty_ok: bool = True) -> str | None:
    """``entry[key]`` as a string; None when absent or null (an error when ``required``). A
    number, list or object is refused rather than turned into its Python spelling."""
    value = entry.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: needs a {key!r} field", hint=f'e.g. "{key}": "..."')
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__} {json.dumps(value)[:40]}",
                        hint=f'quote it: "{key}": "..."')
    if not empty_ok and not value.strip():
        raise DataError(f"{where}: {key!r} is empty", hint=f"give a non-empty {key!r}")
    return _unicode(value, key, where)


def id_field(entry: dict, where: str, *keys: str) -> str | None:
    """The utterance id under the first of ``keys`` present: a non-empty string or an integer
    (0 included), else None; a float, bool, list or object is refused."""
    for key in keys or ("id",):
        value = entry.get(key)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise DataError(f"{where}: {key!r} must be a string or an integer, got {type(value).__name__}",
                            hint=f'e.g. "{key}": "utt-001"')
        if not value.strip():
            raise DataError(f"{where}: {key!r} is empty", hint="give every utterance a non-empty id, or leave it out")
        return _unicode(value, key, where)
    return None


def _first_pass(entry: dict, where: str):
    for k in _FIRST_PASS_KEYS:
        if entry.get(k) is not None:
            v = entry[k]
            # the reference keeps a list of n-best transcripts: the first is the first pass
            if isinstance(v, list):
                if not all(isinstance(x, str) for x in v):
                    raise DataError(f"{where}: {k!r} must be a string or a list of strings")
                return _unicode(v[0], k, where) if v else ""
            return string_field(entry, k, where)
    return None


def read_first_passes(path: str | Path) -> dict[str, str]:
    """``id -> first-pass text`` from a first-pass file (``deliberate`` and ``evaluate
    --first-pass``): JSON lines with ``id`` and the text as ``hypothesis`` (what ``transcribe``
    writes) or ``first_pass``; a null field counts as absent, ``""`` is an empty first pass. A
    line with both (a deliberation's output: ``first_pass`` was deliberated into ``hypothesis``)
    is refused rather than guessed at. DataError naming the line."""
    hint = "JSON lines with id and hypothesis (as transcribe writes them) or first_pass"
    out: dict[str, str] = {}
    for where, entry in json_lines(path, "first-pass file", hint):
        uid = id_field(entry, where)
        given = [k for k in ("hypothesis", "first_pass") if entry.get(k) is not None]
        if uid is None or not given:
            raise DataError(f"{where}: expected a JSON object with id and hypothesis (or first_pass)", hint=hint)
        if len(given) == 2:
            raise DataError(f"{where}: both 'hypothesis' and 'first_pass' (a deliberation's output: which one is "
                            "the first pass?)", hint="keep the field to deliberate from, e.g. "
                            "jq -c '{id, first_pass}' FILE (the original first pass) or '{id, hypothesis}' (its "
                            "deliberated result)")
        if uid in out:
            raise DataError(f"{where}: duplicate id {uid!r}", hint="one first pass per utterance")
        out[uid] = string_field(entry, given[0], where)
    return out


def _record(entry, where: str, base: Path, index: int, require_text: bool = True, check_paths: bool = False) -> dict:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: entry is not a JSON object", hint='each entry needs "audio" and "text"')
    key = next((k for k in _AUDIO_KEYS if entry.get(k) is not None), None)
    if key is None:
        raise DataError(f"{where}: needs an \"audio\" path",
                        hint='give "audio" (or "path" / "audio_filepath"), e.g. {"id": "u1", "audio": "u1.flac", '
                             '"text": "..."}')
    if require_text and entry.get("text") is None:
        raise DataError(f"{where}: needs a \"text\" field (the reference transcript)",
                        hint='e.g. {"id": "u1", "audio": "u1.flac", "text": "..."}')
    audio = string_field(entry, key, where, empty_ok=False)
    text = string_field(entry, "text", where)
    given = Path(audio).expanduser()
    path = given if given.is_absolute() else base / given
    if check_paths and path != given and not path.exists() and given.exists():
        raise DataError(f"{where}: {audio} is not in the manifest's folder ({base}) but in the working directory",
                        hint="manifest paths are relative to the manifest's folder: write them so, or absolute")
    uid = id_field(entry, where, "id", "key") or Path(audio).stem or str(index)
    rec = {"id": uid, "audio": str(path), "text": text}
    if text is None:  # require_text=False: no reference
        del rec["text"]
    fp = _first_pass(entry, where)
    if fp is not None:
        rec["first_pass"] = fp
    return rec


def read_manifest(path: str | Path, require_text: bool = True, for_files: bool = False) -> list[dict]:
    """Records ``{id, audio (absolute path), text, first_pass?}`` from either layout
    (``require_text=False``: ``text``, the reference, may be absent, as for ``transcribe``).

    ``for_files`` (commands that read every clip up front: ``transcribe``, ``deliberate``): a
    duplicate id is an error naming its line, and so is a missing audio path that exists
    relative to the working directory (the usual slip: paths written relative to the cwd)."""
    path = Path(path)
    hint = 'one JSON object per line ({"id", "audio", "text"}), or the reference {"annotation": [...]} layout'
    if path.suffix.lower() in (".csv", ".tsv"):
        raise DataError(f"{path}: CSV / TSV manifests are not read", hint=f"convert it to JSON lines: {hint}")
    text = read_text_file(path, "manifest", "give a .jsonl or .json manifest file")
    base = path.parent
    stripped = text.lstrip()
    if stripped.startswith("{") and '"annotation"' in stripped[:4096]:
        try:
            doc = json.loads(text, parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        except ValueError as e:
            raise DataError(f"{path}: {e}") from None
        if isinstance(doc, dict) and "annotation" in doc:
            if not isinstance(doc["annotation"], list):
                raise DataError(f"{path}: \"annotation\" must be a list of entries", hint=hint)
            entries = [(f"{path}: annotation[{i}]", e) for i, e in enumerate(doc["annotation"])]
        else:
            entries = json_lines(path, "manifest", hint, text)
    else:
        entries = json_lines(path, "manifest", hint, text)
    records, seen = [], set()
    for i, (where, entry) in enumerate(entries):
        rec = _record(entry, where, base, i, require_text, for_files)
        if for_files and rec["id"] in seen:
            raise DataError(f"{where}: duplicate id {rec['id']!r}", hint="give every utterance its own id")
        seen.add(rec["id"])
        records.append(rec)
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
