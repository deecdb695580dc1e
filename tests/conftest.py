"""Test setup, before JAX is imported: 8 fake CPU devices for multi-device tests, and XLA's
CPU backend at optimization level 0 (tests are dominated by compile time, which this cuts
about threefold; results are the same computations)."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
