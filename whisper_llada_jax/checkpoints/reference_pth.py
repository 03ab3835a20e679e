"""The published Whisper-LLaDA ``.pth`` (SPEC section 6): import and export.

The file is a torch pickle ``{"model", "optimizer", "scheduler", "config", "scaler", "epoch"}``
whose ``model`` holds only the trainable tensors: the Q-Former (``adapter.*``),
``speech_query_tokens``, ``linear_proj.*`` and the PEFT LoRA tensors of the LLM. One table
(``projector_rules`` here, ``peft.lora_rules`` for the LoRA names) drives both directions.

A pickle can run arbitrary code when loaded, so it is read only with PyTorch's weights-only
unpickler; a file that needs anything more is refused with a ``CheckpointError``. PyTorch is an
optional dependency imported only here, only when a ``.pth`` is actually read or written.
"""

from __future__ import annotations

import argparse
import io
import logging
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from whisper_llada_jax import config as config_lib
from whisper_llada_jax.checkpoints.tensors import IDENTITY, TRANSPOSE, Rule, export_params, import_params, subtree
from whisper_llada_jax.config import ModelConfig
from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.outputs import atomic_file

log = logging.getLogger(__name__)

# Prefix of the LLM inside the reference model's PEFT wrapper.
LORA_PREFIX = "llada.base_model.model."
# Prefix of every name in a state dict saved from a DistributedDataParallel-wrapped model.
DDP_PREFIX = "module."
# BERT parts the query path never uses: read past on import, never written on export.
UNUSED = (
    r"^adapter\.cls\.",
    r"^adapter\.bert\.embeddings\.(word_embeddings|position_embeddings|position_ids)",
    r"^adapter\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.",
)
_LORA_KEY = r"^" + re.escape(LORA_PREFIX)


def _linear(src: str, dst: str) -> list[Rule]:
    return [Rule(f"{src}.weight", f"{dst}/kernel", TRANSPOSE), Rule(f"{src}.bias", f"{dst}/bias")]


def _layer_norm(src: str, dst: str) -> list[Rule]:
    return [Rule(f"{src}.weight", f"{dst}/scale"), Rule(f"{src}.bias", f"{dst}/bias")]


def projector_rules() -> list[Rule]:
    """Reference names -> paths inside the ``projector`` params of ``WindowQFormer``."""
    rules = [Rule("speech_query_tokens", "speech_query_tokens", IDENTITY)]
    rules += _layer_norm("adapter.bert.embeddings.LayerNorm", "bert/embeddings/LayerNorm")
    layer, dst = "adapter.bert.encoder.layer.{i}", "bert/layer_{i}"
    for att in ("attention", "crossattention"):
        for proj in ("query", "key", "value"):
            rules += _linear(f"{layer}.{att}.self.{proj}", f"{dst}/{att}/self/{proj}")
        rules += _linear(f"{layer}.{att}.output.dense", f"{dst}/{att}/output/dense")
        rules += _layer_norm(f"{layer}.{att}.output.LayerNorm", f"{dst}/{att}/output/LayerNorm")
    rules += _linear(f"{layer}.intermediate_query.dense", f"{dst}/intermediate_query/dense")
    rules += _linear(f"{layer}.output_query.dense", f"{dst}/output_query/dense")
    rules += _layer_norm(f"{layer}.output_query.LayerNorm", f"{dst}/output_query/LayerNorm")
    rules += _linear("linear_proj", "linear_proj")
    return rules


def lora_rules() -> list[Rule]:
    """Reference PEFT names -> paths inside the ``lora`` collection of the LLM."""
    from whisper_llada_jax.checkpoints.peft import lora_rules as peft_lora_rules

    return list(peft_lora_rules(LORA_PREFIX))


# ----------------------------------------------------------------------------- torch I/O
def _torch():
    try:
        import torch
    except ImportError:
        raise CheckpointError("reading or writing a .pth checkpoint needs PyTorch",
                              hint="pip install 'whisper-llada-jax[torch]'") from None
    return torch


class TorchStateSource:
    """A TensorSource over a torch state dict; each tensor becomes NumPy only when read."""

    def __init__(self, state: Mapping[str, Any], name: str):
        self._state = state
        self.name = name

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def get(self, key: str) -> np.ndarray:
        torch = _torch()
        t = self._state[key].detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:  # NumPy has no bf16: reinterpret the bits
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()


def read_pth(path: str | Path) -> dict:
    """Loads a ``.pth`` with the weights-only unpickler; returns the checkpoint dict."""
    torch = _torch()
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a .pth checkpoint file",
                              hint="give the .pth file itself (the published checkpoint is one file)")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        # argparse.Namespace (a common training ``config``) is plain data: allow just that class.
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds more than tensors and plain data ({first[:160]})",
            hint="only weights-only .pth files are read (a pickle can run code); re-save just the "
                 "state dict with torch.save({'model': state_dict}, path) in a trusted environment") from None
    except Exception as e:  # torch raises RuntimeError / EOFError / zipfile errors for damage
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:160]})",
                              hint="the file may be truncated; re-download or re-export it") from None
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("model"), Mapping):
        return dict(ckpt)
    if isinstance(ckpt, Mapping) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return {"model": dict(ckpt)}  # a bare state dict
    raise CheckpointError(f"{path}: not a Whisper-LLaDA checkpoint (no 'model' state dict)",
                          hint="expected the published .pth with keys model, optimizer, config, epoch")


