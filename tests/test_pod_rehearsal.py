"""docs/pod.md at tiny scale on a simulated two-host pod: 2 processes x 4 CPU devices, joined by
jax.distributed with gloo collectives, set up through the launchers' environment variables, so
every command line is the runbook's.

1. `import` a Hugging Face Whisper + LLaDA and a published-layout `.pth` onto an fsdp 4 x
   tensor 2 mesh spanning both hosts (the same bytes as a one-device import);
2. `train` from it with global batch 8 over data 2 x fsdp 2 x tensor 2 and validation WER every
   checkpoint; one host is SIGKILLed after a checkpoint has committed (its partner is stopped
   as a pod's scheduler would), both restart, and the run resumes and finishes with the weights
   of an uninterrupted run, bit for bit;
3. `export --checkpoint RUN --step best`: the step with the lowest recorded validation WER;
4. `evaluate` on both hosts (each its own fsdp 2 x tensor 2 mesh): the hypotheses of a
   one-process one-device evaluation of the same MODEL_DIR, the same file byte for byte;
5. `export` to the published `.pth` and to Hugging Face: loaded in PyTorch (transformers'
   WhisperEncoder, the reference Q-Former and LLaDA of tests/reference_torch), they give the
   JAX model's logits.

Each host runs this file as a script: ``python THIS JSON_LIST_OF_ARGV``.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import _multiprocess as mp

STEPS, SAVE_EVERY = 6, 2
IMPORT_MESH = ["mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2"]
TRAIN_MESH = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
HOST_MESH = ["mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2"]  # inference: each host's own 4 devices
WER_DECODE = "gen_len=16,steps=4,block_length=16,batch_size=4"
EVAL = ["--data", "synthetic:n=5,seed=3", "--decode", "gen_len=16,steps=8,block_length=8,batch_size=2"]


def _published_checkpoints(root: Path):
    """Tiny stand-ins for Whisper-large-v3, LLaDA-8B-Instruct (with a tokenizer of the synthetic
    corpus's words) and the published projector + LoRA .pth."""
    from tests.reference_torch.composite import build_reference, write_checkpoints
    from whisper_llada_jax.config import load_model_config
    from whisper_llada_jax.data.sources import _WORDS
    from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json

    # transformers' WhisperEncoder takes 2 x max_source_positions frames: the tiny config's 400
    cfg = load_model_config("tiny", ["whisper.max_source_positions=200"])
    tok = build_tokenizer_json([" ".join(_WORDS)] * 4, root / "tokenizer.json", vocab_size=120)
    return write_checkpoints(build_reference(cfg, seed=4), cfg, root / "ckpt", tok)


def _on_both_hosts(runs_of, port):
    return mp.start(__file__, [[json.dumps(runs_of(pid))] for pid in range(2)],
                    env=[mp.distributed_env(pid, port) for pid in range(2)])


def _sealed(ckdir: Path) -> list[int]:
    """Steps Orbax committed and process 0 sealed (integrity.json is written after the commit)."""
    return sorted(int(p.parent.name) for p in ckdir.glob("*/integrity.json") if p.parent.name.isdigit())


def _committed(ckdir: Path) -> list[int]:
    """Steps Orbax committed (renamed from its temporary name), sealed yet or not."""
    return sorted(int(p.name) for p in ckdir.iterdir() if p.name.isdigit()) if ckdir.is_dir() else []


def _kill_after_first_commit(procs, ckdir: Path, timeout: float = 400.0):
    """SIGKILL host 1 once a step has committed; host 0, whose collectives then fail or hang, is
    stopped after a grace period, as a pod's scheduler restarts a slice that lost a host."""
    t0 = time.monotonic()
    while not _sealed(ckdir):
        assert time.monotonic() - t0 < timeout and all(p.poll() is None for p in procs), \
            "\n".join(p.communicate()[1][-3000:] for p in procs)
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    try:
        procs[0].wait(timeout=20)
    except subprocess.TimeoutExpired:  # still blocked in a collective its partner never joins
        procs[0].send_signal(signal.SIGKILL)
    return [p.communicate() for p in procs]


def _hypotheses(out: Path) -> str:
    (path,) = (out / "hypotheses").glob("*.jsonl")
    return path.read_text()


@pytest.mark.slow
def test_runbook_on_a_simulated_two_host_pod(tmp_path):
    from whisper_llada_jax.cli import main
    from whisper_llada_jax.training.checkpointing import Checkpointer
    from whisper_llada_jax.training.config import CheckpointConfig

    whisper, llada, pth = _published_checkpoints(tmp_path)
    init, run, best = tmp_path / "models" / "init", tmp_path / "runs" / "rehearsal", tmp_path / "models" / "best"
    imp = ["import", "--whisper", str(whisper), "--llada", str(llada), "--projector-checkpoint", str(pth),
           "--config", "tiny"]
    train = ["train", "--config", "tiny", f"init_from={init}", f"workdir={run}", "model_overrides=[]",
             f"steps={STEPS}", "data.batch_size=8", *TRAIN_MESH, f"checkpoint.save_interval_steps={SAVE_EVERY}",
             "checkpoint.max_to_keep=5", "checkpoint.best_metric=val_wer", "eval_interval=0",
             f"eval.wer_every={SAVE_EVERY}", "eval.wer_utterances=4", f"eval.decode={WER_DECODE}",
             "progress_bar=false", "log_interval=1", "memory_report=false"]
    evaluate = ["evaluate", "--model", str(best), *EVAL]

    # import + train; host 1 is killed after the first committed checkpoint
    procs = _on_both_hosts(lambda pid: [[*imp, "--out", str(init), *IMPORT_MESH], train], mp.free_port())
    outs = _kill_after_first_commit(procs, run / "checkpoints")
    assert procs[1].returncode == -signal.SIGKILL, outs[1][1][-3000:]
    assert procs[0].returncode != 0  # it cannot finish alone
    assert "import: backend cpu, 8 devices (4 local), process 0 of 2" in outs[0][0]
    assert "global batch 8 = 2 host(s) x 4 per host = 4 data-parallel device(s) x 2 per device" in outs[0][0]
    assert not (run / "model").exists()
    killed_at = _committed(run / "checkpoints")

    # the same command on both hosts resumes and finishes, where an uninterrupted run (the
    # same processes, next) ends, bit for bit: both hosts' data iterators resumed. Then the best
    # step is exported and evaluated on both hosts.
    straight = [*train[:4], f"workdir={tmp_path / 'runs' / 'straight'}", *train[5:]]
    export = ["export", "--checkpoint", str(run), "--step", "best", "--format", "model-dir", "--out", str(best)]
    outs = mp.finish(_on_both_hosts(lambda pid: [train, straight, export,
                                                 [*evaluate, "--out", str(tmp_path / "eval_two"), *HOST_MESH]],
                                    mp.free_port()))
    resumed = int(outs[0][0].split(f"resumed from {run / 'checkpoints'}/", 1)[1].split()[0])
    assert resumed == killed_at[-1] < STEPS
    assert "validation WER" in outs[0][0] and (run / "model" / "params.safetensors").is_file()
    for name in ("params.safetensors", "lora.safetensors"):
        assert (run / "model" / name).read_bytes() == (tmp_path / "runs" / "straight" / "model" / name).read_bytes()

    # best: the kept step with the lowest recorded validation WER (ties: the earliest)
    ck = Checkpointer(run / "checkpoints", CheckpointConfig(), with_data=False, read_only=True)
    wer = {s: ck.metrics(s)["val_wer"] for s in ck.all_steps()}
    ck.close()
    assert sorted(wer) == list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))
    want = min(wer, key=lambda s: (wer[s], s))
    assert f"wrote {best}: MODEL_DIR of {run} step {want}" in outs[0][0], (wer, outs[0][0][-2000:])

    # the multi-host import wrote the bytes of a one-device import
    assert main([*imp, "--out", str(tmp_path / "init_one")]) == 0
    for name in ("config.yaml", "tokenizer.json", "params.safetensors", "lora.safetensors"):
        assert (init / name).read_bytes() == (tmp_path / "init_one" / name).read_bytes(), name

    # two hosts evaluate like one device
    assert main([*evaluate, "--out", str(tmp_path / "eval_one")]) == 0
    one = _hypotheses(tmp_path / "eval_one")
    rows = [json.loads(x) for x in one.splitlines()]
    assert len(rows) == 5 and sum(len(r["hypothesis"].split()) for r in rows) >= 5, one  # a real comparison
    assert _hypotheses(tmp_path / "eval_two") == one
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["results"][0] for d in ("eval_one", "eval_two"))
    assert a["wer"] == b["wer"] and a["utterances"] == b["utterances"] == 5

    # back to PyTorch: the published .pth and the Hugging Face LLaDA give the JAX logits
    assert main(["export", "--model", str(best), "--format", "reference-pth", "--out", str(tmp_path / "pth")]) == 0
    assert main(["export", "--model", str(best), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", "--model", str(best), "--format", "hf", "--merge-lora",
                 "--out", str(tmp_path / "hf_merged")]) == 0
    _check_pytorch_logits(best, whisper, tmp_path / "pth" / "checkpoint.pth", tmp_path / "hf",
                          tmp_path / "hf_merged", init)


