"""``DataConfig``: where utterances come from and how the input pipeline batches them.

Loaded strictly like every other config (``config.load``, kind ``data``, files under
``configs/data/``). Source strings are parsed by ``data.sources.parse_source``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from whisper_llada_jax import config as config_lib


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # ---- where the utterances come from (see data/sources.py for the spec syntax)
    train_source: str = "synthetic:n=64,seed=0"
    eval_source: str = "synthetic:n=16,seed=1"
    # ---- batching (per host): every batch has exactly these shapes, the last one is padded
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
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_response_len < 1:
            raise ValueError(f"max_response_len must be >= 1, got {self.max_response_len}")
        if self.num_workers < 0 or self.read_threads < 1:
            raise ValueError("num_workers must be >= 0 and read_threads >= 1")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or null, got {self.num_epochs}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")


def load_data_config(source=None, overrides=()) -> DataConfig:
    """From a YAML path / name under configs/data/, a dict, or defaults, plus overrides."""
    return config_lib.load(DataConfig, source, overrides, kind="data")
