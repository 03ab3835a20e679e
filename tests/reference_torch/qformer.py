"""A small PyTorch window Q-Former (query path only) with the reference checkpoint's names.

Written from SPEC section 3 for parity tests: ``state_dict()`` keys are exactly the published
``.pth`` names (``adapter.bert.*``, ``speech_query_tokens``, ``linear_proj.*``). With
``with_unused=True`` it also carries the BERT parts the query path never touches (word /
position embeddings, text-path ``intermediate`` / ``output``, ``cls.predictions``), as the
published checkpoint does.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfAttn(nn.Module):
    def __init__(self, hidden, heads, kv_dim):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_dim, hidden)
        self.value = nn.Linear(kv_dim, hidden)

    def forward(self, h, kv):
        b, n, d = h.shape
        hd = d // self.heads
        q = self.query(h).view(b, n, self.heads, hd).transpose(1, 2)
        k = self.key(kv).view(b, kv.shape[1], self.heads, hd).transpose(1, 2)
        v = self.value(kv).view(b, kv.shape[1], self.heads, hd).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        return (probs @ v).transpose(1, 2).reshape(b, n, d)


class Output(nn.Module):
    def __init__(self, d_in, hidden, eps):
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, hidden, heads, kv_dim, eps):
        super().__init__()
        self.self = SelfAttn(hidden, heads, kv_dim)
        self.output = Output(hidden, hidden, eps)

    def forward(self, h, kv):
        return self.output(self.self(h, kv), h)


class Intermediate(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.dense = nn.Linear(hidden, inter)

    def forward(self, h):
        return torch.nn.functional.gelu(self.dense(h))  # exact erf GELU


class Layer(nn.Module):
    def __init__(self, hidden, heads, inter, kv_dim, eps, with_unused):
        super().__init__()
        self.attention = Attention(hidden, heads, hidden, eps)
        self.crossattention = Attention(hidden, heads, kv_dim, eps)
        self.intermediate_query = Intermediate(hidden, inter)
        self.output_query = Output(inter, hidden, eps)
        if with_unused:  # the text path, never used for speech queries
            self.intermediate = Intermediate(hidden, inter)
            self.output = Output(inter, hidden, eps)

    def forward(self, h, window):
        h = self.attention(h, h)
        h = self.crossattention(h, window)
        return self.output_query(self.intermediate_query(h), h)


class Embeddings(nn.Module):
    def __init__(self, hidden, eps, with_unused):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        if with_unused:
            self.word_embeddings = nn.Embedding(30522, hidden)
            self.position_embeddings = nn.Embedding(512, hidden)


class Encoder(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class Bert(nn.Module):
    def __init__(self, hidden, heads, inter, kv_dim, n_layers, eps, with_unused):
        super().__init__()
        self.embeddings = Embeddings(hidden, eps, with_unused)
        self.encoder = Encoder([Layer(hidden, heads, inter, kv_dim, eps, with_unused) for _ in range(n_layers)])


class Predictions(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(30522))
        self.transform = Output(hidden, hidden, 1e-12)


class Cls(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.predictions = Predictions(hidden)


class Adapter(nn.Module):
    def __init__(self, hidden, heads, inter, kv_dim, n_layers, eps, with_unused):
        super().__init__()
        self.bert = Bert(hidden, heads, inter, kv_dim, n_layers, eps, with_unused)
        if with_unused:
            self.cls = Cls(hidden)


class WindowQFormerRef(nn.Module):
    """(B, T, kv_dim) encoder output -> (B, W * num_queries, out_dim)."""

    def __init__(self, *, kv_dim, out_dim, hidden=768, heads=12, inter=3072, n_layers=2,
                 num_queries=4, window=17, stride=17, eps=1e-12, with_unused=False):
        super().__init__()
        self.window, self.stride = window, stride
        self.adapter = Adapter(hidden, heads, inter, kv_dim, n_layers, eps, with_unused)
        self.speech_query_tokens = nn.Parameter(torch.randn(1, num_queries, hidden) * 0.02)
        self.linear_proj = nn.Linear(hidden, out_dim)

    def forward(self, encoder_out):
        b, t, d = encoder_out.shape
        windows = encoder_out.unfold(1, self.window, self.stride)  # (B, W, d, window)
        w = windows.shape[1]
        windows = windows.permute(0, 1, 3, 2).reshape(b * w, self.window, d)
        bert = self.adapter.bert
        h = bert.embeddings.LayerNorm(self.speech_query_tokens.expand(b * w, -1, -1))
        for layer in bert.encoder.layer:
            h = layer(h, windows)
        return self.linear_proj(h).reshape(b, w * h.shape[1], -1)


def randomize_(module: nn.Module, seed: int = 0, std: float = 0.3) -> nn.Module:
    """Replaces every parameter with seeded noise (LayerNorm weights around 1), so a parity
    test catches swapped or transposed tensors that a default init (ones / zeros) would hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            base = 1.0 if name.endswith("LayerNorm.weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * std + base)
    return module
