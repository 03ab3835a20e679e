"""Variables laid out for decoding: the layer stack unrolled and LoRA merged, once, at load
(and, on CPU, the feed-forward run in row chunks: ``LLMConfig.ff_row_chunks``).

Training scans the layer stack (``llm.scan_layers``: one compiled block, a leading ``layers``
axis on every block weight). Inside a decode ``while_loop`` a scanned stack is an inner loop
per forward that slices each layer's weights anew; an unrolled stack reads them directly.
LoRA adds two small matmuls per projection per forward; folded into the kernels once it adds
nothing. ``for_decoding`` turns a trained model's (config, variables) into that layout; the
results are the same up to float rounding (tested).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax

from whisper_llada_jax.models.lora import merge_lora


def unscan_blocks(tree: Mapping, n_layers: int) -> dict:
    """Replaces every ``blocks`` subtree (leading ``layers`` axis) by ``blocks_0..blocks_{n-1}``."""
    out = {}
    for key, value in tree.items():
        if key == "blocks" and isinstance(value, Mapping):
            for i in range(n_layers):
                out[f"blocks_{i}"] = jax.tree.map(lambda a, i=i: a[i], dict(value))
        elif isinstance(value, Mapping):
            out[key] = unscan_blocks(value, n_layers)
        else:
            out[key] = value
    return out


def for_decoding(config: Any, variables: Mapping, *, unscan: bool = True, merge: bool = True) -> tuple[Any, dict]:
    """``(config, variables)`` of a ``ModelConfig`` (``llm`` / ``lora`` fields) with the layer
    stack unrolled (``unscan``) and LoRA folded into the kernels (``merge``)."""
    variables = dict(nn.unbox(variables))
    if merge and config.lora.enabled and "lora" in variables:
        variables = {"params": merge_lora(variables["params"], variables.pop("lora"), config.lora),
                     **{k: v for k, v in variables.items() if k != "params"}}
        config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, enabled=False))
    if jax.default_backend() == "cpu" and config.llm.ff_row_chunks == 1:
        # the feed-forward in two row chunks on CPU (LLMConfig.ff_row_chunks): +10 % exact batch-1
        # decoding on a 2-core x86 (benchmarks/decode_throughput.py), the same numbers
        config = dataclasses.replace(config, llm=dataclasses.replace(config.llm, ff_row_chunks=2))
    if unscan and config.llm.scan_layers:  # the LLM's stack only (the encoder's has its own flag)
        variables = {k: {**v, "llm": unscan_blocks(v["llm"], config.llm.n_layers)} if "llm" in v else v
                     for k, v in variables.items()}
        config = dataclasses.replace(config, llm=dataclasses.replace(config.llm, scan_layers=False))
    return config, variables
