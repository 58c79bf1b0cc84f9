"""PyTorch export: parity of every module and of sampling (tiny and demo configs), the bitwise
round trip JAX -> safetensors -> torch -> JAX, generation with jax unimportable, bad input, and
ldlm-export-torch --verify on a real (sharded) training checkpoint.

Params are random but perturbed (norm scales and biases away from 1 / 0), so a transposed or
misnamed tensor shows up as a parity failure.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from train_utils import REPO, tiny_config

from ldlm_jax import adaptive_timesteps, checkpointing, trainer
from ldlm_jax import torch_export as te
from ldlm_jax.cli import export_torch as cli
from ldlm_jax.config import SAMPLERS, load_config
from ldlm_jax.frozen_lm import frozen_lm_from_config
from ldlm_jax.ldlm import LDLM

TOL = 1e-4
torch.set_num_threads(1)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


def _random_params(model, seed=0):
    """Random params of the model's shapes, drawn in numpy (no init compile): kernels scaled by
    1/sqrt(fan_in), norm scales 1 + noise, biases noise, so no tensor is trivially 0 or 1."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        names = [str(getattr(k, "key", k)) for k in path]
        noise = rng.normal(size=x.shape).astype(np.float32)
        if x.ndim == 1:
            return (1.0 + 0.1 * noise) if names[-1] == "scale" else 0.1 * noise
        if names[-1] == "embedding":
            return 0.5 * noise
        fan_in = int(np.prod(x.shape[:-1])) if names[-2] == "out" else x.shape[0]
        return noise / np.float32(np.sqrt(fan_in))

    return jax.tree_util.tree_map_with_path(leaf, model.abstract_params())


def _export(tmp_path_factory, config, name):
    """Random (perturbed) params, random stats and adaptive state, exported to a tmp folder."""
    frozen_lm = frozen_lm_from_config(config)
    model = LDLM(config, frozen_lm)
    params = _random_params(model)
    rng = np.random.default_rng(0)
    dh = frozen_lm.hidden_size
    stats = {
        "mean": rng.normal(size=dh).astype(np.float32),
        "std": rng.uniform(0.5, 2.0, dh).astype(np.float32),
    }
    adaptive = adaptive_timesteps.init_adaptive_state(config.recipe.adaptive_bins)
    t = rng.uniform(0.0, 1.0, 64).astype(np.float32)
    adaptive = adaptive_timesteps.update_adaptive_state(adaptive, t, t**2 + 0.1 * t)
    out = str(tmp_path_factory.mktemp(name))
    meta = te.export_model(out, config, params, frozen_lm, stats, adaptive, {"test": name})
    return dict(
        out=out,
        config=config,
        params=params,
        frozen_lm=frozen_lm,
        stats=stats,
        adaptive=adaptive,
        meta=meta,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _export(tmp_path_factory, tiny_config(), "tiny")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    config = load_config(os.path.join(REPO, "configs", "demo.py"), ["model.dtype=float32"])
    return _export(tmp_path_factory, config, "demo")


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_every_module_and_sampler_match(name, request):
    ex = request.getfixturevalue(name)
    samplers = SAMPLERS if name == "tiny" else ("euler_maruyama", "ode_euler")
    rows = cli.verify(
        ex["out"],
        ex["config"],
        ex["params"],
        ex["frozen_lm"],
        ex["stats"],
        ex["adaptive"],
        sample_steps=3,
        samplers=samplers,
    )
    print("\n".join(cli.format_rows(rows)))
    modules = {r["module"] for r in rows}
    expected = {
        "frozen_lm",
        "encoder",
        "denoiser",
        "latent_decoder",
        "token_decoder",
        "schedule",
        "time_warp",
    }
    expected |= {f"{kind}:{s}" for s in samplers for kind in ("sampler", "tokens")}
    assert expected <= modules
    for row in rows:
        assert row["max_abs_diff"] <= TOL, row
        assert row["module"].startswith("tokens") or row["scale"] > 0.1, row  # not all zeros


def test_infilling_matches(tiny):
    """Known latents held fixed (prompts / infilling) give the same sample in both frameworks."""
    from ldlm_jax import samplers as jsamplers
    from ldlm_jax.torch import LDLMTorch
    from ldlm_jax.torch import sampling as tsampling

    model = LDLM(tiny["config"], tiny["frozen_lm"])
    tmodel = LDLMTorch.from_pretrained(tiny["out"], load_frozen_lm=False)
    shape = (2, model.num_latents, model.latent_dim)
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(4, *shape)).astype(np.float32)
    known = rng.normal(size=shape).astype(np.float32)
    mask = np.zeros(shape[:2], bool)
    mask[:, :5] = True
    kw = dict(sampler="ddpm", steps=3, t_min=0.05)
    z0 = jsamplers.sample_latents(
        model.denoise_fn(tiny["params"]),
        model.schedule,
        shape,
        jax.random.PRNGKey(0),
        noise=noise,
        known_latents=known,
        known_mask=mask,
        **kw,
    )
    tz0 = tsampling.sample_latents(
        tmodel.denoise,
        tmodel.schedule,
        noise=torch.tensor(noise),
        known_latents=torch.tensor(known),
        known_mask=torch.tensor(mask),
        **kw,
    )
    np.testing.assert_allclose(np.asarray(z0), tz0.numpy(), atol=TOL, rtol=0)
    np.testing.assert_array_equal(tz0.numpy()[:, :5], known[:, :5])


