"""Only what pyproject.toml cannot say: the top-level configs/ folder ships inside the package as
``whisper_llada_jax.configs`` (a wheel installed anywhere resolves ``--config paper``), next to
the packages found under whisper_llada_jax/. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["whisper_llada_jax", "whisper_llada_jax.*"]) + ["whisper_llada_jax.configs"],
    package_dir={"whisper_llada_jax.configs": "configs"},
)
