"""Learning test: the tiny model memorises four utterances through the real trainer (data
pipeline, sharded step, checkpoints, final MODEL_DIR), then exact-mode diffusion decoding of
that MODEL_DIR returns their transcripts."""

import jax
import numpy as np

from whisper_llada_jax.checkpoints.model_dir import load_model_dir
from whisper_llada_jax.data.config import DataConfig
from whisper_llada_jax.data.pipeline import build_eval_iterator
from whisper_llada_jax.data.sources import parse_source
from whisper_llada_jax.decoding.api import run_decode
from whisper_llada_jax.decoding.config import DecodeConfig
from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json
from whisper_llada_jax.training.config import load_train_config
from whisper_llada_jax.training.trainer import train

SOURCE = "synthetic:n=4,seed=3,min_words=2,max_words=4"
R = 12
LOSS_BELOW = 0.05


def test_tiny_model_overfits_and_decodes_the_transcripts(tmp_path):
    src = parse_source(SOURCE)
    texts = [src[i]["text"] for i in range(len(src))]
    tok = build_tokenizer_json(texts, tmp_path / "tokenizer.json", vocab_size=100)
    cfg = load_train_config("tiny", [
        f"workdir={tmp_path / 'run'}", f"tokenizer={tok}", "steps=150", "progress_bar=false",
        f"data.train_source={SOURCE}", f"data.eval_source={SOURCE}", f"data.max_response_len={R}",
        "data.batch_size=8", "eval_interval=0", "log_interval=50", "checkpoint.save_interval_steps=1000",
        "optim.trainable=[.*]", "optim.warmup_steps=10", "optim.init_lr=1e-4", "optim.peak_lr=3e-3",
        "optim.end_lr=1e-3", "optim.decay_steps=140", "optim.weight_decay=0.0", "memory_report=false"])
    summary = train(cfg)
    assert summary.final_loss < LOSS_BELOW, summary

    loaded = load_model_dir(summary.model_dir)
    batch = next(iter(build_eval_iterator(DataConfig(batch_size=4, max_response_len=R, eval_source=SOURCE,
                                                     read_threads=1), loaded.config, loaded.tokenizer)))
    dcfg = DecodeConfig(gen_len=R, steps=R, block_length=R, batch_size=4)
    rows = run_decode(loaded, batch, dcfg, jax.random.PRNGKey(0))
    got = [r["hypothesis"] for r in rows]
    assert got == list(batch["text"]), (got, batch["text"])
    assert np.all(batch["valid"])
