"""``whisper-llada import``: Whisper + LLaDA (+ the published projector/LoRA .pth) -> MODEL_DIR."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from whisper_llada_jax.commands import seed_arg

NAME = "import"
HELP = "build a MODEL_DIR from a Whisper dir, a LLaDA dir and (optionally) the published .pth"
EXAMPLES = """examples:
  # the published system: Whisper-large-v3 (HF), LLaDA-8B-Instruct (HF), projector + LoRA .pth
  whisper-llada import --whisper ckpt/whisper-large-v3 --llada ckpt/LLaDA-8B-Instruct \\
      --projector-checkpoint ckpt/whisper_llada.pth --config paper --out models/paper
  # a fresh projector / LoRA (seeded) on a faster-whisper (CTranslate2) encoder, for training
  whisper-llada import --whisper ckpt/faster-whisper-large-v3 --llada ckpt/LLaDA-8B-Instruct \\
      --config paper --seed 0 --out models/paper_init
  # record a first-pass recogniser for deliberation (used by `cascade` when --first is omitted)
  whisper-llada import ... --first-pass bundled:tiny.en --out models/paper
  # straight onto a pod's mesh (same mesh.* overrides as `train`): each chip reads only its shard
  whisper-llada import --whisper ckpt/whisper-large-v3 --llada ckpt/LLaDA-8B-Instruct \
      --config paper --out models/paper mesh.data=1 mesh.fsdp=-1 mesh.tensor=4

The Whisper and LLaDA sizes must match --config (change them with --set whisper.d_model=...);
compute settings (dtype, scan_layers, remat, input_frames) come from --config. tokenizer.json
is taken from the LLaDA directory; the chat prompt ids are computed from it.
"""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--whisper", required=True, metavar="DIR",
                   help="Whisper checkpoint: Hugging Face dir, CTranslate2 (faster-whisper) dir, or bundled:tiny.en")
    p.add_argument("--llada", required=True, metavar="DIR",
                   help="Hugging Face LLaDA dir (config.json, safetensors, tokenizer.json)")
    p.add_argument("--projector-checkpoint", metavar="FILE.pth",
                   help="the published Whisper-LLaDA .pth (Q-Former, query tokens, linear_proj, LoRA)")
    p.add_argument("--config", required=True, metavar="NAME",
                   help="model config: a name under configs/model/ (paper, tiny) or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set llm.dtype=float32 (repeatable)")
    p.add_argument("--first-pass", metavar="DIR", help="Whisper recogniser to record for deliberation cascades")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of a fresh projector / LoRA (without a .pth)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="output directory (written atomically; new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing MODEL_DIR at --out (a folder holding other files is still refused)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="mesh.* (and distributed.*) overrides as for `train`, e.g. mesh.fsdp=4 mesh.tensor=2: "
                        "every device reads only its shard of each tensor (default: one device)")


_ENCODER_SIZES = ("n_mels", "d_model", "encoder_layers", "encoder_heads", "encoder_ffn")
_COMPUTE = ("dtype", "param_dtype", "scan_layers", "remat", "input_frames")


def load_whisper_encoder(spec: str, cfg, shardings=None):
    """(WhisperConfig, encoder params) from an HF or CTranslate2 directory; sizes checked
    against ``cfg`` (a WhisperConfig), compute settings taken from it; ``shardings``: the
    encoder's tree of shardings (None: one device)."""
    from whisper_llada_jax.assets import resolve_whisper_dir
    from whisper_llada_jax.checkpoints.tensors import SafetensorsSource
    from whisper_llada_jax.checkpoints.whisper_hf import import_whisper_tensors, read_whisper_hf_config
    from whisper_llada_jax.errors import CheckpointError

    path = resolve_whisper_dir(spec)
    compute = {k: getattr(cfg, k) for k in _COMPUTE}
    if (path / "model.bin").is_file():
        from whisper_llada_jax.checkpoints.ctranslate2 import CTranslate2WhisperSource, whisper_config_from_ct2

        source = CTranslate2WhisperSource(path)
        found, _ = whisper_config_from_ct2(path, source=source, **compute)
    elif (path / "config.json").is_file():
        found, _ = read_whisper_hf_config(path, **compute)
        source = SafetensorsSource(path)
    else:
        raise CheckpointError(f"{path}: neither a Hugging Face (config.json) nor a CTranslate2 (model.bin) Whisper dir")
    diff = [f"whisper.{k}: checkpoint {getattr(found, k)} vs config {getattr(cfg, k)}"
            for k in _ENCODER_SIZES if getattr(found, k) != getattr(cfg, k)]
    if diff:
        raise CheckpointError(f"{path}: Whisper sizes differ from the config ({'; '.join(diff)})",
                              hint="choose the matching --config or fix it with --set whisper.<field>=...")
    tree = None if shardings is None else {"encoder": shardings}
    return found, import_whisper_tensors(source, found, encoder_only=True, shardings=tree)["encoder"]




