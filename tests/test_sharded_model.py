"""The composite on a (data=2, fsdp=2, tensor=2) mesh of 8 host CPU devices: initialised under
jit straight into the shardings of the logical rules, saved, re-imported from a MODEL_DIR onto
the mesh, and giving the logits of a single-device run."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tests.reference_torch.composite import random_inputs
from whisper_llada_jax.checkpoints.model_dir import load_model_dir, save_model_dir
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.models.composite import init_variables, mesh_shardings
from whisper_llada_jax.sharding import DEFAULT_RULES
from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json

CFG = load_model_config("tiny")


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 host CPU devices"
    return Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))


@pytest.fixture(scope="module")
def saved(mesh, tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    variables = init_variables(CFG, jax.random.key(0), mesh=mesh)
    tok = build_tokenizer_json(["one two three"], root / "tokenizer.json")
    save_model_dir(root / "model", CFG, variables, tok)
    return variables, root / "model"


def _spec(x):
    return tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))


def test_initialised_parameters_carry_the_intended_shardings(saved, mesh):
    variables, _ = saved
    llm, lora = variables["params"]["llm"], variables["lora"]["llm"]
    proj, enc = variables["params"]["projector"], variables["params"]["encoder"]
    expect = {
        "wte (vocab, embed)": (llm["wte"]["embedding"], ("tensor", "fsdp")),
        "q_proj (embed, heads)": (llm["blocks_0"]["q_proj"]["kernel"], ("fsdp", "tensor")),
        "ff_out (mlp, embed)": (llm["blocks_1"]["ff_out"]["kernel"], ("tensor", "fsdp")),
        "LM head (embed, vocab)": (llm["ff_out"]["kernel"], ("fsdp", "tensor")),
        "RMSNorm": (llm["ln_f"]["weight"], (None,)),
        "lora_a (embed, rank)": (lora["blocks_0"]["k_proj"]["lora_a"], ("fsdp", None)),
        "lora_b (rank, kv_heads)": (lora["blocks_0"]["k_proj"]["lora_b"], (None, "tensor")),
        "Q-Former query": (proj["bert"]["layer_0"]["attention"]["self"]["query"]["kernel"], ("fsdp", "tensor")),
        "Q-Former cross value": (proj["bert"]["layer_1"]["crossattention"]["self"]["value"]["kernel"], ("fsdp", "tensor")),
        "linear_proj": (proj["linear_proj"]["kernel"], (None, "fsdp")),
        "whisper conv1 (width, mel, embed)": (enc["conv1"]["kernel"], (None, None, "fsdp")),
        "whisper fc1 (embed, mlp)": (enc["layers_0"]["fc1"]["kernel"], ("fsdp", "tensor")),
    }
    for name, (x, spec) in expect.items():
        assert isinstance(x.sharding, NamedSharding) and x.sharding.mesh.shape == mesh.shape, name
        assert _spec(x) == spec, (name, x.sharding.spec)
    # each device holds only its block: vocab / tensor, embed / fsdp
    assert llm["wte"]["embedding"].addressable_shards[0].data.shape == (128 // 2, 64 // 2)
    # and every leaf is where the rules table says
    want = mesh_shardings(CFG, mesh)
    jax.tree.map(lambda x, s: None if x.sharding.is_equivalent_to(s, x.ndim) else pytest.fail(f"{x.sharding} != {s}"),
                 variables, want)


def test_model_dir_on_a_mesh_gives_single_device_logits(saved, mesh):
    variables, path = saved
    single = load_model_dir(path)
    sharded = load_model_dir(path, mesh=mesh)
    # bit-identical to what was saved, each leaf built in its mesh sharding
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), variables, sharded.variables)
    jax.tree.map(lambda a, b: None if a.sharding.is_equivalent_to(b.sharding, a.ndim) else pytest.fail(str(a.sharding)),
                 variables, sharded.variables)
    assert all(len(x.devices()) == 1 for x in jax.tree.leaves(single.variables))

    features, ids = random_inputs(CFG, batch=4, response=5, seed=2)
    model = single.model
    forward = lambda v, f, i: model.apply(v, i, features=f)  # noqa: E731
    want = jax.jit(forward)(single.variables, features, ids)

    batch = NamedSharding(mesh, P(("data", "fsdp")))
    var_shardings = jax.tree.map(lambda x: x.sharding, sharded.variables)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        step = jax.jit(forward, in_shardings=(var_shardings, batch, batch), out_shardings=batch)
        got = step(sharded.variables, features, ids)
    assert got.sharding.spec == P(("data", "fsdp"))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
