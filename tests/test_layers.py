"""The package's import layers: ``decoding/`` (the fused decoders and their per-mode API) imports
neither ``checkpoints/`` nor ``inference/``, so a MODEL_DIR reader may use ``decoding.config``
without a cycle; ``inference/`` is where decoders, checkpoints and audio files meet."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "whisper_llada_jax"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_decoding_imports_neither_checkpoints_nor_inference():
    bad = {f"{p.name}: {m}" for p in (PKG / "decoding").glob("*.py") for m in _imports(p)
           if m.startswith(("whisper_llada_jax.checkpoints", "whisper_llada_jax.inference"))}
    assert not bad


def test_checkpoints_do_not_import_inference_and_mesh_is_top_level():
    bad = {f"{p.name}: {m}" for p in (PKG / "checkpoints").glob("*.py") for m in _imports(p)
           if m.startswith("whisper_llada_jax.inference")}
    assert not bad
    users = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if "whisper_llada_jax.mesh" in _imports(p)}
    assert {"training/trainer.py", "inference/placement.py"} <= users
    assert not (PKG / "training" / "mesh.py").exists() and not (PKG / "recognizer.py").exists()
