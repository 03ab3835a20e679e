"""Global batch semantics: ``data.batch_size`` in a train config is the GLOBAL batch.

The reference recipe's 32 is 32 on any pod: each host's pipeline builds ``global / hosts``
rows, each data-parallel device (data x fsdp, slices included) gets ``global / (data x fsdp)``
rows, and gradient accumulation splits those into ``grad_accum`` micro-batches inside the step.
Everything is checked to divide before anything compiles, and printed at start-up.
"""

from __future__ import annotations

import dataclasses

from whisper_llada_jax.errors import ConfigError

FIELD = "data.batch_size"


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    global_batch: int  # rows per optimiser update, all hosts together
    hosts: int  # processes feeding data
    batch_ways: int  # devices the batch is split over (data x fsdp, across slices)
    grad_accum: int  # micro-batches per update

    @property
    def per_host(self) -> int:
        return self.global_batch // self.hosts

    @property
    def per_device(self) -> int:
        return self.global_batch // self.batch_ways

    @property
    def micro_batch(self) -> int:
        """Rows per device per forward/backward pass."""
        return self.per_device // self.grad_accum

    def line(self) -> str:
        return (f"global batch {self.global_batch} = {self.hosts} host(s) x {self.per_host} per host "
                f"= {self.batch_ways} data-parallel device(s) x {self.per_device} per device; "
                f"grad_accum {self.grad_accum} (micro-batch {self.micro_batch} per device)")


def batch_layout(global_batch: int, hosts: int, batch_ways: int, grad_accum: int) -> BatchLayout:
    """The per-host / per-device split of ``global_batch``; one ConfigError naming the field."""
    if global_batch < 1:
        raise ConfigError(f"{FIELD}={global_batch}: the global batch must be >= 1")
    if global_batch % hosts:
        raise ConfigError(f"{FIELD}: the global batch {global_batch} does not split over {hosts} hosts",
                          hint=f"make it a multiple of {hosts} (data.batch_size is the global batch, not per host)")
    if global_batch % batch_ways:
        raise ConfigError(f"{FIELD}: the global batch {global_batch} does not split over "
                          f"data x fsdp = {batch_ways} devices", hint="make it a multiple of data x fsdp")
    per_device = global_batch // batch_ways
    if grad_accum < 1 or per_device % grad_accum:
        raise ConfigError(f"optim.grad_accum={grad_accum} does not divide the per-device batch {per_device} "
                          f"(global {global_batch} / {batch_ways} devices)",
                          hint="choose a divisor of the per-device batch")
    return BatchLayout(global_batch, hosts, batch_ways, grad_accum)