def _check_pytorch_logits(model_dir, whisper_dir, pth, hf, hf_merged, init):
    import jax
    import torch
    from safetensors.torch import load_file

    from tests.reference_torch.composite import WhisperLLaDARef, build_reference, random_inputs
    from tests.reference_torch.llada import LLaDAReference, apply_lora
    from tests.reference_torch.qformer import WindowQFormerRef
    from whisper_llada_jax.checkpoints.model_dir import load_model_dir

    loaded = load_model_dir(model_dir)
    cfg = loaded.config
    features, ids = random_inputs(cfg, batch=2, response=6, seed=1)
    want = np.asarray(jax.jit(lambda v, f, i: loaded.model.apply(v, i, features=f))(loaded.variables, features, ids))
    # training moved the projector and LoRA away from the imported ones
    start = load_model_dir(init).variables
    assert not np.allclose(start["lora"]["llm"]["blocks_0"]["q_proj"]["lora_a"],
                           loaded.variables["lora"]["llm"]["blocks_0"]["q_proj"]["lora_a"])

    shell = build_reference(cfg)  # the architecture (its random weights are replaced below)
    p, l = cfg.projector, cfg.llm
    sd = torch.load(pth, map_location="cpu", weights_only=True)["model"]
    lora = {k: v for k, v in sd.items() if k.startswith("llada.")}

    def composite(llada_state, with_lora):
        qformer = WindowQFormerRef(kv_dim=cfg.whisper.d_model, out_dim=l.d_model, hidden=p.hidden, heads=p.heads,
                                   inter=p.intermediate, n_layers=p.layers, num_queries=p.num_queries,
                                   window=p.window, stride=p.stride, eps=p.ln_eps)
        qformer.load_state_dict({k: v for k, v in sd.items() if not k.startswith("llada.")}, strict=True)
        llm = LLaDAReference(vocab=l.vocab_size, d=l.d_model, layers=l.n_layers, heads=l.n_heads,
                             kv_heads=l.n_kv_heads, hidden=l.mlp_hidden, theta=l.rope_theta, eps=l.norm_eps)
        llm.load_state_dict(llada_state, strict=True)
        if with_lora:
            apply_lora(llm, lora, cfg.lora.scale)
        model = WhisperLLaDARef(shell.hf_whisper, qformer, llm, cfg.tokens.prompt_ids).eval()
        whisper = load_file(str(Path(whisper_dir) / "model.safetensors"))
        model.encoder.load_state_dict({k.removeprefix("model.encoder."): v for k, v in whisper.items()}, strict=True)
        with torch.no_grad():
            return model(torch.from_numpy(features), torch.from_numpy(ids).long()).numpy()

    base = load_file(str(hf / "model.safetensors"))
    np.testing.assert_allclose(composite(load_file(str(hf_merged / "model.safetensors")), False), want,
                               atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(composite(base, True), want, atol=1e-4, rtol=1e-4)
    assert np.abs(composite(base, False) - want).max() > 1e-3  # the LoRA is part of what is compared


if __name__ == "__main__":
    mp.worker_setup()
    mp.run_commands(json.loads(sys.argv[1]))
