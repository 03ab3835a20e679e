"""benchmarks/gpu_loop_compile.py's reading of a compiled program (the compile itself needs XLA's
CUDA plugin, the `gpu-compile` extra): on a hand-written module, only the while loop's body is
read; a pad of a K/V buffer counts as a copy and an in-place scatter of one does not; a weight
concatenation counts as a join; their bytes are read + write, scaled from 2 layers to 32."""

import dataclasses

from benchmarks import gpu_loop_compile as glc
from whisper_llada_jax.config import LLMConfig

MODULE = """HloModule m

%fused_pad (x: bf16[2,8,500,128]) -> bf16[16,504,128] {
  ROOT %pad.1 = bf16[16,504,128]{2,1,0} pad(%x), padding=0_0x0_4x0_0
}

%body.7 (p: (s32[], bf16[2,8,504,128])) -> (s32[], bf16[2,8,504,128]) {
  %p = (s32[], bf16[2,8,504,128]{3,2,1,0}) parameter(0)
  %g = bf16[2,8,504,128]{3,2,1,0} get-tuple-element(%p), index=1
  %loop_pad_fusion = bf16[16,504,128]{2,1,0} fusion(%g), kind=kLoop, calls=%fused_pad
  %input_scatter_fusion = bf16[2,8,504,128]{3,2,1,0} fusion(%g, %u), kind=kInput, calls=%fused_scatter.3
  %wrapped_concatenate = bf16[64,192]{1,0} fusion(%a, %b, %c), kind=kLoop, calls=%wrapped_concatenate_computation
  %custom-call.1 = (bf16[16,8,504]{2,1,0}, s8[4]{0}) custom-call(%q, %loop_pad_fusion), custom_call_target="__cublas$gemm"
  ROOT %t = (s32[], bf16[2,8,504,128]{3,2,1,0}) tuple(%i, %input_scatter_fusion)
}

ENTRY %main (a: bf16[2,8,504,128]) -> bf16[2,8,504,128] {
  %w = (s32[], bf16[2,8,504,128]{3,2,1,0}) while(%init), condition=%cond.2, body=%body.7
  %outside = bf16[16,504,128]{2,1,0} fusion(%z), kind=kLoop, calls=%fused_pad
  ROOT %r = bf16[2,8,504,128]{3,2,1,0} get-tuple-element(%w), index=1
}
"""


def test_census_reads_the_loop_body_only():
    body = glc.loop_body(MODULE)
    assert any("loop_pad_fusion" in line for line in body) and not any("%outside" in line for line in body)
    cfg = dataclasses.replace(LLMConfig(), d_model=64, n_kv_heads=8, head_dim=128)
    got = glc.census(body, 2, cfg)
    assert (got["kernels"], got["kv_copies"], got["weight_joins"]) == (4, 1, 1), got
    moved = 2 * (16 * 504 * 128 * 2) + 2 * (64 * 192 * 2)  # pad and join, read + write, bf16
    assert abs(got["gb_per_forward_32_layers"] - 16 * moved / 1e9) < 1e-9, got
