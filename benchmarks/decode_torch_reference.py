"""The published decoding loop in PyTorch, on the same small model as the JAX benchmark.

Batch 1, a Python loop, one full forward of ``[prefix | response]`` per step, NumPy-free
selection with ``torch.topk``: what the reference code does (SPEC sections 8 and 10). The model
is the PyTorch LLaDA of ``tests/reference_torch/llada.py`` with weights copied from the JAX
parameters, so both sides compute the same function.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.reference_torch.llada import LLaDAReference  # noqa: E402


def torch_model_from_jax(llm_cfg, params) -> LLaDAReference:
    """A PyTorch LLaDA holding the JAX model's weights (kernels transposed)."""
    m = LLaDAReference(vocab=llm_cfg.vocab_size, d=llm_cfg.d_model, layers=llm_cfg.n_layers, heads=llm_cfg.n_heads,
                       kv_heads=llm_cfg.n_kv_heads, hidden=llm_cfg.mlp_hidden, theta=llm_cfg.rope_theta,
                       eps=llm_cfg.norm_eps)
    t = m.model.transformer
    cp = lambda dst, src: dst.data.copy_(torch.from_numpy(np.asarray(src, np.float32)))  # noqa: E731
    with torch.no_grad():
        cp(t.wte.weight, params["wte"]["embedding"])
        cp(t.ln_f.weight, params["ln_f"]["weight"])
        cp(t.ff_out.weight, np.asarray(params["ff_out"]["kernel"]).T)
        for i, blk in enumerate(t.blocks):
            p = params[f"blocks_{i}"]
            for norm in ("attn_norm", "ff_norm"):
                cp(getattr(blk, norm).weight, p[norm]["weight"])
            for name in ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"):
                cp(getattr(blk, name).weight, np.asarray(p[name]["kernel"]).T)
    return m.eval()


@torch.inference_mode()
def reference_decode(model: LLaDAReference, prefix_embeds: torch.Tensor, *, gen_len: int, steps: int,
                     block_length: int, mask_id: int, eos_id: int) -> tuple[list[int], int]:
    """One utterance, low-confidence remasking, temperature 0; returns (response ids, nfe)."""
    wte = model.model.transformer.wte
    p = prefix_embeds.shape[1]
    x = torch.full((1, gen_len), mask_id, dtype=torch.long)
    num_blocks = gen_len // block_length
    spb = steps // num_blocks
    nfe, early = 0, False
    for nb in range(num_blocks):
        block_mask = x[:, nb * block_length:(nb + 1) * block_length] == mask_id
        m = int(block_mask.sum())
        sched = [m // spb + (1 if i < m % spb else 0) for i in range(spb)]
        for i in range(spb):
            mask_index = x == mask_id
            if not mask_index.any():
                early = True
                break
            logits = model(inputs_embeds=torch.cat([prefix_embeds, wte(x)], dim=1))[:, p:]
            nfe += 1
            x0 = logits.argmax(-1)
            conf = torch.gather(logits.softmax(-1), -1, x0[..., None])[..., 0]
            conf[:, (nb + 1) * block_length:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, conf, torch.tensor(-np.inf))
            _, idx = torch.topk(conf[0], k=sched[i])
            transfer = torch.zeros_like(x, dtype=torch.bool)
            transfer[0, idx] = True
            x[transfer] = x0[transfer]
            eos = (transfer & (x0 == eos_id)).nonzero(as_tuple=True)[1]
            if eos.numel():
                x[:, int(eos[0]):] = eos_id
                early = True
        if early:
            break
    return x[0].tolist(), nfe
