"""docs/configs.md documents every config field, and every YAML under configs/ loads strictly.

Each dataclass has a section ``### `ClassName` at `dotted.path` `` (``(top level)`` for the
root) under the ``## ... (`configs/<kind>/*.yaml`)`` heading of its config kind, holding one
``field | default | meaning`` table. A field counts as documented only in its own section.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from whisper_llada_jax import config as config_lib
from whisper_llada_jax.data.config import DataConfig, load_data_config
from whisper_llada_jax.decoding.config import DecodeConfig, load_decode_config
from whisper_llada_jax.training.config import TrainConfig, load_train_config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configs.md"
TOP = "(top level)"

ROOTS = {"model": config_lib.ModelConfig, "decode": DecodeConfig, "train": TrainConfig, "data": DataConfig}
LOADERS = {"model": config_lib.load_model_config, "decode": load_decode_config,
           "train": load_train_config, "data": load_data_config}

KIND = re.compile(r"^## .*\(`configs/(\w+)/\*\.yaml`\)\s*$")
SECTION = re.compile(r"^### `(\w+)` at `([^`]+)`\s*$")
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*(.*?)\s*\|\s*(.*?)\s*\|\s*$")


def _sections() -> dict[tuple[str, str], dict]:
    """(kind, dotted path) -> {"cls": name, "rows": {field: default cell}} from the doc."""
    out: dict[tuple[str, str], dict] = {}
    kind = cur = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            m = KIND.match(line)
            kind, cur = (m.group(1) if m else None), None
            continue
        if line.startswith("### "):
            m = SECTION.match(line)
            cur = None
            if m and kind:
                key = (kind, m.group(2))
                assert key not in out, f"docs/configs.md: section {key} appears twice"
                cur = out[key] = {"cls": m.group(1), "rows": {}}
            continue
        m = ROW.match(line)
        if cur is not None and m and m.group(1) != "field":
            assert m.group(1) not in cur["rows"], f"docs/configs.md: {m.group(1)} twice in one table"
            cur["rows"][m.group(1)] = m.group(2)
    return out


def _walk(cls: type, path: str = TOP):
    """(path, dataclass) for ``cls`` and every dataclass nested in its fields."""
    yield path, cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(hints[f.name], f.name if path == TOP else f"{path}.{f.name}")


def _expected():
    for kind, root in ROOTS.items():
        for path, cls in _walk(root):
            yield kind, path, cls


SECTIONS = _sections()


def test_doc_has_a_section_per_kind():
    kinds = {k for k, _ in SECTIONS}
    assert kinds == set(ROOTS), f"docs/configs.md config kinds {sorted(kinds)} != {sorted(ROOTS)}"


@pytest.mark.parametrize("kind,path,cls", list(_expected()), ids=lambda x: getattr(x, "__name__", str(x)))
def test_every_field_is_documented_in_its_section(kind, path, cls):
    section = SECTIONS.get((kind, path))
    assert section is not None, (f"docs/configs.md: no section '### `{cls.__name__}` at `{path}`' "
                                 f"under the {kind} configs heading")
    assert section["cls"] == cls.__name__, f"{kind} `{path}` is headed {section['cls']}, not {cls.__name__}"
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    missing = [f for f in fields if f not in section["rows"]]
    assert not missing, f"docs/configs.md, {kind} `{path}` ({cls.__name__}): undocumented fields {missing}"
    stale = sorted(set(section["rows"]) - set(fields))
    assert not stale, f"docs/configs.md, {kind} `{path}` ({cls.__name__}): documents removed fields {stale}"


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


@pytest.mark.parametrize("kind,path,cls", list(_expected()), ids=lambda x: getattr(x, "__name__", str(x)))
def test_documented_defaults_match_the_code(kind, path, cls):
    rows = SECTIONS.get((kind, path), {"rows": {}})["rows"]
    hints = typing.get_type_hints(cls)
    wrong = []
    for f in dataclasses.fields(cls):
        cell = rows.get(f.name)
        if cell is None:
            continue  # reported by the test above
        if dataclasses.is_dataclass(hints[f.name]):
            sub = f.name if path == TOP else f"{path}.{f.name}"
            if cell != f"see `{sub}`":
                wrong.append(f"{f.name}: {cell!r} (expected 'see `{sub}`')")
            continue
        m = re.fullmatch(r"`([^`]*)`", cell)
        actual = config_lib.to_dict(_default(f))
        if m is None:
            wrong.append(f"{f.name}: default {cell!r} is not one backticked value")
            continue
        text = m.group(1).replace("\\|", "|")
        if isinstance(actual, str):
            same = text == actual or (text == '""' and actual == "")
        else:
            documented = yaml.safe_load(text)
            same = (float(documented) == actual if isinstance(actual, float)
                    and isinstance(documented, (int, float)) and not isinstance(documented, bool)
                    else documented == actual and type(documented) is type(actual))
        if not same:
            wrong.append(f"{f.name}: documented {cell!r}, code has {actual!r}")
    assert not wrong, f"docs/configs.md, {kind} `{path}`: wrong defaults {wrong}"


def _yamls():
    return sorted((ROOT / "configs").glob("*/*.yaml"))


def test_every_config_kind_has_files():
    assert {p.parent.name for p in _yamls()} == set(LOADERS)


@pytest.mark.parametrize("path", _yamls(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_yaml_loads_strictly(path):
    kind = path.parent.name
    cfg = LOADERS[kind](path)
    assert isinstance(cfg, ROOTS[kind])
    assert LOADERS[kind](path.stem) == cfg  # the bare name resolves to the same file
    if kind == "train":
        # the data: mapping goes through the trainer's strict DataConfig load
        data = config_lib.from_dict(DataConfig, cfg.data, "data")
        assert isinstance(data, DataConfig)
        config_lib.load_model_config(cfg.model, cfg.model_overrides)


def test_unknown_fields_are_rejected_as_documented(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  peak_rl: 1.0e-4\n")
    with pytest.raises(config_lib.ConfigError, match=r"bad\.yaml\.optim: unknown field\(s\) \['peak_rl'\]"):
        load_train_config(bad)
    with pytest.raises(config_lib.ConfigError, match="unknown field"):
        config_lib.load_model_config("tiny", ["llm.n_layer=2"])
    with pytest.raises(config_lib.ConfigError, match="unknown field"):
        load_decode_config("semi_ar", ["step=32"])
    with pytest.raises(config_lib.ConfigError, match="unknown field"):
        load_data_config("synthetic", ["batchsize=4"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "train").glob("*.yaml")) + sorted((ROOT / "configs" / "data").glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_data_sources_are_well_formed(path):
    """Every source spec in a shipped config opens, or fails only because the data is not on this
    machine (a tfds dataset not prepared, a LibriSpeech folder absent) — never on its syntax."""
    from whisper_llada_jax.data.sources import parse_source
    from whisper_llada_jax.errors import DataError

    doc = yaml.safe_load(path.read_text())
    data = doc.get("data", doc)
    specs = [data[k] for k in ("train_source", "eval_source") if k in data]
    assert specs, path
    for spec in specs:
        try:
            parse_source(spec)
        except DataError as e:
            assert "not prepared" in e.message or "does not exist" in e.message or "not a folder" in e.message \
                or "no such" in e.message.lower(), f"{path.name}: {spec!r}: {e.message}"