def pth_source(path: str | Path) -> TorchStateSource:
    """The ``model`` tensors of a reference ``.pth`` as a lazy TensorSource."""
    state = read_pth(path)["model"]
    torch = _torch()
    if state and all(isinstance(k, str) and k.startswith(DDP_PREFIX) for k in state):
        # saved from a DistributedDataParallel wrapper (model.state_dict() of the wrapper): the
        # same tensors, every name behind "module."
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: 'model' holds non-tensor entries: {bad[:5]}")
    if not any(k.startswith(("adapter.", "speech_query_tokens", "linear_proj.")) for k in state):
        raise CheckpointError(f"{path}: holds no Whisper-LLaDA projector (no adapter.* / speech_query_tokens / "
                              "linear_proj.* tensors)", hint="is this the published Whisper-LLaDA checkpoint?")
    return TorchStateSource(state, str(path))


# ----------------------------------------------------------------------------- import / export
def import_reference_pth(path: str | Path, config: ModelConfig, abstract: Mapping,
                         shardings: Mapping | None = None) -> tuple[dict, dict | None]:
    """Reads the projector and LoRA tensors of a reference ``.pth``.

    ``abstract``: the composite's unboxed abstract variables (``{'params': {..., 'projector'},
    'lora': {'llm'}}``); ``shardings`` the matching tree of shardings (or None). Returns
    ``(projector_params, lora_llm)``; ``lora_llm`` is None when LoRA is disabled and the file
    has none.
    """
    if config.projector.kind != "qformer":
        raise CheckpointError(f"{path}: the reference .pth holds a Q-Former but projector.kind is "
                              f"{config.projector.kind!r}", hint="use a config with projector.kind: qformer")
    source = pth_source(path)
    names = source.keys()
    unused = [k for k in names if any(re.search(p, k) for p in UNUSED)]
    if unused:
        log.info("%s: ignoring %d unused Q-Former tensors (word/position embeddings, text-path "
                 "intermediate/output, cls.*)", path, len(unused))
    shard = lambda *keys: subtree(shardings, *keys)  # noqa: E731
    projector = import_params(source, projector_rules(), abstract["params"]["projector"],
                              shardings=shard("params", "projector"), ignore=UNUSED + (_LORA_KEY,))
    has_lora = any(re.search(_LORA_KEY, k) for k in names)
    lora_abstract = abstract.get("lora", {}).get("llm")
    if not lora_abstract:
        if has_lora:
            raise CheckpointError(f"{path}: holds LoRA tensors but the config has lora.enabled: false",
                                  hint="import with a config whose lora section matches the checkpoint")
        return projector, None
    if not has_lora:
        raise CheckpointError(f"{path}: holds no LoRA tensors ({LORA_PREFIX}...lora_A/B) but lora.enabled is true",
                              hint="set lora.enabled: false in the config, or use the full published checkpoint")
    lora = import_params(source, lora_rules(), lora_abstract, shardings=shard("lora", "llm"),
                         ignore=(r"^(?!" + re.escape(LORA_PREFIX) + ")",))
    return projector, lora




def reference_state(variables: Mapping) -> dict[str, np.ndarray]:
    """The ``model`` state of a reference ``.pth`` (float32 NumPy, reference names and shapes)."""
    state = {name: np.asarray(arr, np.float32)
             for name, arr in export_params(variables["params"]["projector"], projector_rules())}
    lora = variables.get("lora", {}).get("llm")
    if lora:
        state.update((name, np.asarray(arr, np.float32)) for name, arr in export_params(lora, lora_rules()))
    return state


def export_reference_pth(path: str | Path, config: ModelConfig, variables: Mapping, *, epoch: int = 0) -> Path:
    """Writes the trainable tensors in the published layout, atomically.

    Tensors are float32 (the reference trains fp32 master weights under autocast; widening bf16
    is exact, so a re-import gives back identical arrays). ``optimizer`` / ``scheduler`` /
    ``scaler`` are None: the file is for loading weights, not for resuming PyTorch training.
    """
    if config.projector.kind != "qformer":
        raise CheckpointError(f"export: the reference .pth layout holds a Q-Former, not projector.kind "
                              f"{config.projector.kind!r}")
    torch = _torch()
    model = {k: torch.from_numpy(np.array(v, np.float32, copy=True)) for k, v in reference_state(variables).items()}
    ckpt = {"model": model, "optimizer": None, "scheduler": None, "config": config_lib.to_dict(config),
            "scaler": None, "epoch": int(epoch)}
    path = Path(path)
    # Serialised in memory first (the projector and LoRA, not the 8B model): torch's zip writer
    # turns a disk-full / size-limit error into a bare RuntimeError, the file write keeps the OSError.
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    with atomic_file(path, "wb") as f:
        f.write(buf.getbuffer())
    return path
