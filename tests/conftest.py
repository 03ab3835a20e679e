"""Test setup: 8 fake CPU devices for sharding tests, fp32 with highest matmul precision."""

import os

# 8 fake CPU devices for sharding tests; LLVM optimisation off: the tests are dominated by
# compile time of tiny programs (halves it), and results do not depend on it.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
