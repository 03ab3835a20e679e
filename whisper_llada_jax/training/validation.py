"""Validation WER during training: the fused decoder on a fixed dev subset.

Every ``eval.wer_every`` steps the trainer decodes the first ``eval.wer_utterances`` utterances
of ``data.eval_source`` with the train state's variables as they are (sharded on the training
mesh, nothing gathered) and the decode config ``eval.decode`` (default: the decode.yaml the
final MODEL_DIR will carry), and scores the corpus WER.

Multi-process runs: every host reads the same subset and passes identical batches, so each
decode is one SPMD program over the whole mesh (the model's shards stay where they are; the
small batch is replicated). Every host therefore computes the same WER; host 0 logs it. The
subset must be readable from every host (as the validation loss's eval source already is).
"""

from __future__ import annotations

import types
from typing import Any

import jax
import numpy as np

from whisper_llada_jax.errors import ConfigError


def decode_config(cfg, decode_defaults: dict | None):
    """The DecodeConfig of validation: the model's defaults, then ``eval.decode``."""
    from whisper_llada_jax.decoding.config import DecodeConfig, validate
    from whisper_llada_jax.evaluation.evaluate import parse_decode_spec

    base = DecodeConfig(**(decode_defaults or {}))
    if cfg.eval.decode:
        _, base = parse_decode_spec(cfg.eval.decode, base)
    if base.strategy != "none":
        raise ConfigError(f"eval.decode: validation WER decodes from audio alone; strategy {base.strategy!r} "
                          "needs a first pass", hint="use a standalone decode config (strategy: none)")
    validate(base)
    return base


class WerValidator:
    """``validator(variables) -> WER`` on the dev subset (batches read once, then reused)."""

    def __init__(self, cfg, data_cfg, mcfg, model, tokenizer, decode_defaults: dict | None):
        self.cfg, self.data_cfg, self.mcfg, self.model, self.tokenizer = cfg, data_cfg, mcfg, model, tokenizer
        self.decode = decode_config(cfg, decode_defaults)
        self._batches: list[dict] | None = None

    def batches(self) -> list[dict]:
        if self._batches is None:
            from whisper_llada_jax.data.config import DataConfig
            from whisper_llada_jax.data.pipeline import build_eval_iterator
            from whisper_llada_jax.data.sources import ListSource, parse_source

            src = parse_source(self.data_cfg.eval_source)
            n = min(self.cfg.eval.wer_utterances, len(src))
            subset = ListSource([src[i] for i in range(n)], name=f"{src!r}[:{n}]")
            dcfg = DataConfig(eval_source="", batch_size=self.decode.batch_size,
                              max_response_len=self.decode.gen_len, max_seconds=self.data_cfg.max_seconds,
                              read_threads=self.data_cfg.read_threads)
            it = build_eval_iterator(dcfg, self.mcfg, self.tokenizer, source=subset)
            self._batches = [b for b in it if b["valid"].any()]
            it.close()
        return self._batches

    def __call__(self, variables: Any, seed: int = 0):
        from whisper_llada_jax.evaluation.wer import corpus_wer
        from whisper_llada_jax.inference.driver import run_decode

        loaded = types.SimpleNamespace(config=self.mcfg, model=self.model, variables=variables,
                                       tokenizer=self.tokenizer)
        key = jax.random.PRNGKey(seed)
        refs, hyps = [], []
        for i, batch in enumerate(self.batches()):
            rows = run_decode(loaded, batch, self.decode, jax.random.fold_in(key, i))
            for ok, ref, row in zip(np.asarray(batch["valid"]), batch["text"], rows):
                if ok:
                    refs.append(ref)
                    hyps.append(row["hypothesis"])
        return corpus_wer(refs, hyps)
