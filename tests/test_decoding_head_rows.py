"""The LM head runs only on the rows a step can reveal, and that is exact.

Semi-AR exact decoding projects logits for the current block only (the head is ``V x D``, the
largest matmul of a step at paper size) and falls back to the whole response only in a step
where an earlier block still holds a revealed mask token (the reference keeps such a slot a
candidate). A backbone that records, at run time, how many rows each executed head call
received shows which path ran; biasing the mask token's logit makes the fallback happen and
the reference loop (same bias) checks that both paths decode token for token what it does.
The autoregressive baseline's head sees one row per step.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_decode as ref
from whisper_llada_jax.decoding import api, autoregressive
from whisper_llada_jax.decoding.backbone import Backbone

GEN, BLOCK = 16, 4
_ROWS: list[int] = []  # rows of every executed head call (filled by a debug callback)


@dataclasses.dataclass(frozen=True)
class RecordingBackbone(Backbone):
    """A bare-LLM backbone whose head adds ``mask_bias`` to the mask token's logit and records
    the number of rows it was applied to each time it runs."""

    mask_bias: float = 0.0

    def head(self, variables, hidden):
        logits = super().head(variables, hidden)
        rows = hidden.shape[1]
        jax.debug.callback(lambda: _ROWS.append(rows))
        return logits.at[..., ref.TOKENS.mask].add(self.mask_bias)


def _decode(model, variables, prefix, bias, steps, rng):
    _ROWS.clear()
    plan = api.diffusion.Plan(num_segments=GEN // BLOCK, segments="blocks", block=BLOCK, eos_rule=True,
                              mask_id=ref.TOKENS.mask, eos_id=ref.TOKENS.eos)
    b = prefix.embeds.shape[0]
    out, nfe, _ = api._diffusion_program(variables, prefix, jnp.int32(steps // (GEN // BLOCK)), rng,
                                         jnp.arange(b), jnp.ones(b, bool), bb=RecordingBackbone(model, False, bias),
                                         cond=api.Conditioner(), plan=plan, gen_len=GEN, buckets=())
    jax.effects_barrier()
    return np.asarray(out), np.asarray(nfe), list(_ROWS)


def _reference(model, variables, prefix, bias, steps, row, rng):
    base = ref.row_logits_fn(model, variables, prefix, row)

    def logits_fn(ids):
        z = base(ids).copy()
        z[..., ref.TOKENS.mask] += np.float32(bias)
        return z

    return ref.decode(logits_fn, gen_len=GEN, steps=steps, block_length=BLOCK, remasking="low_confidence",
                      temperature=0.0, mask_id=ref.TOKENS.mask, eos_id=ref.TOKENS.eos, noise=ref.Noise(rng, row))


@pytest.fixture(scope="module")
def random_model():
    model = ref.tiny_llm()
    return model, ref.init_vars(model), ref.random_prefix(4)


def test_head_runs_on_the_current_block_only(random_model):
    model, variables, prefix = random_model
    # the mask token is never the argmax: no earlier-block candidates, every head call is one block
    out, nfe, rows = _decode(model, variables, prefix, -1e4, GEN, jax.random.key(0))
    assert rows and set(rows) == {BLOCK}, rows
    assert len(rows) == nfe.max()  # one head call per forward of the batch loop
    for b in range(prefix.embeds.shape[0]):
        want, _ = _reference(model, variables, prefix, -1e4, GEN, b, jax.random.key(0))
        np.testing.assert_array_equal(out[b], want)


@pytest.mark.parametrize("bias", [3.0, 6.0])
def test_whole_response_head_when_a_revealed_mask_token_stays_a_candidate(random_model, bias):
    model, variables, prefix = random_model
    rng = jax.random.key(1)
    out, nfe, rows = _decode(model, variables, prefix, bias, GEN // 2, rng)
    assert BLOCK in rows and GEN in rows, rows  # both paths ran in this decode
    for b in range(prefix.embeds.shape[0]):
        want, want_nfe = _reference(model, variables, prefix, bias, GEN // 2, b, rng)
        np.testing.assert_array_equal(out[b], want, err_msg=f"row {b}")
        assert nfe[b] == want_nfe


def test_autoregressive_head_sees_one_row_per_step():
    model = ref.tiny_llm(causal=True, kv_heads=2)
    variables, prefix = ref.init_vars(model), ref.random_prefix(3)
    _ROWS.clear()
    run = jax.jit(lambda v, p: autoregressive.greedy(RecordingBackbone(model, False), v, p, 6, ref.TOKENS.eos,
                                                     jnp.ones(3, bool)))
    _, _, nfe = run(variables, prefix)
    jax.effects_barrier()
    assert set(_ROWS) == {1} and len(_ROWS) == int(np.asarray(nfe).max()), _ROWS
