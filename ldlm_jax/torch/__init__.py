"""ldlm_jax.torch: the PyTorch twin of LDLM, for studying and serving JAX-trained models.

Never imports jax. torch (an optional extra: pip install 'ldlm_jax[torch]') is imported on first
use of a torch-backed name, so the numpy-only name table (ldlm_jax.torch.names) works without it.
Write a folder with `ldlm-export-torch --workdir DIR OUT`, then:

    from ldlm_jax.torch import LDLMTorch
    model = LDLMTorch.from_pretrained(OUT)
    print(model.generate(num=2, steps=100, sampler="euler_maruyama", seed=0)[0]["text"])
"""

import importlib

_LAZY = {
    "LDLMTorch": "pretrained",
    "LDLMNetworksTorch": "pretrained",
    "ExportFormatError": "pretrained",
    "read_config": "pretrained",
    "sample_latents": "sampling",
    "get_schedule": "sampling",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"ldlm_jax.torch.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ldlm_jax.torch' has no attribute {name!r}")
