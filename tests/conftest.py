"""Test setup: 8 fake CPU devices for sharding tests, fp32 with highest matmul precision."""

import atexit
import os
import shutil
import tempfile

# 8 fake CPU devices for sharding tests; LLVM optimisation off: the tests are dominated by
# compile time of tiny programs (halves it), and results do not depend on it.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache per test session, shared by the xdist workers and every
# subprocess a test starts (resume / multi-process tests compile the same train step up to six
# times). Fresh each session, so no result can depend on an earlier run.
# Workers and subprocesses inherit the variable, so only the first process makes (and removes) it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache = tempfile.mkdtemp(prefix="wlj-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
