"""The training loop: config -> mesh -> sharded state -> compiled step -> data -> checkpoints.

Everything that can be wrong with a config (unknown field, impossible mesh, batch not divisible
by the mesh, bad freezing regex) fails before the first compile. The loop never waits for the
devices except at log / eval / checkpoint intervals: metrics stay on device until then, and a
non-finite loss freezes the state on device (see ``step.py``) until the host notices.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from whisper_llada_jax import config as config_lib, mesh as mesh_lib
from whisper_llada_jax.config import ModelConfig
from whisper_llada_jax.errors import ConfigError, UserError
from whisper_llada_jax.outputs import write_text
from whisper_llada_jax.training import export as export_lib, step as step_lib
from whisper_llada_jax.training.batch import BatchLayout, batch_layout
from whisper_llada_jax.training.checkpointing import Checkpointer
from whisper_llada_jax.training.config import TrainConfig
from whisper_llada_jax.training.imports import import_before_threads, summary_writer_class
from whisper_llada_jax.training.profiling import StepProfiler
from whisper_llada_jax.training.state import StateSetup, setup_state
from whisper_llada_jax.training.workdir_lock import WorkdirLock

log = logging.getLogger("whisper_llada_jax.train")


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the run stopped and the last good checkpoint is kept."""


# --------------------------------------------------------------------------- model + batches
# LLaDA-8B-Instruct's chat prompt is 16 ids; a config without a tokenizer (AOT compiles) uses
# placeholders of that length so the compiled shapes are the real ones.
PLACEHOLDER_PROMPT_LEN = 16


def model_config(cfg: TrainConfig) -> ModelConfig:
    if cfg.init_from:
        from whisper_llada_jax.checkpoints.model_dir import read_model_config

        mcfg = read_model_config(cfg.init_from, cfg.model_overrides)
    else:
        mcfg = config_lib.load_model_config(cfg.model, cfg.model_overrides)
    if not mcfg.tokens.prompt_ids:
        tokens = dataclasses.replace(mcfg.tokens, prompt_ids=(mcfg.tokens.bos,) * PLACEHOLDER_PROMPT_LEN)
        mcfg = dataclasses.replace(mcfg, tokens=tokens)
    return mcfg


def build_model(cfg: TrainConfig, mcfg: ModelConfig | None = None):
    from whisper_llada_jax.models.composite import WhisperLLaDA

    mcfg = model_config(cfg) if mcfg is None else mcfg
    return WhisperLLaDA(mcfg), mcfg


def model_init_fn(model, mcfg: ModelConfig, response_len: int) -> Callable[[jax.Array], Any]:
    """rng -> boxed variables ({'params', 'lora'}) for ``setup_state`` (traced abstractly)."""
    w = mcfg.whisper
    # Parameter shapes do not depend on the lengths: trace the cheapest input that fills one
    # projector window.
    frames = min(w.input_frames, 2 * mcfg.projector.window)
    del response_len

    def init(rng):
        p, d = jax.random.split(rng)
        ids = jnp.zeros((1, 1), jnp.int32)
        feats = jnp.zeros((1, w.n_mels, frames), jnp.float32)
        return model.init({"params": p, "dropout": d}, ids, features=feats)

    return init


