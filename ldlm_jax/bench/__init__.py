"""Benchmarks (not tests): run as `python -m ldlm_jax.bench.<name>`; each prints and writes JSON."""
