"""Ahead-of-time compilation of the real train step for a TPU pod, on a machine without TPUs.

``jax.experimental.topologies.get_topology_desc`` (libtpu from PyPI) describes the pod's
devices; the mesh, the abstract state and an abstract global batch are built over them exactly
as the trainer does, and the step is lowered and compiled by the TPU compiler. What comes back
(per-chip memory, FLOPs) is what the real pod would see, so a config that does not fit fails
here instead of after the job has been scheduled.

libtpu refuses to start when JAX was told to use the CPU, so ``compile_in_subprocess`` runs
``compile_for_topology`` in a fresh interpreter with a TPU-friendly environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

from whisper_llada_jax.errors import ConfigError

# Per chip: HBM (GiB) and dense bf16 peak (TFLOP/s), from Google Cloud's TPU pages.
CHIPS = {
    "v4": (32, 275.0),
    "v5e": (16, 197.0),
    "v5p": (95, 459.0),
    "v6e": (32, 918.0),
}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


@dataclasses.dataclass
class CompileReport:
    topology: str
    num_slices: int
    chips: int
    mesh: dict
    global_batch: int
    argument_gib: float
    output_gib: float
    alias_gib: float
    temp_gib: float
    total_gib: float
    hbm_gib: float
    flops_per_chip: float  # of one train step, from the compiled cost analysis
    peak_tflops: float
    compile_seconds: float

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.hbm_gib

    @property
    def step_seconds_at_peak(self) -> float:
        return self.flops_per_chip / (self.peak_tflops * 1e12)

    def markdown(self) -> str:
        mesh = "x".join(f"{v}" for v in self.mesh.values())
        return (f"| {self.topology}{' x' + str(self.num_slices) if self.num_slices > 1 else ''} | {self.chips} | "
                f"{mesh} | {self.global_batch} | {self.argument_gib:.3g} | {self.temp_gib:.3g} | "
                f"{self.output_gib:.3g} | {self.total_gib:.3g} / {self.hbm_gib:.0f} | {'yes' if self.fits else 'NO'} | "
                f"{self.flops_per_chip / 1e12:.3g} | {self.step_seconds_at_peak * 1e3:.3g} |")


HEADER = ("| topology | chips | mesh (data x fsdp x tensor) | global batch | arguments GiB | temporaries GiB | "
          "outputs GiB | total / HBM GiB per chip | fits | TFLOP per chip per step | step ms at peak |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def parse_topology(topology: str) -> tuple[str, int]:
    m = _TOPOLOGY.match(topology)
    if not m:
        raise ConfigError(f"--topology {topology!r} is not like v5p:2x2x2 or v5e:4x4",
                          hint=f"chips: {sorted(CHIPS)}")
    chips = 1
    for d in m.group(2).split("x"):
        chips *= int(d)
    return m.group(1), chips


def compile_for_topology(cfg, topology: str, num_slices: int = 1) -> CompileReport:
    """Compiles ``cfg``'s train step for ``topology`` x ``num_slices`` (runs where libtpu loads)."""
    import jax
    import numpy as np
    from jax.experimental import topologies

    from whisper_llada_jax import mesh as mesh_lib
    from whisper_llada_jax.training import step as step_lib
    from whisper_llada_jax.training.batch import batch_layout
    from whisper_llada_jax.training.state import abstract_setup
    from whisper_llada_jax.training.trainer import build_model, load_data_config, model_init_fn

    chip, _ = parse_topology(topology)
    kw = {"num_slices": num_slices} if num_slices > 1 else {}
    devices = topologies.get_topology_desc(topology, platform="tpu", **kw).devices
    data_cfg = load_data_config(cfg)
    model, mcfg = build_model(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh, devices)
    rules = mesh_lib.rules(cfg.mesh)
    r = data_cfg.max_response_len
    # data.batch_size is the global batch; a TPU host drives 4 chips
    hosts = max(1, len(devices) // 4)
    global_batch = batch_layout(data_cfg.batch_size, hosts, mesh.shape["data"] * mesh.shape["fsdp"],
                                cfg.optim.grad_accum).global_batch
    w = mcfg.whisper
    shapes = {"features": ((global_batch, w.n_mels, w.input_frames), np.float32),
              "response_ids": ((global_batch, r), np.int32), "response_len": ((global_batch,), np.int32),
              "valid": ((global_batch,), np.bool_)}
    batch = {k: jax.ShapeDtypeStruct(s, d, sharding=mesh_lib.batch_sharding(mesh, len(s))) for k, (s, d) in shapes.items()}
    t0 = time.perf_counter()
    # Small host-side constants (optimiser-state templates) are made on the CPU backend: the
    # compile-only TPU devices cannot run anything.
    with jax.default_device(jax.devices("cpu")[0]):
        setup = abstract_setup(model_init_fn(model, mcfg, r), mesh, rules, cfg.optim)
    with jax.set_mesh(mesh):
        ndim_only = {k: np.empty((1,) * len(s)) for k, (s, _) in shapes.items()}
        fn = step_lib.jit_train_step(step_lib.make_train_step(model, cfg, mcfg, setup.tx), setup, mesh,
                                     ndim_only, rules)
        compiled = fn.lower(setup.abstract, batch).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    gib = 2.0 ** 30
    hbm, peak = CHIPS[chip]
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
             - mem.alias_size_in_bytes)
    return CompileReport(topology, num_slices, len(devices), dict(mesh.shape), global_batch,
                         mem.argument_size_in_bytes / gib, mem.output_size_in_bytes / gib,
                         mem.alias_size_in_bytes / gib, mem.temp_size_in_bytes / gib, total / gib, float(hbm),
                         float(cost.get("flops", 0.0)), peak, seconds)


def tpu_env() -> dict:
    """Environment for a compile-only libtpu in a child process."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env.update({"JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_SKIP_MDS_QUERY": "1",
                "TPU_WORKER_HOSTNAMES": "localhost", "TPU_ACCELERATOR_TYPE": env.get("TPU_ACCELERATOR_TYPE", "v5p-8")})
    return env


def compile_in_subprocess(config: str, overrides: list[str], topology: str, num_slices: int = 1,
                          timeout: float = 1800) -> CompileReport:
    parse_topology(topology)
    code = ("import json,sys,dataclasses;"
            "from whisper_llada_jax.training.config import load_train_config;"
            "from whisper_llada_jax.training.aot import compile_for_topology;"
            "a=json.loads(sys.argv[1]);"
            "r=compile_for_topology(load_train_config(a['config'],a['overrides']),a['topology'],a['num_slices']);"
            "print('AOT_REPORT '+json.dumps(dataclasses.asdict(r)))")
    arg = json.dumps({"config": config, "overrides": overrides, "topology": topology, "num_slices": num_slices})
    proc = subprocess.run([sys.executable, "-c", code, arg], env=tpu_env(), capture_output=True, text=True,
                          timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("AOT_REPORT "):
            return CompileReport(**json.loads(line[len("AOT_REPORT "):]))
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    user = [ln for ln in err if "Error:" in ln]
    raise ConfigError(f"compile for {topology} failed: {(user or err or ['no output'])[-1][:400]}")
