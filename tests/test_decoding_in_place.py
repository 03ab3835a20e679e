"""The decoders' K/V buffers are updated in place: the compiled decode programs (prefix cache,
dual cache, length prior, autoregressive baseline) hold no copy, no slice and no concatenation
of a cache-sized array (one layer's or the whole stack's) apart from the buffer's one
initialisation, on a 3-layer model whose cache shape no other array has. The code before the
in-place writes joined ``[cache ; new]`` in every layer of every cached forward; the code before
per-layer buffers sliced each layer's entries out of one stacked buffer in every forward (XLA
materialises such a slice: one more pass over the layer's cache); the code before head-major
buffers, ``(B, T, KV, D)``, had every layer's keys and values copied into the attention
products' layout (batch dimensions outermost) in every forward on CPU, and by the same rule of
XLA's GPU layout assignment on a GPU. The TPU compiler reads the buffer as it lies."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import reference_decode as ref
from whisper_llada_jax.decoding import api
from whisper_llada_jax.decoding.config import DecodeConfig

B, GEN, LAYERS, KV_HEADS = 2, 16, 3, 2


def _cache_sized_ops(hlo: str, slots: int) -> list[str]:
    """Copies and slices of a cache-sized array in the buffers' head-major form (one layer's
    ``(B, KV, T, D)`` or the stack's, ``slots`` or more; not a zero buffer's one initialisation)
    and concatenations along its slot axis (RoPE's rotate-half joins along the feature axis, a
    full forward's fresh K/V are stacked along the layer axis: neither copies an old cache).
    A copy that changes the layout is a full forward's fresh K/V put head-major (once per full
    forward); what is refused is a copy of a buffer as it lies."""
    layer = re.compile(rf"= \w+\[(?:1,)?{B},{KV_HEADS},(\d+),8\](\S*) (copy|concatenate|slice)\((%[\w.\-]+)")
    stack = re.compile(rf"= \w+\[{LAYERS},{B},{KV_HEADS},(\d+),8\](\S*) (copy|concatenate|slice)\((%[\w.\-]+)")
    layouts = dict(re.findall(r"(%[\w.\-]+) = \w+\[[\d,]*\](\{[\d,]*\})", hlo))
    out = []
    for line in hlo.splitlines():
        if re.search(r" copy\(%\S*broadcast", line):  # a zero buffer made once, before the loop
            continue
        for pattern, slot_axis in ((layer, "dimensions={2}"), (stack, "dimensions={3}")):
            m = pattern.search(line)
            if not m or int(m.group(1)) < slots:
                continue
            if m.group(3) == "concatenate" and slot_axis not in line:
                continue
            if m.group(3) == "copy" and layouts.get(m.group(4)) not in (None, m.group(2)):
                continue
            out.append(line.strip())
    return out


@pytest.mark.parametrize("mode", ["prefix", "dual", "length_prior", "autoregressive"])
def test_caches_are_written_in_place(mode):
    ops = _cache_sized_ops(_compiled(mode), ref.PREFIX + GEN)
    assert not ops, ops


@pytest.mark.parametrize("mode", ["prefix", "dual", "length_prior", "autoregressive"])
def test_buffers_hold_whole_tiles_of_slots(mode):
    """Every decode loop carries K/V buffers of ``cache_slots`` slots, a multiple of 8, the slots
    past the positions masked out: 8 prefix + 12 response positions (autoregressive: 12 new
    tokens) get 24. XLA's GPU matmuls pad a 16-bit dimension that is not a multiple of 8, which
    copied every layer's keys and values in every cached forward of a 20-slot buffer
    (docs/benchmarks.md, "The K/V buffer's length"); exactness: test_decoding_fast / _length_prior."""
    hlo = _compiled(mode, gen=12)
    carries = re.findall(r"= \((.*?)\) while\(", hlo)
    slots = {int(t) for carry in carries for t in re.findall(rf"f32\[{B},{KV_HEADS},(\d+),8\]", carry)}
    assert ref.PREFIX + 12 == 20 and slots == {24}, slots


def _loop_computations(hlo: str, fusions: bool = False) -> tuple[dict, set]:
    """The compiled program's computations (name -> lines) and the names of those a decode loop
    runs at every iteration: while bodies and the conditional branches they call (and with
    ``fusions`` the fused computations they call: the CPU backend fuses its copies)."""
    comps, current = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = "ENTRY" if line.startswith("ENTRY") else line.split()[0]
            comps[current] = []
        elif current:
            comps[current].append(line)
    todo, seen = re.findall(r"body=(%[\w.\-]+)", hlo), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            for line in comps.get(name, []):
                for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
                    todo += [g.strip() for g in group.split(",")]
                todo += re.findall(r"(?:true_computation|false_computation|body)=(%[\w.\-]+)", line)
                if fusions:
                    todo += re.findall(r"calls=(%[\w.\-]+)", line)
    return comps, seen


def _compiled(mode: str, tpu: bool = False, gen: int = GEN) -> str:
    """The optimised HLO of ``mode``'s decode (``prefix`` / ``dual``: semi-AR blocks of 4 with
    that cache; ``length_prior``; ``autoregressive``: the causal baseline), compiled for this CPU
    or for a TPU v5e (libtpu's compile-only device). 3 query slots: no array of the length
    prior's loop (the attention's probabilities are ``(B, KV, heads per KV x slots, T)``) then
    has one layer's buffer shape in another axis order."""
    model = ref.tiny_llm(causal=mode == "autoregressive", layers=LAYERS, kv_heads=KV_HEADS)
    variables, prefix = ref.init_vars(model), ref.random_prefix(B)
    place = lambda tree: tree  # noqa: E731
    if tpu:
        from jax.experimental import topologies
        from jax.sharding import SingleDeviceSharding

        dev = SingleDeviceSharding(topologies.get_topology_desc("v5e:1x1", platform="tpu").devices[0])
        place = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), tree)  # noqa: E731
    if mode == "autoregressive":
        return api._autoregressive_program.lower(*place((variables, prefix, jnp.ones(B, bool))),
                                                 bb=api.backbone_of(model), cond=api.Conditioner(), max_new=gen,
                                                 eos_id=ref.TOKENS.eos).compile().as_text()
    if mode == "length_prior":
        cfg = DecodeConfig(gen_len=gen, steps=gen, block_length=gen, threshold=0.9, length_prior=True, query_slots=3)
    else:
        cfg = DecodeConfig(decoder="semi_ar", gen_len=gen, steps=gen, block_length=4, cache=mode)
    plan, prior = api.diffusion_plans(cfg, ref.TOKENS)
    args = place((variables, prefix, jnp.int32(4), jax.random.key(0), jnp.arange(B), jnp.ones(B, bool)))
    return api._diffusion_program.lower(*args, bb=api.backbone_of(model), cond=api.Conditioner(), plan=plan,
                                        gen_len=gen, buckets=(), prior=prior).compile().as_text()


