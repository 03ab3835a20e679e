"""Training configuration: one frozen dataclass tree, loaded strictly from YAML.

``load_train_config("tiny", ["steps=10", "optim.peak_lr=1e-4"])`` reads
``configs/train/tiny.yaml`` plus overrides; an unknown field fails with the file and field
named. Every field is documented in ``configs/train/paper.yaml``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from whisper_llada_jax import config as config_lib

Objective = Literal["diffusion", "diffusion_inv_t", "autoregressive"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW + warmup/cosine schedule (SPEC section 7 defaults), clipping, accumulation, freezing."""

    init_lr: float = 1e-6
    peak_lr: float = 3e-5
    end_lr: float = 1e-5
    warmup_steps: int = 3000
    decay_steps: int = 360000  # 120 x 3000 cosine steps after warmup
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


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    dir: str = ""  # empty: <workdir>/checkpoints
    save_interval_steps: int = 1000
    max_to_keep: int = 3  # the last K; the best by validation loss is kept in addition
    keep_best: bool = True
    async_save: bool = True
    save_on_preemption: bool = True  # SIGTERM: save the current step, then exit
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
    # Response positions the loss covers: up to the batch's longest response (the reference),
    # or the whole canvas (data.max_response_len, eos-padded) so every position decoding will
    # fill has been trained, which a model trained from scratch needs.
    loss_span: Literal["batch_longest", "canvas"] = "batch_longest"
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


def load_train_config(source: Any = None, overrides=()) -> TrainConfig:
    """From a YAML path / name under configs/train/, a dict, or defaults, plus overrides."""
    return config_lib.load(TrainConfig, source, overrides, kind="train")
