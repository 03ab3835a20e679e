"""A small PyTorch LLaDA written from SPEC section 4, with the HF checkpoint's names.

``state_dict()`` keys are exactly ``model.transformer.{wte, blocks.N.*, ln_f, ff_out}.weight``,
so a test saves it to safetensors and loads it through the real importer. Bidirectional
attention with an optional key padding mask; no KV cache (the JAX model's caches are checked
against its own full forward). ``apply_lora`` folds PEFT-named LoRA tensors into the weights,
which is what the LoRA forward equals in eval mode.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(seq: int, dim: int, theta: float):
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden, eps):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.attn_norm = RMSNorm(d, eps)
        self.ff_norm = RMSNorm(d, eps)
        self.q_proj = nn.Linear(d, heads * self.hd, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.attn_out = nn.Linear(heads * self.hd, d, bias=False)
        self.ff_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.ff_out = nn.Linear(hidden, d, bias=False)

    def forward(self, x, cos, sin, key_mask):
        b, s, _ = x.shape
        n = self.attn_norm(x)
        q = self.q_proj(n).view(b, s, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(n).view(b, s, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(n).view(b, s, self.kv_heads, self.hd).transpose(1, 2)
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(q.dtype)
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(k.dtype)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.hd)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(torch.float32).min)
        attn = scores.softmax(-1).to(v.dtype) @ v
        x = x + self.attn_out(attn.transpose(1, 2).reshape(b, s, -1))
        h = self.ff_norm(x)
        return x + self.ff_out(nn.functional.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDAReference(nn.Module):
    """``forward(ids=None, inputs_embeds=None, attention_mask=None) -> logits``."""

    def __init__(self, vocab=128, d=64, layers=2, heads=4, kv_heads=None, hidden=128, theta=500000.0, eps=1e-5):
        super().__init__()
        self.theta, self.hd = theta, d // heads
        t = nn.Module()
        t.wte = nn.Embedding(vocab, d)
        t.blocks = nn.ModuleList(Block(d, heads, kv_heads or heads, hidden, eps) for _ in range(layers))
        t.ln_f = RMSNorm(d, eps)
        t.ff_out = nn.Linear(d, vocab, bias=False)
        self.model = nn.Module()
        self.model.transformer = t

    def forward(self, ids=None, inputs_embeds=None, attention_mask=None):
        t = self.model.transformer
        x = t.wte(ids) if inputs_embeds is None else inputs_embeds
        cos, sin = rope_tables(x.shape[1], self.hd, self.theta)
        mask = None if attention_mask is None else attention_mask.bool()
        for block in t.blocks:
            x = block(x, cos, sin, mask)
        return t.ff_out(t.ln_f(x))


def apply_lora(model: LLaDAReference, lora: Mapping[str, torch.Tensor], scale: float) -> None:
    """Adds ``B @ A * scale`` to each targeted weight. ``lora`` holds PEFT names
    (``...blocks.N.<proj>.lora_A[.default].weight``); anything before ``model.transformer.`` is
    ignored."""
    weights = dict(model.named_parameters())
    with torch.no_grad():
        for name, a in lora.items():
            if ".lora_A" not in name:
                continue
            base = name[name.index("model.transformer."):].split(".lora_A")[0] + ".weight"
            b = lora[name.replace(".lora_A", ".lora_B")]
            weights[base].add_(b.float() @ a.float() * scale)
