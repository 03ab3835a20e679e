"""Import straight onto a mesh: each device reads only its block of every tensor (counted on a
tiny model through the safetensors slice reader, and computed from shapes for the paper
config), the sharded import equals the one-device import, and the MODEL_DIR it writes is the
same file. The start of sharded inference: `evaluate` with mesh.* overrides places the model
with the training rules and decodes the same tokens as one device."""

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from tests.reference_torch.composite import build_reference, write_checkpoints
from whisper_llada_jax import cli
from whisper_llada_jax.checkpoints import tensors
from whisper_llada_jax.checkpoints.llada_hf import abstract_params as llada_abstract_params
from whisper_llada_jax.checkpoints.llada_hf import import_llada_hf, llada_rules
from whisper_llada_jax.checkpoints.tensors import SafetensorsSource, export_params, flatten, read_plan
from whisper_llada_jax.checkpoints.whisper_hf import WHISPER_RULES, import_whisper_hf
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.models import whisper as whisper_model
from whisper_llada_jax.models.composite import mesh_shardings
from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json
from whisper_llada_jax.training.config import MeshConfig
from whisper_llada_jax.mesh import make_mesh, rules

CFG = load_model_config("tiny", ["whisper.max_source_positions=200"])
MESH = MeshConfig(data=2, fsdp=2, tensor=2)
FILES = ("config.yaml", "tokenizer.json", "params.safetensors", "lora.safetensors")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("imp")
    ref = build_reference(CFG, seed=3)
    tok = build_tokenizer_json(["the cat sat on the mat", "hello world"] * 3, root / "tokenizer.json")
    return write_checkpoints(ref, CFG, root / "ckpt", tok)


class _Counter:
    """Counts the elements the safetensors reader returns, per make_array_from_callback call
    (one call per device shard)."""

    def __init__(self, monkeypatch):
        self.now, self.calls = 0, []  # calls: (elements read, elements of the shard, whole tensor)
        get_slice, get = SafetensorsSource.get_slice, SafetensorsSource.get

        def counted_slice(src, key, index):
            out = get_slice(src, key, index)
            self.now += out.size
            return out

        def counted_get(src, key):
            out = get(src, key)
            self.now += out.size
            return out

        real = jax.make_array_from_callback

        def make(shape, sharding, cb, *a, **kw):
            def wrapped(index):
                self.now = 0
                block = cb(index)
                self.calls.append((self.now, block.size, int(np.prod(shape))))
                return block
            return real(shape, sharding, wrapped, *a, **kw)

        monkeypatch.setattr(SafetensorsSource, "get_slice", counted_slice)
        monkeypatch.setattr(SafetensorsSource, "get", counted_get)
        monkeypatch.setattr(tensors.jax, "make_array_from_callback", make)


@pytest.mark.parametrize("scan", [False, True])
def test_each_device_reads_only_its_shard(ckpts, monkeypatch, scan):
    whisper, llada, _ = ckpts
    cfg = dataclasses.replace(CFG, llm=dataclasses.replace(CFG.llm, scan_layers=scan))
    mesh = make_mesh(MESH)
    shardings = mesh_shardings(cfg, mesh, rules(MESH))["params"]
    _, single = import_llada_hf(llada, cfg.llm)
    _, whisper_single = import_whisper_hf(whisper, encoder_only=True)
    counter = _Counter(monkeypatch)
    _, sharded = import_llada_hf(llada, cfg.llm, shardings=shardings["llm"])
    _, whisper_sharded = import_whisper_hf(whisper, encoder_only=True, shardings={"encoder": shardings["encoder"]})

    assert len(counter.calls) >= 8 * len(flatten(sharded))  # one read per device and leaf
    over = [c for c in counter.calls if c[0] != c[1]]
    assert not over, f"shards read more (or less) than their own block: {over[:5]}"
    assert sum(1 for read, _, whole in counter.calls if read < whole) >= len(counter.calls) // 2
    q = flatten(sharded)["blocks/q_proj/kernel" if scan else "blocks_0/q_proj/kernel"]
    assert q.addressable_shards[0].data.size == q.size // 4  # (fsdp, tensor) of 2 x 2
    for got, want in ((sharded, single), (whisper_sharded, whisper_single)):
        for path, leaf in flatten(want).items():
            np.testing.assert_array_equal(np.asarray(flatten(got)[path]), np.asarray(leaf), err_msg=path)


def _shape_source(params, table, name):
    """A TensorSource with the external names and shapes a checkpoint of ``params`` would have
    (zero-stride arrays: nothing of paper size is allocated); it cannot be read."""
    zeros = jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), params)
    shapes = {k: tuple(v.shape) for k, v in export_params(zeros, table)}

    class Shapes:
        def keys(self):
            return list(shapes)

        def shape(self, key):
            return shapes[key]

        def get(self, key):
            raise AssertionError("the plan reads nothing")

    src = Shapes()
    src.name = name
    return src


