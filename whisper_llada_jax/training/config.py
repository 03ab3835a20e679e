"""Training configuration: one frozen dataclass tree, loaded strictly from YAML.

``load_train_config("tiny", ["steps=10", "optim.peak_lr=1e-4"])`` reads
``configs/train/tiny.yaml`` plus overrides; an unknown field fails with the file and field
named. Every field is documented in ``configs/train/paper.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Literal

from whisper_llada_jax import config as config_lib
from whisper_llada_jax.errors import ConfigError

Objective = Literal["diffusion", "diffusion_inv_t", "autoregressive"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW + warmup/cosine schedule (SPEC section 7 defaults), clipping, accumulation, freezing."""

    init_lr: float = 1e-6
    peak_lr: float = 3e-5
    end_lr: float = 1e-5
    warmup_steps: int = 3000
    decay_steps: int = 360000  # the cosine ends here (120 x 3000), its phase counted from step 0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.05  # not applied to vectors, biases, norms
    clip_norm: float | None = None  # global-norm clipping; the reference uses none
    grad_accum: int = 1  # micro-batches per update (scanned inside one step)
    # Regexes over '/'-joined paths of the {'params', 'lora'} tree; a leaf trains if any matches
    # and none of `frozen` does. Default: projector + LoRA (the paper). Full LLM: add
    # 'params/llm/.*'; unfreeze the encoder: add 'params/encoder/.*'.
    trainable: tuple[str, ...] = ("params/projector/.*", "lora/.*")
    frozen: tuple[str, ...] = ()
    master_dtype: Literal["float32", "bfloat16"] = "float32"  # what trains is kept in this dtype

    def __post_init__(self):
        # A NaN / negative learning rate or a beta of 1 trains silently wrong (or not at all)
        # instead of failing: every number is checked where the config is built.
        for name in ("init_lr", "end_lr", "weight_decay"):
            _finite(self, name, low=0.0)
        _finite(self, "peak_lr", low=0.0, strict=True)
        _finite(self, "eps", low=0.0, strict=True)
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: must be in [0, 1), got {getattr(self, name)!r}", hint="AdamW uses 0.9 / 0.999")
        if self.clip_norm is not None:
            _finite(self, "clip_norm", low=0.0, strict=True)
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ConfigError(f"warmup_steps / decay_steps: must be >= 0 / >= 1, got {self.warmup_steps} / "
                              f"{self.decay_steps}")
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum: must be >= 1 (micro-batches per update), got {self.grad_accum}")
        for name in ("trainable", "frozen"):
            for pattern in getattr(self, name):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ConfigError(f"{name}: bad regex {pattern!r} ({e})") from None


