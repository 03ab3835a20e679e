"""A PyTorch Whisper-LLaDA composite for parity tests: transformers' ``WhisperEncoder`` +
the reference-named Q-Former (``qformer.py``) + the small LLaDA (``llada.py``).

The LLM reads ``[prompt ids | audio vectors | response ids]`` (SPEC sections 1 and 4) and the
logits of the response positions are returned. LoRA is folded into the LLM weights
(``llada.apply_lora``), which is what the LoRA forward equals in eval mode.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from transformers import WhisperConfig as HFWhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .llada import LLaDAReference, apply_lora
from .qformer import WindowQFormerRef, randomize_


class WhisperLLaDARef(nn.Module):
    def __init__(self, whisper: HFWhisperConfig, qformer: WindowQFormerRef, llada: LLaDAReference,
                 prompt_ids: Sequence[int]):
        super().__init__()
        self.encoder = WhisperEncoder(whisper)
        self.qformer = qformer
        self.llada = llada
        self.register_buffer("prompt_ids", torch.tensor(list(prompt_ids), dtype=torch.long), persistent=False)

    def audio(self, features: torch.Tensor) -> torch.Tensor:
        return self.qformer(self.encoder(features).last_hidden_state)

    def forward(self, features: torch.Tensor | None, response_ids: torch.Tensor) -> torch.Tensor:
        wte = self.llada.model.transformer.wte
        b = response_ids.shape[0]
        parts = [wte(self.prompt_ids)[None].expand(b, -1, -1)]
        if features is not None:
            parts.append(self.audio(features))
        parts.append(wte(response_ids))
        logits = self.llada(inputs_embeds=torch.cat(parts, dim=1))
        return logits[:, -response_ids.shape[1]:]


# ----------------------------------------------------------------------------- fixtures
LORA_PREFIX = "llada.base_model.model.model.transformer.blocks"


@dataclasses.dataclass
class Reference:
    """A randomly initialised PyTorch composite and its tensors by checkpoint family."""

    model: WhisperLLaDARef
    hf_whisper: HFWhisperConfig
    whisper_state: dict  # HF names, model.encoder.*
    llada_state: dict  # HF names, model.transformer.* (LoRA not folded in)
    pth_state: dict  # the published .pth 'model' dict: Q-Former (used + unused parts) + PEFT LoRA


def build_reference(cfg, seed: int = 0) -> Reference:
    """Torch composite matching ModelConfig ``cfg`` (Q-Former projector, LoRA enabled)."""
    torch.manual_seed(seed)
    w, p, l = cfg.whisper, cfg.projector, cfg.llm
    hf = HFWhisperConfig(num_mel_bins=w.n_mels, d_model=w.d_model, encoder_layers=w.encoder_layers,
                         encoder_attention_heads=w.encoder_heads, encoder_ffn_dim=w.encoder_ffn,
                         decoder_layers=w.decoder_layers, decoder_attention_heads=w.decoder_heads,
                         decoder_ffn_dim=w.decoder_ffn, vocab_size=w.vocab_size,
                         max_source_positions=w.max_source_positions, max_target_positions=w.max_target_positions,
                         dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    qformer = WindowQFormerRef(kv_dim=w.d_model, out_dim=l.d_model, hidden=p.hidden, heads=p.heads,
                               inter=p.intermediate, n_layers=p.layers, num_queries=p.num_queries,
                               window=p.window, stride=p.stride, eps=p.ln_eps, with_unused=True)
    llada = LLaDAReference(vocab=l.vocab_size, d=l.d_model, layers=l.n_layers, heads=l.n_heads,
                           kv_heads=l.n_kv_heads, hidden=l.mlp_hidden, theta=l.rope_theta, eps=l.norm_eps)
    model = WhisperLLaDARef(hf, qformer, llada, cfg.tokens.prompt_ids).eval()
    randomize_(model, seed=seed, std=0.2)
    g = torch.Generator().manual_seed(seed + 1)
    lora = {}
    for i in range(l.n_layers):
        for proj in cfg.lora.targets:
            out = l.n_heads * l.head_dim if proj == "q_proj" else l.n_kv_heads * l.head_dim
            lora[f"{LORA_PREFIX}.{i}.{proj}.lora_A.default.weight"] = torch.randn(cfg.lora.rank, l.d_model, generator=g) * 0.2
            lora[f"{LORA_PREFIX}.{i}.{proj}.lora_B.default.weight"] = torch.randn(out, cfg.lora.rank, generator=g) * 0.2
    whisper_state = {f"model.encoder.{k}": v.detach().clone() for k, v in model.encoder.state_dict().items()}
    llada_state = {k: v.detach().clone() for k, v in model.llada.state_dict().items()}
    pth_state = {**{k: v.detach().clone() for k, v in model.qformer.state_dict().items()}, **lora}
    apply_lora(model.llada, lora, cfg.lora.scale)
    return Reference(model, hf, whisper_state, llada_state, pth_state)


def write_checkpoints(ref: Reference, cfg, out: Path, tokenizer_json: Path) -> tuple[Path, Path, Path]:
    """An HF Whisper dir, an HF LLaDA dir (with tokenizer.json) and a reference .pth."""
    from safetensors.numpy import save_file

    from whisper_llada_jax.checkpoints.llada_hf import llada_config_to_hf

    whisper_dir, llada_dir, pth = out / "whisper", out / "llada", out / "projector.pth"
    whisper_dir.mkdir(parents=True)
    llada_dir.mkdir(parents=True)
    save_file({k: v.numpy() for k, v in ref.whisper_state.items()}, str(whisper_dir / "model.safetensors"))
    ref.hf_whisper.to_json_file(str(whisper_dir / "config.json"))
    save_file({k: v.numpy() for k, v in ref.llada_state.items()}, str(llada_dir / "model.safetensors"))
    (llada_dir / "config.json").write_text(json.dumps(llada_config_to_hf(cfg.llm, cfg.tokens)))
    (llada_dir / "tokenizer.json").write_text(Path(tokenizer_json).read_text())
    torch.save({"model": ref.pth_state, "optimizer": None, "scheduler": None,
                "config": {"run": {"epochs": 3}, "model": {"window": 17}}, "scaler": None, "epoch": 2}, pth)
    return whisper_dir, llada_dir, pth


def random_inputs(cfg, batch: int = 2, response: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(batch, cfg.whisper.n_mels, cfg.whisper.input_frames)).astype(np.float32)
    ids = rng.integers(0, cfg.llm.vocab_size, size=(batch, response)).astype(np.int32)
    return features, ids