def test_paper_config_devices_read_only_their_shard_on_a_pod_mesh():
    """The paper's shapes (Whisper large-v3 encoder, LLaDA-8B, scanned) on a 2 x 2 x 2
    (data, fsdp, tensor) mesh: every device reads exactly its shard of every tensor."""
    cfg = load_model_config("paper")
    mesh = make_mesh(MESH)
    shardings = mesh_shardings(cfg, mesh, rules(MESH))["params"]
    llm = nn.unbox(llada_abstract_params(cfg.llm))
    enc = nn.unbox(whisper_model.abstract_params(cfg.whisper, encoder_only=True))
    worst = (0, "")
    for abstract, table, shard in ((llm, llada_rules(), shardings["llm"]),
                                   (enc, WHISPER_RULES, {"encoder": shardings["encoder"]})):
        plan = read_plan(_shape_source(abstract, table, "paper"), table, abstract, shard)
        assert set(plan) == set(flatten(abstract))
        for leaf, per_device in plan.items():
            assert len(per_device) == 8, leaf
            for device, (read, want) in per_device.items():
                assert read == want, f"{leaf} on {device}: reads {read:,} elements, its shard has {want:,}"
                worst = max(worst, (read, leaf))
    embed = flatten(llm)["wte/embedding"]
    assert worst[0] < embed.size and worst[0] >= embed.size // 4, worst
    print(f"largest per-device read: {worst[1]} {worst[0]:,} elements ({worst[0] * 2 / 2**20:.0f} MiB bf16)")


def test_import_command_onto_a_mesh_writes_the_same_model_dir(ckpts, tmp_path, capsys):
    whisper, llada, pth = ckpts
    common = ["import", "--whisper", str(whisper), "--llada", str(llada), "--projector-checkpoint", str(pth),
              "--config", "tiny"]
    assert cli.main([*common, "--out", str(tmp_path / "one")]) == 0
    assert "import: backend cpu, 8 devices" in capsys.readouterr().out
    assert cli.main([*common, "--out", str(tmp_path / "mesh"), "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]) == 0
    assert "mesh: {'data': 2, 'fsdp': 2, 'tensor': 2}" in capsys.readouterr().out
    for name in FILES:  # the same bytes: placement moves data, never changes it
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "mesh" / name).read_bytes(), name
    # a fresh projector / LoRA is placed on the mesh too
    assert cli.main([*common[:-4], "--config", "tiny", "--out", str(tmp_path / "fresh"), "mesh.fsdp=-1", "mesh.data=1"]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "bad"), "steps=3"]) == 2
    assert "only mesh.* and distributed.* are taken here" in capsys.readouterr().err


@pytest.mark.slow
def test_decoding_a_model_placed_on_a_mesh_gives_the_single_device_tokens(ckpts, tmp_path, capsys):
    from whisper_llada_jax.checkpoints.model_dir import load_model_dir, save_model_dir
    from whisper_llada_jax.decoding.api import diffusion_decode
    from whisper_llada_jax.decoding.config import DecodeConfig

    whisper, llada, pth = ckpts
    model = tmp_path / "imported"
    assert cli.main(["import", "--whisper", str(whisper), "--llada", str(llada), "--projector-checkpoint", str(pth),
                     "--config", "tiny", "--out", str(model)]) == 0
    # larger random LLM weights than the reference's init, so the canvases hold many ids
    loaded = load_model_dir(model)
    rng = np.random.default_rng(1)
    loud = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), loaded.variables)
    model = tmp_path / "loud"
    save_model_dir(model, loaded.config, loud, loaded.tokenizer.json)
    mesh = make_mesh(MESH)
    one, placed = load_model_dir(model), load_model_dir(model, mesh, rules(MESH))
    q = flatten(placed.variables["params"])["llm/blocks_0/q_proj/kernel"]
    assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.size == q.size // 4
    feats = np.random.default_rng(0).normal(size=(4, CFG.whisper.n_mels, CFG.whisper.input_frames)).astype(np.float32)
    cfg = DecodeConfig(gen_len=8, steps=8, batch_size=4)
    outs = [diffusion_decode(m.model, m.variables, {"features": feats}, cfg, jax.random.key(0), tokens=m.config.tokens)
            for m in (one, placed)]
    assert len(set(outs[0].tokens.ravel().tolist())) > 2  # a canvas of several ids, not all eos
    np.testing.assert_array_equal(outs[1].tokens, outs[0].tokens)
    np.testing.assert_array_equal(outs[1].length, outs[0].length)
    # the command: same hypotheses file, the mesh printed nowhere else but taken
    data = "manifest:" + str(Path(__file__).parent / "data" / "clips" / "manifest.jsonl")
    common = ["evaluate", "--model", str(model), "--data", data, "--limit", "4", "--decode", "gen_len=8,steps=8,batch_size=4"]
    assert cli.main([*common, "--out", str(tmp_path / "one")]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "mesh"), "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]) == 0
    assert "evaluate: backend cpu, 8 devices" in capsys.readouterr().out
    (hyp,) = (tmp_path / "one" / "hypotheses").glob("*.jsonl")
    assert (tmp_path / "mesh" / "hypotheses" / hyp.name).read_text() == hyp.read_text()
    assert cli.main([*common, "--out", str(tmp_path / "big"), "mesh.data=1", "mesh.fsdp=16"]) == 2
    assert "pip install 'whisper-llada-jax[tpu]'" in capsys.readouterr().err