def test_round_trip_is_bitwise(tiny):
    from ldlm_jax.torch import LDLMTorch

    model = LDLMTorch.from_pretrained(tiny["out"], load_frozen_lm=False)
    spec = tiny["meta"]["model"]
    back = te.params_from_state_dict(model.networks.state_dict(), spec)
    for imported in (back, te.import_params(tiny["out"])):
        assert jax.tree.structure(imported) == jax.tree.structure(tiny["params"])
        same = jax.tree.map(
            lambda a, b: np.array_equal(np.asarray(a), b) and b.dtype == np.float32,
            tiny["params"],
            imported,
        )
        assert all(jax.tree.leaves(same))


GENERATE = """
import json, sys
sys.modules["jax"] = None  # any jax import now fails
import torch
torch.set_num_threads(1)
from ldlm_jax.torch import LDLMTorch
model = LDLMTorch.from_pretrained(sys.argv[1])
runs = [model.generate(num=3, steps=3, sampler=s, seed=7, batch_size=2)
        for s in ("euler_maruyama", "euler_maruyama", "ode_euler")]
assert not any(m == "jax" or m.startswith("jax.") for m in sys.modules if sys.modules[m])
print(json.dumps([[s["token_ids"] for s in run] for run in runs]))
"""


def test_generate_in_torch_without_jax(tiny):
    out = subprocess.run(
        [sys.executable, "-c", GENERATE, tiny["out"]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    em, em_again, ode = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(em) == 3 and all(isinstance(i, int) for row in em for i in row)
    assert em == em_again  # the seed fixes the noise
    assert em != ode


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any torch import now fails
import ldlm_jax.torch  # lazy: imports nothing heavy
import ldlm_jax.torch_export, ldlm_jax.torch.names, ldlm_jax.trainer, ldlm_jax.generation
print("ok")
"""


def test_torch_stays_optional():
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_bad_inputs(tiny, tmp_path):
    from ldlm_jax.torch import ExportFormatError, LDLMTorch

    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    with pytest.raises(te.TorchExportError, match="holds no checkpoint"):
        te.load_checkpoint(empty)
    assert cli.main(["--workdir", empty, str(tmp_path / "o")]) == 2
    with pytest.raises(te.TorchExportError, match="does not exist"):
        te.load_checkpoint(str(tmp_path / "missing"))

    config = tiny_config()
    config.unlock()
    config.diffusion.schedule = "sqrt"
    with pytest.raises(te.TorchExportError, match="'sqrt' has no PyTorch twin"):
        te.export_model(str(tmp_path / "o"), config, tiny["params"], tiny["frozen_lm"])
    with pytest.raises(te.TorchExportError, match="model_type 't5'"):
        te.check_supported(tiny["config"], "t5")

    bad = str(tmp_path / "bad")
    shutil.copytree(tiny["out"], bad)
    meta = _read_json(os.path.join(bad, "config.json"))
    meta["diffusion"]["schedule"] = "sqrt"
    _write_json(os.path.join(bad, "config.json"), meta)
    with pytest.raises(ValueError, match="'sqrt' has no PyTorch twin"):
        LDLMTorch.from_pretrained(bad)
    shutil.copy(os.path.join(tiny["out"], "config.json"), os.path.join(bad, "config.json"))
    lm_config = os.path.join(bad, "frozen_lm", "config.json")
    _write_json(lm_config, {**_read_json(lm_config), "model_type": "t5"})
    with pytest.raises(ExportFormatError, match="model_type 't5' is not supported"):
        LDLMTorch.from_pretrained(bad)

    state = te.to_state_dict(tiny["params"], tiny["meta"]["model"])
    state.pop("denoiser.blocks.0.mlp.gate.weight")
    with pytest.raises(te.TorchExportError, match="missing"):
        te.params_from_state_dict(state, tiny["meta"]["model"])


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """2 training steps of the tiny config on a data x fsdp x tensor = 2 x 2 x 2 mesh (params
    saved sharded); the same program as test_checkpoint_resume's resume onto that mesh, so the
    persistent compile cache serves both."""
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        workdir = str(tmp_path_factory.mktemp("trained"))
        config = tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
        trainer.train(config, workdir, stop_at=2)
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
    assert checkpointing.latest_step(workdir) == 2
    return workdir


def test_cli_verify_from_training_checkpoint(trained_workdir, tmp_path, capsys):
    out = str(tmp_path / "torch")
    assert cli.main(["--workdir", trained_workdir, "--step", "7", out]) == 2
    assert "no checkpoint at step 7" in capsys.readouterr().err
    assert (
        cli.main(["--workdir", trained_workdir, out, "--ema", "--verify", "--verify-steps", "3"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("max_abs_diff=")
    assert float(lines[-1].split("=")[1]) <= TOL
    assert any(line.startswith("denoiser") for line in lines)
    meta = _read_json(os.path.join(out, "config.json"))
    assert meta["source"]["step"] == 2 and meta["source"]["weights"] == "ema"
