"""host_devices.py: the --cpu-devices choice ('auto' splits the batch evenly, one device per core
at most), its errors, and that JAX's device count is only set where it is still ours to set."""

import os

import jax
import pytest

from ldlm_jax import host_devices


@pytest.mark.parametrize(
    "batch, cores, expected",
    [(64, 2, 2), (1, 2, 1), (6, 4, 3), (7, 4, 1), (64, 64, 8), (None, 16, 8), (None, 2, 2)],
)
def test_auto_count(batch, cores, expected):
    assert host_devices.auto_count(batch, cores) == expected


def test_parse_choice():
    assert host_devices.parse_choice("auto") == "auto"
    assert host_devices.parse_choice(" AUTO ") == "auto"
    assert host_devices.parse_choice("3") == 3
    for bad in ("0", "-2", "two", ""):
        with pytest.raises(ValueError, match="--cpu-devices must be 'auto' or an integer >= 1"):
            host_devices.parse_choice(bad)


def test_an_xla_flag_stays_in_charge():
    assert host_devices.flag_count() == 8  # conftest
    assert host_devices.configure_cpu_devices("auto", 64) is None
    assert host_devices.configure_cpu_devices(8) is None
    with pytest.raises(ValueError, match="conflicts with XLA_FLAGS"):
        host_devices.configure_cpu_devices(2)


def test_after_jax_started_only_the_count_it_has(monkeypatch):
    assert jax.device_count() == 8  # JAX starts here, with conftest's flag, before it goes
    monkeypatch.setenv("XLA_FLAGS", "")
    assert host_devices.configure_cpu_devices("auto", 64) is None
    assert host_devices.configure_cpu_devices("8") is None
    with pytest.raises(ValueError, match="JAX already started with 8 CPU device"):
        host_devices.configure_cpu_devices(2)
    assert os.environ["XLA_FLAGS"] == ""
