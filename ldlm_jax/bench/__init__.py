"""Benchmarks (not tests). `python -m ldlm_jax.bench [--quick]` runs the suite (__main__.py,
suite.py, sections.py): every figure a ratio of two programs timed side by side in one run, one
table printed, one JSON written. Each module also runs alone and writes its own JSON:

  python -m ldlm_jax.bench.lm_forward           frozen LM forward, Flax vs transformers PyTorch
  python -m ldlm_jax.bench.train_step           train-step tokens/s and MFU vs a measured peak
  python -m ldlm_jax.bench.sampler_model_speed  sampling, JAX jit vs the PyTorch export (eager)
  python -m ldlm_jax.bench.sampler_speed        each sampler's loop overhead on a dummy denoiser
  python -m ldlm_jax.bench.data_pipeline        data-pipeline tokens/s with 0 and 2 workers

timing.py holds the shared timers (medians; interleaved pairs; the torch thread-count probe).
"""
