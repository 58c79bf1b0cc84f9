"""The shipped configs load, validate and document their command; bad model configs fail early
with an error naming the key; ldlm-info runs on a config."""

import json
import re

import pytest

from ldlm_jax.cli import info
from ldlm_jax.config import ConfigError, latent_count, load_config

SHIPPED = {
    "configs/owt.py": dict(seq_len=1024, mode="pack", source="gpt2", layer=-3, lm_dim=768),
    "configs/lm1b.py": dict(seq_len=128, mode="pad", source="gpt2", layer=-3, lm_dim=768),
    "configs/demo.py": dict(seq_len=64, mode="pad", source="minilm", layer=-1, lm_dim=384),
    "configs/tiny.py": dict(seq_len=32, mode="pad", source="minilm", layer=-1, lm_dim=384),
}


@pytest.mark.parametrize("path", sorted(SHIPPED))
def test_shipped_config(path):
    want = SHIPPED[path]
    config = load_config(path)
    assert config.data.seq_len == want["seq_len"] and config.data.mode == want["mode"]
    assert config.frozen_lm.source == want["source"] and config.frozen_lm.layer == want["layer"]
    assert latent_count(config) == config.data.seq_len  # K = L by default
    assert info.hf_config_for(config) is not None  # offline, no weights
    assert info.abstract_frozen_lm(config).hidden_size == want["lm_dim"]
    with open(path) as f:
        doc = f.read()
    assert re.search(rf"ldlm-(train|info) --config {re.escape(path)}", doc), "docstring command"


def test_variants():
    assert load_config("configs/tiny.py:random_lm").frozen_lm.source == "random"
    with pytest.raises(ConfigError, match="no variant"):
        load_config("configs/tiny.py:nope")


@pytest.mark.parametrize(
    "override, key",
    [
        ("--config.model.latent_dim=32", "model.latent_dim"),  # latent width != denoiser width
        ("--config.model.denoiser.num_heads=5", "model.denoiser.num_heads"),
        ("--config.model.encoder.num_heads=3", "model.encoder.num_heads"),
        ("--config.model.latent_decoder.num_heads=7", "model.latent_decoder.num_heads"),
        ("--config.diffusion.schedule=cosin", "diffusion.schedule"),
        ("--config.recipe.decoder_loss=l1", "recipe.decoder_loss"),
        ("--config.recipe.timestep_sampler=sorted", "recipe.timestep_sampler"),
        ("--config.model.latent_count=64", "model.latent_count"),  # K > L = 32
        ("--config.model.denoiser.num_layers=3", "model.denoiser.num_layers"),  # U-Net halves
        ("--config.model.encoder.num_layer=2", "model.encoder.num_layer"),  # unknown key
        ("--config.model.perceiver_local_bias=-1.0", "model.perceiver_local_bias"),
    ],
)
def test_bad_model_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config("configs/tiny.py:random_lm", [override])


def test_ldlm_info_cli(capsys):
    assert info.main(["--config", "configs/tiny.py:random_lm", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["total trainable"] == sum(
        out["params"][k] for k in ("encoder", "denoiser", "latent decoder", "token decoder")
    )
    flops = out["flops"]
    assert flops["train step"] > 3 * flops["denoiser forward"] > 0
    assert info.main(["--config", "configs/tiny.py", "--no-flops"]) == 0
    assert "total trainable" in capsys.readouterr().out
    assert info.main(["--config", "configs/tiny.py", "--config.model.latent_dim=7"]) == 2
    assert "model.latent_dim" in capsys.readouterr().err
