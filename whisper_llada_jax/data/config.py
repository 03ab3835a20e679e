"""``DataConfig``: where utterances come from and how the input pipeline batches them.

Loaded strictly like every other config (``config.load``, kind ``data``, files under
``configs/data/``). Source strings are parsed by ``data.sources.parse_source``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from whisper_llada_jax import config as config_lib
from whisper_llada_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # ---- where the utterances come from (see data/sources.py for the spec syntax)
    train_source: str = "synthetic:n=64,seed=0"
    eval_source: str = "synthetic:n=16,seed=1"
    # ---- batching: every batch has exactly these shapes, the last one is padded. In a train
    # config batch_size is the GLOBAL batch (all hosts); each host's pipeline builds
    # batch_size / hosts rows (``for_hosts``). A pipeline built directly takes it as is.
    batch_size: int = 8
    max_response_len: int = 128  # response tokens, right-padded with eos (gen_len)
    # A transcript longer than max_response_len: cut to it (truncate) or skipped + counted
    # (skip; the reference never cuts a target, so the paper config skips and counts).
    long_transcripts: Literal["truncate", "skip"] = "truncate"
    # ---- filtering: longer clips, empty transcripts and unreadable audio are skipped + counted
    # null: no limit, a clip longer than the model window is cut to it and kept with its whole
    # transcript (the reference).
    max_seconds: float | None = 30.0
    strict: bool = False  # raise DataError naming the file instead of skipping
    # ---- order
    shuffle: bool = True  # training split only; eval is always in order
    num_epochs: int | None = None  # training split; None repeats forever
    # ---- parallelism: decoding + resampling + log-mel run in worker processes
    num_workers: int = 0  # 0: in this process
    worker_buffer_size: int = 8
    read_threads: int = 4  # threads per worker reading records (I/O bound)

    def __post_init__(self):
        # ConfigError (not ValueError): DataConfig is also built directly from CLI flags
        # (`evaluate --workers`), where a ValueError would be a traceback.
        for name, low in (("batch_size", 1), ("max_response_len", 1), ("num_workers", 0),
                          ("worker_buffer_size", 1), ("read_threads", 1)):
            value = getattr(self, name)
            if value < low:
                raise ConfigError(f"{name} must be >= {low}, got {value}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ConfigError(f"num_epochs must be >= 1 or null, got {self.num_epochs}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"max_seconds must be > 0, got {self.max_seconds}")

    def for_hosts(self, hosts: int) -> "DataConfig":
        """This config with ``batch_size`` the per-host share of a global batch over ``hosts``
        processes (the split is checked by ``training.batch.batch_layout``)."""
        if hosts < 1 or self.batch_size % hosts:
            raise ConfigError(f"batch_size {self.batch_size} does not split over {hosts} hosts")
        return dataclasses.replace(self, batch_size=self.batch_size // hosts)


def load_data_config(source=None, overrides=()) -> DataConfig:
    """From a YAML path / name under configs/data/, a dict, or defaults, plus overrides."""
    return config_lib.load(DataConfig, source, overrides, kind="data")
