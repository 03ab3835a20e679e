"""Learning test: a small Whisper-LLaDA memorises four utterances through the real trainer
(data pipeline, sharded step, checkpoints, final MODEL_DIR), then exact-mode diffusion decoding
(temperature 0, low-confidence remasking) of that MODEL_DIR returns their transcripts.

Why ``projector.init_std=0.5``: the tiny model's Whisper encoder is random and frozen, and the
Q-Former's BERT init (std 0.02, right for the paper's pretrained encoder) then shrinks the
audio to almost nothing: the four utterances' audio vectors differ by ~0.2 % of their size, so
the LLM cannot tell them apart and the loss stalls near 1.0 (text-only memorisation). With a
larger projector init the audio carries through and the loss falls to ~0.1 within 200 steps.
The whole LLM trains too (``optim.trainable``): a 2-layer random LLM with frozen random
embeddings and only LoRA has little room to memorise.
"""


import jax
import numpy as np
import pytest

from whisper_llada_jax.checkpoints.model_dir import load_model_dir
from whisper_llada_jax.data.config import DataConfig
from whisper_llada_jax.data.pipeline import build_eval_iterator
from whisper_llada_jax.data.sources import parse_source
from whisper_llada_jax.inference.driver import run_decode
from whisper_llada_jax.decoding.config import DecodeConfig
from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer, build_tokenizer_json
from whisper_llada_jax.training.config import load_train_config
from whisper_llada_jax.training.trainer import train

# Four sine tones (distinct frequencies) with 2-4 random words each: text tied to the audio.
SOURCE = "synthetic:n=4,seed=3,min_words=2,max_words=4"
STEPS = 200
LOSS_BELOW = 0.3  # the text-only plateau is ~1.0; memorised runs end near 0.05-0.1


@pytest.mark.slow
def test_tiny_model_overfits_and_decodes_the_transcripts(tmp_path):
    src = parse_source(SOURCE)
    texts = [src[i]["text"] for i in range(len(src))]
    assert len(set(texts)) == len(texts)
    tok = build_tokenizer_json(texts, tmp_path / "tokenizer.json", vocab_size=100)
    # The canvas is exactly the longest transcript: the loss covers positions up to the
    # batch's longest response only, so positions beyond it would never be trained, and
    # decoding on the same canvas asks the model exactly what it learnt.
    R = max(len(LLaDATokenizer(tok).encode(t)) for t in texts)
    cfg = load_train_config("tiny", [
        "model_overrides=[whisper.input_frames=80,projector.init_std=0.5]",
        f"workdir={tmp_path / 'run'}", f"tokenizer={tok}", f"steps={STEPS}", "progress_bar=false",
        f"data.train_source={SOURCE}", f"data.eval_source={SOURCE}", f"data.max_response_len={R}",
        "data.batch_size=8", "eval_interval=0", "log_interval=40", "checkpoint.save_interval_steps=1000",
        "optim.trainable=[.*]", "optim.warmup_steps=10", "optim.init_lr=1.0e-4", "optim.peak_lr=3.0e-3",
        "optim.end_lr=1.0e-4", f"optim.decay_steps={STEPS - 10}", "optim.weight_decay=0.0",
        "memory_report=false"])
    summary = train(cfg)
    assert summary.steps == STEPS
    assert summary.final_loss < LOSS_BELOW, summary

    loaded = load_model_dir(summary.model_dir)
    batch = next(iter(build_eval_iterator(DataConfig(batch_size=4, max_response_len=R, eval_source=SOURCE,
                                                     read_threads=1), loaded.config, loaded.tokenizer)))
    assert np.all(batch["valid"])
    dcfg = DecodeConfig(decoder="diffusion", gen_len=R, steps=R, block_length=R, batch_size=4,
                        temperature=0.0, remasking="low_confidence")
    rows = run_decode(loaded, batch, dcfg, jax.random.PRNGKey(0))
    got = [r["hypothesis"] for r in rows]
    assert got == list(batch["text"]) == texts, (got, batch["text"])
