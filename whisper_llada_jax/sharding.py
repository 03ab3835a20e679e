"""Logical axis names and the one table that maps them to mesh axes.

Every parameter is created with logical axis names (``nn.with_logical_partitioning``) and the
main activations are constrained with ``nn.with_logical_constraint``. Only this table knows
about the mesh axes ``data``, ``fsdp`` and ``tensor``.

Parameter axes: ``vocab``, ``embed`` (model width), ``mlp`` (feed-forward hidden), ``heads``
(query heads x head_dim, fused), ``kv_heads`` (key/value heads x head_dim, fused), ``layers``
(stacked by scan), ``embed_unsharded`` (a second width axis in the same tensor: one
mesh axis may appear only once per tensor), ``lora_rank``, ``norm`` (vectors), ``conv_width``, ``mel``, ``positions``,
``queries``.
Activation axes: ``act_batch``, ``act_length``, ``act_embed``, ``act_heads``, ``act_mlp``,
``act_vocab``.
"""

from __future__ import annotations

from typing import Sequence

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes or None). First match wins (Flax semantics).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("embed_unsharded", None),  # a second width axis in one tensor (conv2, square Q-Former maps)
    ("layers", None),
    ("lora_rank", None),
    ("norm", None),
    ("conv_width", None),
    ("mel", None),
    ("positions", None),
    ("queries", None),
)


def rules_from_config(rules: Sequence[Sequence] | None) -> tuple[tuple[str, object], ...]:
    """Rules from a config's list of [name, axis] pairs (axis may be a list or null)."""
    if not rules:
        return DEFAULT_RULES
    out = []
    for name, axis in rules:
        out.append((name, tuple(axis) if isinstance(axis, (list, tuple)) else axis))
    return tuple(out)