def _finite(cfg: Any, name: str, *, low: float, strict: bool = False) -> None:
    value = getattr(cfg, name)
    if not (low < value if strict else low <= value) or not math.isfinite(value):
        raise ConfigError(f"{name}: must be {'>' if strict else '>='} {low:g} and finite, got {value!r}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, tensor); -1 takes the remaining devices (at most one axis)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Multi-slice (DCN) factors: the mesh is the ICI mesh above times these across slices.
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1
    # Extra [logical_name, mesh_axis | [axes] | null] pairs tried before sharding.DEFAULT_RULES.
    rules: tuple[Any, ...] = ()

    def __post_init__(self):
        from whisper_llada_jax.sharding import MESH_AXES

        for i, rule in enumerate(self.rules):
            ok = isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[0], str)
            axes = rule[1] if ok and isinstance(rule[1], (list, tuple)) else [rule[1]] if ok else []
            if not ok or not all(a is None and len(axes) == 1 or a in MESH_AXES for a in axes):
                raise ConfigError(f"rules[{i}]: {rule!r} is not [logical_name, mesh_axis | [mesh_axes] | null]",
                                  hint=f"mesh axes are {list(MESH_AXES)}, e.g. [embed, fsdp] or [vocab, null]")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    dir: str = ""  # empty: <workdir>/checkpoints
    save_interval_steps: int = 1000
    max_to_keep: int = 3  # the last K; the best by validation loss is kept in addition
    keep_best: bool = True
    async_save: bool = True
    save_on_preemption: bool = True  # SIGTERM or a first Ctrl-C: save the current step, then exit
    restore: bool = True  # resume from the latest checkpoint in `dir` if there is one
    # What "best" means (kept checkpoint, `export --step best`): the lowest validation loss, or
    # the lowest validation WER (needs eval.wer_every > 0).
    best_metric: Literal["val_loss", "val_wer"] = "val_loss"

    def __post_init__(self):
        if self.save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {self.save_interval_steps}")
        if self.max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {self.max_to_keep}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Validation WER during training: decode a dev subset with the fused decoder."""

    wer_every: int = 0  # steps between WER evaluations (and at the end); 0: off
    wer_utterances: int = 32  # the first N utterances of data.eval_source
    # Decode config: a name under configs/decode/, a YAML path or inline k=v,k=v; empty: the
    # defaults the final MODEL_DIR will carry (batch_size is the eval batch).
    decode: str = ""


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """jax.distributed.initialize arguments; unset fields come from the environment."""

    coordinator_address: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout: int = 300
    cpu_collectives: Literal["none", "gloo", "mpi"] = "none"  # cross-process CPU collectives


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str = "tiny"  # name under configs/model/ or a YAML path
    model_overrides: tuple[str, ...] = ()  # "llm.n_layers=2" style
    init_from: str | None = None  # MODEL_DIR to start from (loaded straight into shardings)
    tokenizer: str | None = None  # tokenizer.json for data + the final MODEL_DIR (default: init_from's)
    data: dict = dataclasses.field(default_factory=dict)  # data.config.DataConfig fields (train + eval sources)
    objective: Objective = "diffusion"
    t_eps: float = 0.0  # diffusion: mask ratio t = eps + (1 - eps) * U(0, 1)
    # Response slots that exist for a row (seen by attention and scored): up to the longest
    # transcript of its group of `group_size` rows (the reference: one GPU's batch of 4), of the
    # whole batch, or the whole canvas (data.max_response_len, eos-padded) so every slot decoding
    # will fill has been trained, which a model decoded on a fixed canvas needs.
    loss_span: Literal["group_longest", "batch_longest", "canvas"] = "group_longest"
    group_size: int = 4  # rows per group: consecutive rows of the global batch (one reference GPU)
    # group_mean: each group's own mean over its scored tokens, averaged over groups (the
    # reference under DDP); token_mean: one mean over every scored token of the global batch.
    loss_norm: Literal["group_mean", "token_mean"] = "group_mean"
    # Denoising (not in the reference): after masking, this share of the unmasked span slots gets
    # a random id from substitution_range ([low, high); empty: derived from the special ids).
    substitution_rate: float = 0.0
    substitution_range: tuple[int, ...] = ()
    loss_positions: Literal["masked", "all"] = "masked"  # all: CE over every span slot
    audio_drop_rate: float = 0.0  # share of rows trained without audio (text-only ablation in one model)
    # Deliberation training (not in the reference): this share of the rows reads, before masking
    # and substitution, its own first-pass ids (batch field first_pass_ids, eos-padded, with
    # first_pass_len) in place of the transcript; the target stays the transcript, slot by slot.
    first_pass_rate: float = 0.0
    # Audio vectors each row sees: all (the reference), the windows covering the clip plus
    # audio_margin_windows (true_length), or a uniform number between that and all (random).
    audio_span: Literal["full", "true_length", "random"] = "full"
    audio_margin_windows: int = 1
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    distributed: DistributedConfig = DistributedConfig()
    workdir: str = "runs/default"  # logs, TensorBoard events, checkpoints, final MODEL_DIR
    output_dir: str | None = None  # final MODEL_DIR (default <workdir>/model)
    steps: int = 1000
    eval_interval: int = 500  # 0: no periodic validation
    eval_batches: int = 8
    log_interval: int = 10
    seed: int = 0
    progress_bar: bool = True
    memory_report: bool = True  # compiled.memory_analysis() at start-up
    # [START, STOP]: a JAX profiler trace of train steps START+1..STOP into <workdir>/profile
    # (TensorBoard's profile tab / Perfetto); []: none
    profile_steps: tuple[int, ...] = ()

    def __post_init__(self):
        # steps=0 would write an untrained MODEL_DIR; resuming a finished run is steps=<same>.
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.log_interval < 1 or self.eval_interval < 0 or self.eval_batches < 0:
            raise ValueError(f"log_interval must be >= 1 and eval_interval, eval_batches >= 0, got "
                             f"{self.log_interval}, {self.eval_interval}, {self.eval_batches}")
        if not self.workdir:
            raise ValueError("workdir must be a folder path, got an empty string")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        for name in ("substitution_rate", "audio_drop_rate", "first_pass_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.substitution_range) not in (0, 2) or (
                self.substitution_range and not 0 <= self.substitution_range[0] < self.substitution_range[1]):
            raise ValueError(f"substitution_range must be [low, high] with 0 <= low < high, or [], got "
                             f"{list(self.substitution_range)}")
        if not 0.0 <= self.t_eps < 1.0:
            raise ValueError(f"t_eps must be in [0, 1), got {self.t_eps}")
        if self.audio_margin_windows < 0:
            raise ValueError(f"audio_margin_windows must be >= 0, got {self.audio_margin_windows}")
        if self.objective == "autoregressive" and (self.substitution_rate or self.loss_positions != "masked"
                                                   or self.audio_drop_rate or self.audio_span != "full"
                                                   or self.first_pass_rate):
            raise ValueError("objective autoregressive scores every response token and sees the whole audio: "
                             "substitution_rate, loss_positions, audio_drop_rate, audio_span and first_pass_rate "
                             "are diffusion options")
        if self.eval.wer_every < 0 or self.eval.wer_utterances < 1:
            raise ConfigError(f"eval.wer_every={self.eval.wer_every} / eval.wer_utterances={self.eval.wer_utterances} "
                              "must be >= 0 / >= 1")
        if self.checkpoint.best_metric == "val_wer" and not self.eval.wer_every:
            raise ConfigError("checkpoint.best_metric: val_wer needs validation WER", hint="set eval.wer_every=N")
        if self.profile_steps:
            check_steps(self.profile_steps)


def check_steps(steps, where: str = "profile_steps") -> tuple[int, int]:
    """``[START, STOP]`` of a profiler trace, checked: ``0 <= START < STOP``."""
    if len(steps) != 2 or not 0 <= steps[0] < steps[1]:
        raise ConfigError(f"{where}: {list(steps)} is not [START, STOP] with 0 <= START < STOP",
                          hint="e.g. [10, 15]: a trace of steps 11..15 (after compilation and warm-up)")
    return int(steps[0]), int(steps[1])


def load_train_config(source: Any = None, overrides=()) -> TrainConfig:
    """From a YAML path / name under configs/train/, a dict, or defaults, plus overrides."""
    return config_lib.load(TrainConfig, source, overrides, kind="train")