def _layer_sized(line: str) -> str | None:
    """The instruction kind of a line whose output has one layer's buffer shape, in any layout or
    axis order (None for other lines and for plumbing: parameters, tuples, bitcasts)."""
    m = re.match(r"^\s*(?:ROOT )?\S+ = \w+\[([\d,]*)\]\S* ([\w-]+)\(", line)
    if not m or m.group(2) in ("parameter", "get-tuple-element", "tuple", "bitcast"):
        return None
    same = sorted(int(d) for d in m.group(1).split(",") if d) == sorted([B, ref.PREFIX + GEN, KV_HEADS, 8])
    return m.group(2) if same else None


def _tpu_loop_writes(mode: str) -> tuple[int, list[str]]:
    """The in-place writes among the TPU-compiled loop's instructions of one layer's buffer shape,
    and those that are something else."""
    comps, loop = _loop_computations(_compiled(mode, tpu=True))
    assert loop, "no decode loop in the compiled program"
    writes, other = 0, []
    for name in loop:
        for line in comps[name]:
            if _layer_sized(line):
                if re.search(r'op_name="[^"]*/(scatter|dynamic_update_slice)"', line):
                    writes += 1
                else:
                    other.append(line.strip()[:200])
    return writes, other


@pytest.mark.parametrize("mode", ["length_prior", "autoregressive"])
def test_on_cpu_the_loop_never_relayouts_the_cache(mode):
    """Compiled for this CPU, the decode loop (with every fused computation it calls) holds no
    copy or transpose of an array of one layer's buffer shape, in any axis order: the attention
    reads each head-major buffer where the in-place write left it. With ``(B, T, KV, D)``
    buffers the loop copied all of them into ``(B, KV, D, T)`` in every forward."""
    comps, loop = _loop_computations(_compiled(mode), fusions=True)
    assert loop, "no decode loop in the compiled program"
    relayouts = [line.strip()[:200] for name in loop for line in comps[name]
                 if _layer_sized(line) in ("copy", "transpose")]
    assert not relayouts, relayouts


@pytest.mark.parametrize("mode", ["length_prior", "autoregressive"])
def test_on_a_tpu_the_loop_only_writes_the_buffers_in_place(mode):
    """Compiled for a TPU v5e (libtpu's compile-only device; no TPU attached): every
    instruction of the decode loop whose output has one layer's buffer shape (in any layout or
    axis order) is that layer's in-place write (a scatter or dynamic-update-slice). A relayout
    for the attention or the scatter, or a copy between iterations, would read and write the
    whole cache in every forward. (The prefix / dual caches also build a fresh stack when a
    segment starts; they are checked on CPU above.) Compiled in a child process: a process that
    has loaded libtpu's compile-only client crashes in a later ``jax.profiler`` trace (another
    test's, in the same pytest worker)."""
    proc = subprocess.run([sys.executable, __file__, mode], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    writes, other = json.loads(proc.stdout.strip().splitlines()[-1])
    assert writes == 2 * LAYERS and not other, (writes, other)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    import conftest  # noqa: F401  (the tests' JAX set-up)

    print(json.dumps(_tpu_loop_writes(sys.argv[1])))