def synthetic_batch(mcfg: ModelConfig, batch_size: int, response_len: int, seed: int = 0) -> dict:
    """A batch in the pipeline's format with random features and token ids (tests, benchmarks)."""
    rng = np.random.default_rng(seed)
    w, v = mcfg.whisper, mcfg.llm.vocab_size
    lo = max(mcfg.tokens.prompt_ids or (0,)) + 1 if v < 1000 else 0
    ids = rng.integers(lo, v, size=(batch_size, response_len)).astype(np.int32)
    length = rng.integers(max(1, response_len // 2), response_len + 1, size=batch_size).astype(np.int32)
    ids = np.where(np.arange(response_len) < length[:, None], ids, mcfg.tokens.eos).astype(np.int32)
    return {"features": rng.standard_normal((batch_size, w.n_mels, w.input_frames)).astype(np.float32),
            "audio_len": np.full((batch_size,), 16000, np.int32), "response_ids": ids,
            "response_len": length, "valid": np.ones((batch_size,), bool)}


def tokens_per_batch(mcfg: ModelConfig, batch: int, response_len: int) -> int:
    """LLM positions processed per step (prompt + audio + response), the throughput unit."""
    return batch * (len(mcfg.tokens.prompt_ids) + mcfg.audio_tokens + response_len)


# --------------------------------------------------------------------------- start-up checks
def validate(cfg: TrainConfig, data_cfg, num_devices: int) -> BatchLayout:
    """One clear error before anything compiles; returns the global batch's split."""
    ici, dcn = mesh_lib.resolve_mesh_shape(cfg.mesh, num_devices, mesh_lib.num_slices_of(jax.devices()))
    batch_ways = ici[0] * ici[1] * dcn[0] * dcn[1]
    layout = batch_layout(data_cfg.batch_size, jax.process_count(), batch_ways, cfg.optim.grad_accum)
    check_output_paths(cfg)  # the counts, eval and profile fields are checked where the config is built
    return layout


def check_output_paths(cfg: TrainConfig) -> None:
    """What the run writes cannot lose anything, checked before compiling (not hours later):

    - workdir, output_dir and checkpoint.dir are folders (or do not exist yet), and can be written;
    - the final MODEL_DIR (output_dir, default <workdir>/model), which replaces its folder as a
      whole, is not the workdir or a folder above it, not in or around the checkpoints, and not
      an input (init_from, the tokenizer, a manifest);
    - an existing output_dir holds only MODEL_DIR files, and only a run that resumes from a
      checkpoint replaces it (a fresh run never replaces a model it did not write);
    - <workdir>/run, replaced at every start, holds only the run's own metadata.
    """
    from whisper_llada_jax.checkpoints.model_dir import FILES
    from whisper_llada_jax.outputs import check_writable, data_paths, remove_stale_temporaries

    for field, path in (("workdir", cfg.workdir), ("output_dir", cfg.output_dir), ("checkpoint.dir", cfg.checkpoint.dir)):
        if path and "://" not in path and Path(path).exists() and not Path(path).is_dir():
            raise ConfigError(f"{field}: {path} is a file, not a folder", hint=f"set {field} to a folder path")
    if "://" in cfg.workdir:
        return
    resolve = lambda p: Path(p).expanduser().resolve()  # noqa: E731
    inside = lambda a, b: a == b or b in a.parents  # noqa: E731
    workdir = resolve(cfg.workdir)
    field, out = ("output_dir", resolve(cfg.output_dir)) if cfg.output_dir else ("workdir", workdir / "model")
    ckdir = None if cfg.checkpoint.dir and "://" in cfg.checkpoint.dir else \
        resolve(cfg.checkpoint.dir) if cfg.checkpoint.dir else workdir / "checkpoints"
    replaces = "the final MODEL_DIR replaces that folder as a whole"
    if inside(workdir, out):
        raise ConfigError(f"output_dir: {cfg.output_dir} is the workdir {cfg.workdir} or a folder above it; "
                          f"{replaces}, deleting the checkpoints", hint="leave output_dir unset (<workdir>/model) "
                          "or give a new folder")
    if ckdir is not None and (inside(ckdir, out) or inside(out, ckdir)):
        raise ConfigError(f"{field}: the final MODEL_DIR {out} and checkpoint.dir {ckdir} overlap; {replaces}",
                          hint="give them separate folders")
    data = cfg.data or {}
    inputs = [("init_from", cfg.init_from), ("tokenizer", cfg.tokenizer)] + [
        (f"data.{k}", p) for k in ("train_source", "eval_source") for p in data_paths(data.get(k))]
    for name, item in inputs:
        if item and "://" not in item and (inside(out, resolve(item)) or inside(resolve(item), out)):
            raise ConfigError(f"{field}: the final MODEL_DIR {out} is, contains or lies inside {name} {item}; "
                              f"{replaces}, destroying the input", hint="give output_dir a new folder")
    if out.is_dir() and any(out.iterdir()):
        foreign = sorted(e.name for e in out.iterdir() if e.name not in FILES)
        if foreign:
            raise ConfigError(f"{field}: {out} holds files a MODEL_DIR does not ({', '.join(foreign[:5])}); "
                              f"{replaces} and would delete them", hint="give output_dir a new folder, or move them away")
        if not (cfg.checkpoint.restore and _has_checkpoint(cfg.checkpoint.dir or ckdir)):
            raise ConfigError(f"{field}: {out} already holds a MODEL_DIR and this run has no checkpoint to resume "
                              "from, so it did not write it; the run would replace it when it ends",
                              hint="give output_dir a new folder, or move the old model away")
    meta = workdir / export_lib.RUN_META_DIR
    ours = {"config.yaml", "tokenizer.json", "decode.yaml", export_lib.TRAIN_FILE}
    if meta.is_dir() and (foreign := sorted(e.name for e in meta.iterdir() if e.name not in ours)):
        raise ConfigError(f"workdir: {meta} holds files a run's metadata does not ({', '.join(foreign[:5])}); it is "
                          "replaced at every start", hint="give the run a new workdir, or move them away")
    for path in (out, workdir / export_lib.RUN_META_DIR, workdir / "model-latest"):
        remove_stale_temporaries(path)  # left by a run killed while writing them
    # a file inside each folder: the run writes into them (the folder itself if it exists)
    check_writable(workdir / "summary.json", "workdir", shown=cfg.workdir)
    check_writable(out, field)
    if ckdir is not None:
        check_writable(ckdir / "0", "checkpoint.dir", shown=cfg.checkpoint.dir or ckdir)


def _has_checkpoint(directory) -> bool:
    """A committed step in ``directory`` (local or ``gs://``); True when a remote one cannot be
    listed here (the restore decides; the check must not refuse a run that resumes)."""
    from etils import epath

    try:
        path = epath.Path(directory)
        return path.is_dir() and any(e.name.isdigit() for e in path.iterdir())
    except Exception:  # noqa: BLE001  (no credentials or network for a remote store)
        return "://" in str(directory)


def load_data_config(cfg: TrainConfig):
    from whisper_llada_jax.data.config import DataConfig

    return config_lib.from_dict(DataConfig, cfg.data, "data")


def load_tokenizer(cfg: TrainConfig, mcfg: ModelConfig):
    """The LLaDA tokenizer from ``tokenizer`` or ``init_from``'s tokenizer.json."""
    from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer

    path = cfg.tokenizer or (str(Path(cfg.init_from) / "tokenizer.json") if cfg.init_from else None)
    if path is None:
        raise ConfigError("tokenizer: no tokenizer.json given", hint="set tokenizer=PATH or init_from=MODEL_DIR")
    tok = LLaDATokenizer(path)
    if tok.vocab_size > mcfg.llm.vocab_size:
        raise ConfigError(f"tokenizer: {path} has {tok.vocab_size} tokens, more than llm.vocab_size "
                          f"{mcfg.llm.vocab_size}")
    if cfg.init_from:  # the model's token ids come from init_from's config: the data's tokenizer must agree
        from whisper_llada_jax.checkpoints.model_dir import check_tokenizer

        check_tokenizer(tok, mcfg, f"tokenizer {path} (for init_from {cfg.init_from})")
    return tok


# --------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class Summary:
    steps: int
    start_step: int
    final_loss: float
    final_val_loss: float | None
    best_val_loss: float | None
    seconds: float
    tokens_per_second: float
    checkpoint_dir: str
    model_dir: str | None
    preempted: bool = False
    final_val_wer: float | None = None
    best_val_wer: float | None = None

    def lines(self) -> str:
        if self.steps == self.start_step:
            out = [f"no steps trained (resumed at step {self.start_step})"]
        else:
            out = [f"trained steps {self.start_step}..{self.steps} in {self.seconds:.1f} s "
                   f"({self.tokens_per_second:,.0f} tokens/s)"]
            if not np.isnan(self.final_loss):  # nan: stopped (Ctrl-C, SIGTERM) before the first logged step
                out.append(f"final train loss {self.final_loss:.4f}")
        if self.final_val_loss is not None:
            out.append(f"validation loss {self.final_val_loss:.4f} (best {self.best_val_loss:.4f})")
        if self.final_val_wer is not None:
            out.append(f"validation WER {100 * self.final_val_wer:.2f} % (best {100 * self.best_val_wer:.2f} %)")
        out.append(f"checkpoints: {self.checkpoint_dir}")
        if self.model_dir:
            out.append(f"MODEL_DIR: {self.model_dir}" + (" (the latest step; preempted)" if self.preempted else ""))
        return "\n".join(out)


class Trainer:
    """Builds everything from a TrainConfig; ``run()`` trains and returns a Summary.

    ``train_iter`` / ``eval_batches`` / ``tokenizer`` may be injected (tests); otherwise they
    come from the data pipeline and the tokenizer file.
    """

    def __init__(self, cfg: TrainConfig, *, train_iter: Iterator[dict] | None = None,
                 eval_batches: Callable[[], Iterator[dict]] | None = None, tokenizer: Any = None,
                 print_fn: Callable[[str], None] = print):
        mesh_lib.initialize_distributed(cfg.distributed)
        self.cfg, self.print = cfg, print_fn
        self.is_main = jax.process_index() == 0
        self.data_cfg = load_data_config(cfg)
        self.mcfg = model_config(cfg)
        self.batch = validate(cfg, self.data_cfg, jax.device_count())
        if self.is_main:
            self.print(self.batch.line())
        import_before_threads(self.mcfg.whisper.n_mels)
        # One trainer per workdir, taken before anything touches the checkpoints.
        self.lock = WorkdirLock(cfg.workdir, jax.process_index(), print_fn=print_fn).acquire()
        try:
            self._build(train_iter, eval_batches, tokenizer)
        except BaseException:
            self.lock.release()
            raise

    def _build(self, train_iter, eval_batches, tokenizer) -> None:
        cfg = self.cfg
        self.mesh = mesh_lib.make_mesh(cfg.mesh)
        self.rules = mesh_lib.rules(cfg.mesh)
        self.workdir = Path(cfg.workdir)
        self.tokenizer = tokenizer
        if self.tokenizer is None and (train_iter is None or cfg.init_from or cfg.tokenizer):
            self.tokenizer = load_tokenizer(cfg, self.mcfg)
        if self.tokenizer is not None and not cfg.init_from:
            # a fresh model takes its special ids and chat prompt from the tokenizer
            self.mcfg = dataclasses.replace(self.mcfg, tokens=self.tokenizer.token_config(self.mcfg.tokens.prompt_text))
        self.model, _ = build_model(cfg, self.mcfg)
        r = self.data_cfg.max_response_len
        self.decode_defaults = export_lib.decode_defaults(cfg, self.data_cfg)
        ckdir = cfg.checkpoint.dir or str(self.workdir / "checkpoints")
        if cfg.checkpoint.restore:  # before run/ is replaced with this start's settings
            from whisper_llada_jax.training.checkpointing import checkpoint_path

            export_lib.check_resume(self.workdir, checkpoint_path(ckdir), self.mcfg, self._tokenizer_json())
        if self._tokenizer_json() is not None:  # what `export --checkpoint` needs besides a step
            export_lib.write_run_metadata(self.workdir, cfg, self.mcfg, self._tokenizer_json(), self.decode_defaults)
        with jax.set_mesh(self.mesh):
            variables = None
            if cfg.init_from:
                from whisper_llada_jax.checkpoints.model_dir import load_model_dir

                variables = load_model_dir(cfg.init_from, mesh=self.mesh).variables
            self.setup: StateSetup = setup_state(model_init_fn(self.model, self.mcfg, r), self.mesh, self.rules,
                                                 cfg.optim, cfg.seed, variables)
        self.train_iter = train_iter if train_iter is not None else self._pipeline("train")
        self._eval_batches = eval_batches or (lambda: self._pipeline("eval"))
        self.ckpt = Checkpointer(ckdir, cfg.checkpoint, with_data=hasattr(self.train_iter, "get_state"))
        example = step_lib.device_batch(synthetic_batch(self.mcfg, self.batch.global_batch, r))
        self.global_example = example
        train_fn = step_lib.make_train_step(self.model, cfg, self.mcfg, self.setup.tx)
        self.train_step = step_lib.jit_train_step(train_fn, self.setup, self.mesh, example, self.rules)
        self.eval_step = step_lib.jit_eval_step(step_lib.make_eval_step(self.model, cfg, self.mcfg),
                                                self.setup, self.mesh, example, self.rules)
        self.tokens_per_step = tokens_per_batch(self.mcfg, self.batch.global_batch, r)
        self.wer = None
        if cfg.eval.wer_every:
            if self.tokenizer is None:
                raise ConfigError("eval.wer_every: validation WER needs the tokenizer",
                                  hint="set tokenizer=PATH or init_from=MODEL_DIR")
            from whisper_llada_jax.training.validation import WerValidator

            self.wer = WerValidator(cfg, self.data_cfg, self.mcfg, self.model, self.tokenizer, self.decode_defaults)

    def _pipeline(self, split: str):
        from whisper_llada_jax.data.pipeline import build_iterator

        return build_iterator(self.data_cfg.for_hosts(jax.process_count()), self.mcfg, self.tokenizer, split=split,
                              shard_index=jax.process_index(), shard_count=jax.process_count(),
                              seed=self.cfg.seed)

    # ------------------------------------------------------------------ pieces
    def compile(self):
        """AOT-compiles the step once (the jitted call then reuses it) and reports memory."""
        abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=mesh_lib.batch_sharding(self.mesh, v.ndim))
                          for k, v in self.global_example.items()}
        t0 = time.perf_counter()
        with jax.set_mesh(self.mesh):
            compiled = self.train_step.lower(self.setup.abstract, abstract_batch).compile()
        report = memory_report(compiled)
        if self.cfg.memory_report and self.is_main:
            self.print(f"compiled train step in {time.perf_counter() - t0:.1f} s; per device: {report}")
        return compiled

    def evaluate(self, state) -> float:
        totals = np.zeros(3)
        key = jax.random.PRNGKey(self.cfg.seed + 1)
        for i, batch in enumerate(self._eval_batches()):
            if i >= self.cfg.eval_batches:
                break
            with jax.set_mesh(self.mesh):
                m = self.eval_step(state, self._global(batch), jax.random.fold_in(key, i))
            totals += np.array([float(m["loss_sum"]), float(m["tokens"]), float(m["correct"])])
        return float(totals[0] / max(totals[1], 1.0))

    def _global(self, batch: dict) -> dict:
        return mesh_lib.global_batch(self.mesh, step_lib.device_batch(batch))

    def _check_finite(self, state, step: int) -> None:
        bad = int(jax.device_get(state.nonfinite_step))
        if bad >= 0:
            last = self.ckpt.latest_step()
            kept = f"the last good checkpoint (step {last}) is kept in {self.ckpt.directory}" if last is not None \
                else "no checkpoint had been written yet"
            raise NonFiniteLossError(f"loss became NaN/inf at step {bad}; stopped, {kept}",
                                     hint="lower optim.peak_lr, enable optim.clip_norm or check the data")

    # ------------------------------------------------------------------ run
    def run(self) -> Summary:
        cfg = self.cfg
        state = self.setup.state
        start = 0
        resumed = self.ckpt.restore_latest(self.setup.abstract, self.train_iter if self.ckpt.with_data else None,
                                           report=self.print) if cfg.checkpoint.restore else None
        if resumed is not None:
            start, state = resumed
            if self.is_main:
                self.print(f"resumed from {self.ckpt.directory}/{start}")
        if cfg.checkpoint.save_on_preemption:
            self.ckpt.install_sigterm_handler()
        compiled = self.compile()
        writer = self._writer()
        bar = self._bar(start)
        profiler = StepProfiler(cfg.profile_steps, self.workdir / "profile", self.print)
        preempted = False
        pending: list[tuple[int, dict]] = []
        last_loss, val_loss, best_val = float("nan"), None, None
        val_wer, best_wer = None, None
        t_start, t_mark, step_mark = time.perf_counter(), time.perf_counter(), start
        step = start
        try:
            while step < cfg.steps:
                batch = next(self.train_iter)
                profiler.before_step(step)
                state, metrics = compiled(state, self._global(batch))
                step += 1
                profiler.after_step(step, state)
                pending.append((step, metrics))
                last = step == cfg.steps
                measured: dict[str, float] = {}  # validation metrics of this step (checkpoint metadata)
                if step % cfg.log_interval == 0 or last:
                    self._check_finite(state, step)
                    now = time.perf_counter()
                    tps = self.tokens_per_step * (step - step_mark) / max(now - t_mark, 1e-9)
                    t_mark, step_mark = now, step
                    for s, m in jax.device_get(pending):
                        if writer:
                            for k, v in m.items():
                                writer.add_scalar(f"train/{k}", float(v), s)
                    m = {k: float(v) for k, v in jax.device_get(pending[-1][1]).items()}
                    pending.clear()
                    last_loss = m["loss"]
                    if writer:
                        writer.add_scalar("train/tokens_per_second", tps, step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}", tok_s=f"{tps:,.0f}")
                        bar.update(step - bar.n)
                    elif self.is_main:
                        self.print(f"step {step} loss {m['loss']:.4f} acc {m['accuracy']:.3f} "
                                   f"lr {m['lr']:.3e} grad_norm {m['grad_norm']:.3f} tokens/s {tps:,.0f}")
                if cfg.eval_interval and (step % cfg.eval_interval == 0 or last):
                    val_loss = self.evaluate(state)
                    best_val = val_loss if best_val is None else min(best_val, val_loss)
                    if writer:
                        writer.add_scalar("val/loss", val_loss, step)
                    if self.is_main:
                        self.print(f"step {step} validation loss {val_loss:.4f}")
                    measured["val_loss"] = val_loss
                if self.wer is not None and (step % cfg.eval.wer_every == 0 or last):
                    with jax.set_mesh(self.mesh):
                        w = self.wer(state.variables, cfg.seed)
                    val_wer = w.wer
                    best_wer = val_wer if best_wer is None else min(best_wer, val_wer)
                    if writer:
                        writer.add_scalar("val/wer", val_wer, step)
                    if self.is_main:
                        self.print(f"step {step} validation WER {100 * val_wer:.2f} % ({w.errors} errors / "
                                   f"{w.ref_words} words)")
                    measured["val_wer"] = val_wer
                preempted = self.ckpt.preempted(step)
                if step % cfg.checkpoint.save_interval_steps == 0 or last or preempted:
                    self._check_finite(state, step)  # never checkpoint a diverged state
                    self.ckpt.save(step, state, self.train_iter if self.ckpt.with_data else None,
                                   metrics=measured, force=True)
                if preempted:
                    self.ckpt.wait()
                    if self.is_main:
                        why = "interrupted (Ctrl-C)" if self.ckpt.interrupted else "preempted"
                        self.print(f"{why}: saved step {step} to {self.ckpt.directory}; exiting")
                    break
        finally:
            self.ckpt.uninstall_signal_handlers()  # past the loop a Ctrl-C stops at once (nothing to save)
            profiler.finish()
            self.ckpt.wait()
            if bar is not None:
                bar.close()
            if writer:
                writer.close()
        seconds = time.perf_counter() - t_start
        model_dir = None
        preempted = preempted and step < cfg.steps
        # A restart of a finished run trains nothing: its MODEL_DIR stays as written (it is
        # written again only if the first run was killed before writing it).
        finished_before = step == start and step >= cfg.steps
        out_dir = Path(self.cfg.output_dir or self.workdir / "model")
        if finished_before and self.is_main:
            self.print(f"the run already reached step {start} (steps={cfg.steps}); nothing to train")
        if ((step >= cfg.steps and not (finished_before and out_dir.is_dir())) or preempted) \
                and self._tokenizer_json() is not None:
            # preempted: the step just saved, as <workdir>/model-latest (written after the save
            # committed, atomically: a kill mid-write loses only this copy)
            model_dir = self._write_model_dir(state, self.workdir / "model-latest" if preempted else None)
        self.state = state
        summary = Summary(step, start, last_loss, val_loss, best_val, seconds,
                          self.tokens_per_step * (step - start) / max(seconds, 1e-9),
                          str(self.ckpt.directory), model_dir, preempted, val_wer, best_wer)
        if self.is_main:
            self.print(summary.lines())
            write_text(self.workdir / "summary.json", json.dumps(dataclasses.asdict(summary), indent=1))
        return summary

    def _writer(self):
        if not self.is_main:
            return None
        return summary_writer_class()(str(self.workdir / "tensorboard"))

    def _bar(self, start: int):
        if not (self.cfg.progress_bar and self.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def _tokenizer_json(self) -> str | None:
        return getattr(self.tokenizer, "json", None)

    def _write_model_dir(self, state, out: Path | None = None) -> str:
        """The MODEL_DIR of ``state``, streamed leaf by leaf from the shards (no host gathers
        the model)."""
        out = out or self.cfg.output_dir or str(self.workdir / "model")
        export_lib.write_model_dir(out, self.mcfg, state.variables, self._tokenizer_json(), self.decode_defaults)
        return str(out)

    def close(self) -> None:
        try:
            self.ckpt.close()
        finally:
            self.lock.release()


def memory_report(compiled) -> str:
    m = compiled.memory_analysis()
    if m is None:
        return "memory analysis unavailable on this backend"
    gib = lambda b: f"{b / 2**30:.3f} GiB"  # noqa: E731
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return (f"arguments {gib(m.argument_size_in_bytes)}, outputs {gib(m.output_size_in_bytes)} "
            f"(aliased {gib(m.alias_size_in_bytes)}), temporaries {gib(m.temp_size_in_bytes)}, total {gib(total)}")


def train(cfg: TrainConfig, **kw) -> Summary:
    trainer = Trainer(cfg, **kw)
    try:
        return trainer.run()
    finally:
        trainer.close()
