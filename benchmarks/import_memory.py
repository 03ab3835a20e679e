"""Peak host memory of importing a sharded Hugging Face LLaDA checkpoint onto a mesh and of
writing it back as a MODEL_DIR's params.safetensors, against the model and its largest tensor.

    python -m benchmarks.import_memory --d-model 1024 --layers 8 --vocab 32000

Writes a random LLaDA of that size as a sharded HF checkpoint, then, in a fresh process with 8
CPU devices on a (data 1, fsdp 4, tensor 2) mesh, samples the process's anonymous resident
memory (``RssAnon``: the heap, not the memory-mapped checkpoint pages the kernel can drop) while
(1) ``import_llada_hf`` places every tensor in its sharding and (2) the streaming MODEL_DIR
writer gathers and writes it one tensor at a time. On CPU the 8 "devices" live in host memory,
so (1) necessarily grows by the model itself; what matters is the excess over it, and that (2)
stays near the largest tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_MEASURE = r"""
import json, sys, threading, time
from pathlib import Path
import jax, numpy as np
from whisper_llada_jax.checkpoints.llada_hf import import_llada_hf
from whisper_llada_jax.checkpoints import model_dir
from whisper_llada_jax.checkpoints.tensors import flatten
from whisper_llada_jax.models.llada import LLaDA
from whisper_llada_jax.training.config import MeshConfig
from whisper_llada_jax.mesh import make_mesh, rules
import flax.linen as nn
from jax.sharding import NamedSharding

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], anon()); time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()

ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = MeshConfig(data=1, fsdp=4, tensor=2)
mesh = make_mesh(cfg)
from whisper_llada_jax.checkpoints.llada_hf import llada_config_from_hf
llm_cfg = llada_config_from_hf(ckpt)
specs = nn.get_partition_spec(jax.eval_shape(lambda: LLaDA(llm_cfg).init(jax.random.key(0), np.zeros((1, 1), np.int32))))["params"]
shardings = nn.logical_to_mesh_sharding(specs, mesh, rules(cfg))
time.sleep(0.05); base = anon(); peak[0] = base
_, params = import_llada_hf(ckpt, shardings=shardings)
jax.block_until_ready(params)
time.sleep(0.05); after_import, import_peak = anon(), peak[0]
peak[0] = after_import
model_dir._write_safetensors_streaming(params, out)
time.sleep(0.05)
leaves = flatten(params)
print(json.dumps({"base": base, "import_peak": import_peak, "after_import": after_import, "write_peak": peak[0],
                  "model": sum(int(x.nbytes) for x in leaves.values()),
                  "largest": max(int(x.nbytes) for x in leaves.values()),
                  "sharded": all(len(x.addressable_shards) == 8 for x in leaves.values())}))
"""


def _write_checkpoint(path: Path, d_model: int, layers: int, vocab: int) -> None:
    import jax
    import numpy as np

    from whisper_llada_jax.checkpoints.llada_hf import abstract_params, export_llada_hf
    from whisper_llada_jax.config import LLMConfig

    heads = d_model // 128
    cfg = LLMConfig(vocab_size=vocab, d_model=d_model, n_layers=layers, n_heads=heads, n_kv_heads=heads,
                    head_dim=128, mlp_hidden=3 * d_model)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32) * 0.02, abstract_params(cfg))
    export_llada_hf(params, cfg, path, shard_size_bytes=256 << 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "llada"
        _write_checkpoint(ckpt, args.d_model, args.layers, args.vocab)
        files = sorted(ckpt.glob("*.safetensors"))
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
        proc = subprocess.run([sys.executable, "-c", _MEASURE, str(ckpt), str(Path(tmp) / "params.safetensors")],
                              env=env, capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
    print(f"checkpoint: {len(files)} safetensors shards, model {mib(r['model'])}, largest tensor {mib(r['largest'])}, "
          f"every leaf on 8 devices: {r['sharded']}")
    print(f"import onto a 1x4x2 mesh: anonymous RSS grew {mib(r['import_peak'] - r['base'])} at peak "
          f"(the 8 CPU devices' shards = the model, {mib(r['model'])}; excess "
          f"{mib(r['import_peak'] - r['base'] - r['model'])})")
    print(f"streaming MODEL_DIR write: peak {mib(r['write_peak'] - r['after_import'])} above the placed model "
          f"(largest tensor {mib(r['largest'])})")


if __name__ == "__main__":
    main()