def fresh_projector_and_lora(config, seed: int):
    """Seeded random projector params and LoRA tensors, built without the base LLM weights."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from whisper_llada_jax.models.llada import LLaDA
    from whisper_llada_jax.models.projector import make_projector

    k_proj, k_lora = jax.random.split(jax.random.key(seed))
    projector = make_projector(config.projector, config.llm.d_model)
    # Parameter shapes do not depend on the number of frames: one window is enough to trace.
    enc = jnp.zeros((1, config.projector.window, config.whisper.d_model), jnp.float32)
    proj = jax.jit(lambda k: nn.unbox(projector.init(k, enc))["params"])(k_proj)
    lora = None
    if config.lora.enabled:
        llm = LLaDA(config.llm, config.lora)
        # Only the lora collection leaves jit, so XLA never materialises the base weights.
        lora = jax.jit(lambda k: nn.unbox(llm.init(k, jnp.zeros((1, 1), jnp.int32)))["lora"])(k_lora)
    return proj, lora


def _place(tree, shardings):
    """Small seeded trees (the fresh projector / LoRA) onto the mesh, from host values: every
    process puts its own shards, so this works when the mesh spans several processes."""
    import jax
    import numpy as np

    if shardings is None or tree is None:
        return tree
    return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), tree, shardings)


def run(args: argparse.Namespace) -> int:
    import flax.linen as nn

    from whisper_llada_jax import backend, mesh as mesh_lib
    from whisper_llada_jax.checkpoints.llada_hf import import_llada_hf
    from whisper_llada_jax.checkpoints.model_dir import FILES, check_tokenizer, save_model_dir
    from whisper_llada_jax.checkpoints.reference_pth import import_reference_pth
    from whisper_llada_jax.checkpoints.tensors import subtree
    from whisper_llada_jax.config import load_model_config
    from whisper_llada_jax.errors import CheckpointError
    from whisper_llada_jax.models.composite import abstract_variables, mesh_shardings
    from whisper_llada_jax.models.llada import count_params
    from whisper_llada_jax.outputs import check_output
    from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer

    config_path = args.config if Path(args.config).exists() else None
    check_output(args.out, [args.whisper, args.llada, args.projector_checkpoint, args.first_pass, config_path],
                 overwrite=args.overwrite, replaces=FILES)
    cfg = load_model_config(args.config, args.set)
    mesh_cfg, dist_cfg = mesh_lib.placement_from_overrides(args.overrides, "import")
    mesh_lib.initialize_distributed(dist_cfg)
    if mesh_cfg is not None:
        backend.refuse_cpu_for_large_mesh(mesh_cfg, "import")
    backend.announce("import")
    # The composite's shardings from the config's sizes (the checkpoints must match them, which
    # is checked before anything is read); None: every leaf on one device.
    shardings = None
    if mesh_cfg is not None:
        mesh = mesh_lib.make_mesh(mesh_cfg)
        shardings = mesh_shardings(cfg, mesh, mesh_lib.rules(mesh_cfg))
        print(f"mesh: {dict(mesh.shape)}")
    shard = lambda *keys: subtree(shardings, *keys)  # noqa: E731
    llada_dir = Path(args.llada)
    if not llada_dir.is_dir():
        what = "is a file; the LLaDA checkpoint is the folder holding it" if llada_dir.exists() else "does not exist"
        raise CheckpointError(f"{llada_dir}: {what}",
                              hint="give the Hugging Face LLaDA directory (config.json, *.safetensors, tokenizer.json)")
    if not (llada_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{llada_dir}: no tokenizer.json", hint="give the Hugging Face LLaDA directory")
    tokenizer = LLaDATokenizer(llada_dir / "tokenizer.json")
    tokens = tokenizer.token_config(cfg.tokens.prompt_text)
    too_big = max(tokens.prompt_ids + (tokens.mask, tokens.eos, tokens.bos))
    if too_big >= cfg.llm.vocab_size:
        raise CheckpointError(f"{llada_dir / 'tokenizer.json'}: token id {too_big} is outside llm.vocab_size "
                              f"{cfg.llm.vocab_size}", hint="the tokenizer does not belong to this LLM")
    check_tokenizer(tokenizer, dataclasses.replace(cfg, tokens=tokens), llada_dir / "tokenizer.json")

    wcfg, encoder = load_whisper_encoder(args.whisper, cfg.whisper, shard("params", "encoder"))
    print(f"whisper encoder: {args.whisper} ({count_params(encoder):,} parameters)")
    llm_cfg, llm = import_llada_hf(llada_dir, cfg.llm, shardings=shard("params", "llm"))
    print(f"llada: {llada_dir} ({count_params(llm):,} parameters)")
    config = dataclasses.replace(cfg, whisper=wcfg, llm=llm_cfg, tokens=tokens)

    if args.projector_checkpoint:
        projector, lora = import_reference_pth(args.projector_checkpoint, config, nn.unbox(abstract_variables(config)),
                                               shardings=shardings)
        print(f"projector + LoRA: {args.projector_checkpoint}")
    else:
        projector, lora = fresh_projector_and_lora(config, args.seed)
        projector, lora = _place(projector, shard("params", "projector")), _place(lora, shard("lora", "llm"))
        print(f"projector + LoRA: freshly initialised (seed {args.seed}); no --projector-checkpoint given, "
              "so this model must be trained before it transcribes anything")
    variables = {"params": {"encoder": encoder, "projector": projector, "llm": llm}}
    if lora is not None:
        variables["lora"] = {"llm": lora}
    out = save_model_dir(args.out, config, variables, tokenizer.path, first_pass=args.first_pass)
    print(f"wrote {out} (projector {count_params(projector):,}, LoRA {count_params(lora or {}):,} parameters)")
    return 0
