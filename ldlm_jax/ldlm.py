"""LDLM: the latent diffusion language model, trained jointly with its latent space.

`LDLMNetworks` (Flax Linen) holds the four trainable networks: encoder E, denoiser, latent decoder
D_lat and token decoder D_tok. `LDLM` is a plain Python container (md4 style) bundling the config,
the frozen LM, the networks and the noise schedule, with pure functions of the params:

  h      = normalise(frozen_lm.hidden_states[layer](input_ids))        [B, L, Dh]  (no gradient)
  z0     = E(h, mask)                                                   [B, K, Dz]
  z0g    = sg(z0) + gamma(step) (z0 - sg(z0))                           (warmup: scaled gradient)
  z_t    = alpha_t z0g + sigma_t eps,  t ~ adaptive or U(0, 1)
  sc     = sg(denoise(z_t, t, 0)) with probability p (one coin per batch), else 0
  L_diff = mean (denoise(z_t, t, sc) - z0g)^2
  h_hat  = D_lat(z0 + sigma_dec eps')                                   (noise in training only)
  L_h    = masked mean (h_hat - h)^2      ('mse' recipe)
  L_w    = CE(D_tok(sg(h_hat)), ids)      (trains the token decoder only)
  total  = w_diff L_diff + w_h L_h + w_tok L_w

In the 'ce' recipe the decoder loss is CE(D_tok(h_hat), ids) without the stop gradient (training
token decoder, latent decoder and encoder): it fills the 'hidden_loss' slot (weight
loss_weights.hidden), is reported as 'token_loss' without being added twice; the MSE is only logged.

Self-conditioning uses one coin per batch (jax.lax.cond), so the extra no-gradient pass costs
compute only on the steps that take it, as in the authors' earlier code.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldlm_jax import adaptive_timesteps, gamma_warmup, losses
from ldlm_jax.attention_kernels import resolve_kernel
from ldlm_jax.config import latent_count
from ldlm_jax.denoiser import Denoiser
from ldlm_jax.encoder import Encoder
from ldlm_jax.latent_decoder import LatentDecoder
from ldlm_jax.layers import as_dtype
from ldlm_jax.schedule import schedule_from_config
from ldlm_jax.token_decoder import TokenDecoder

NETWORK_NAMES = ("encoder", "denoiser", "latent_decoder", "token_decoder")


class LDLMNetworks(nn.Module):
    """The trainable networks, built from `config.model`; lm_dim / vocab_size come from the frozen
    LM. Methods (use via apply(..., method=...)): encode, denoise, decode_hidden, decode_tokens."""

    config: Any
    lm_dim: int
    vocab_size: int
    attention_kernel: str = "xla"  # resolved from config.model.attention for the backend

    def setup(self):
        c, m = self.config, self.config.model
        kw = dict(
            dtype=as_dtype(m.dtype),
            param_dtype=as_dtype(m.param_dtype),
            remat=m.remat,
            attention_kernel=self.attention_kernel,
        )
        seq_len, k = c.data.seq_len, latent_count(c)
        enc, den, ldec, tdec = m.encoder, m.denoiser, m.latent_decoder, m.token_decoder
        self.encoder = Encoder(
            num_latents=k,
            max_length=seq_len,
            latent_dim=m.latent_dim,
            num_layers=enc.num_layers,
            num_heads=enc.num_heads,
            mlp_dim=enc.mlp_dim,
            local_bias=m.perceiver_local_bias,
            **kw,
        )
        self.denoiser = Denoiser(
            width=den.width,
            num_layers=den.num_layers,
            num_heads=den.num_heads,
            mlp_dim=den.mlp_dim,
            rope_theta=den.rope_theta,
            time_max_period=den.time_max_period,
            time_mlp_dim=den.time_mlp_dim,
            unet_skips=den.unet_skips,
            **kw,
        )
        self.latent_decoder = LatentDecoder(
            length=seq_len,
            num_latents=k,
            lm_dim=self.lm_dim,
            width=ldec.width,
            num_layers=ldec.num_layers,
            num_heads=ldec.num_heads,
            mlp_dim=ldec.mlp_dim,
            local_bias=m.perceiver_local_bias,
            **kw,
        )
        self.token_decoder = TokenDecoder(
            vocab_size=self.vocab_size,
            max_length=seq_len,
            width=tdec.width,
            num_layers=tdec.num_layers,
            num_heads=tdec.num_heads,
            mlp_dim=tdec.mlp_dim,
            **kw,
        )

    def encode(self, h, mask):
        """h [B, L, Dh] float, mask [B, L] int -> z0 [B, K, Dz] float32."""
        return self.encoder(h, mask)

    def denoise(self, z_t, t, self_cond):
        """z_t [B, K, Dz], t [B], self_cond [B, K, Dz] -> x0_hat [B, K, Dz] float32."""
        return self.denoiser(z_t, t, self_cond)

    def decode_hidden(self, z):
        """z [B, K, Dz] -> h_hat [B, L, Dh] float32."""
        return self.latent_decoder(z)

    def decode_tokens(self, h_hat, mask=None):
        """h_hat [B, L, Dh], mask [B, L] or None -> logits [B, L, V] float32."""
        return self.token_decoder(h_hat, mask)

    def __call__(self, h, mask):
        """Touches every network once (used by init): returns (z0, x0_hat, h_hat, logits)."""
        z0 = self.encode(h, mask)
        t = jnp.full((h.shape[0],), 0.5, jnp.float32)
        x0_hat = self.denoise(z0, t, z0)
        h_hat = self.decode_hidden(z0)
        return z0, x0_hat, h_hat, self.decode_tokens(h_hat, mask)


class LDLM:
    """The LDLM container: config, frozen_lm, networks, schedule, and pure functions of params.

    Args:
      config: the locked, validated ConfigDict.
      frozen_lm: a FrozenLM (ldlm_jax.frozen_lm); may be None if lm_dim and vocab_size are given
        (e.g. for abstract parameter counting).
      platform: the backend the programs are compiled for ('tpu', 'cpu', 'gpu'; default
        jax.default_backend()): picks the attention kernel for config.model.attention. An
        ahead-of-time compile for a TPU slice from a CPU host passes 'tpu'.
    """

    def __init__(
        self,
        config,
        frozen_lm=None,
        *,
        lm_dim: int | None = None,
        vocab_size=None,
        platform: str | None = None,
    ):
        self.config = config
        self.frozen_lm = frozen_lm
        if frozen_lm is not None:
            lm_dim, vocab_size = frozen_lm.hidden_size, frozen_lm.vocab_size
        if lm_dim is None or vocab_size is None:
            raise ValueError("LDLM needs a frozen_lm, or lm_dim and vocab_size")
        self.lm_dim, self.vocab_size = int(lm_dim), int(vocab_size)
        self.seq_len = config.data.seq_len
        self.num_latents = latent_count(config)
        self.latent_dim = config.model.latent_dim
        platform = platform or jax.default_backend()
        self.attention_kernel = resolve_kernel(config.model.attention, platform)
        self.networks = LDLMNetworks(config, self.lm_dim, self.vocab_size, self.attention_kernel)
        self.schedule = schedule_from_config(config)

    def _init_boxed(self, rng):
        h = jnp.zeros((1, self.seq_len, self.lm_dim), jnp.float32)
        mask = jnp.ones((1, self.seq_len), jnp.int32)
        return self.networks.init({"params": rng}, h, mask)["params"]

    def init_params(self, rng, unbox: bool = True):
        """Trainable params: {'encoder', 'denoiser', 'latent_decoder', 'token_decoder'} pytree of
        param_dtype arrays (unboxed), or nn.LogicallyPartitioned boxes with unbox=False.
        Works under jax.eval_shape (abstract init, no allocation)."""
        boxed = self._init_boxed(rng)
        return nn.meta.unbox(boxed) if unbox else boxed

    def abstract_params(self):
        """ShapeDtypeStruct pytree of the trainable params (no allocation)."""
        return jax.eval_shape(self.init_params, jax.random.PRNGKey(0))

    def logical_axes(self):
        """PartitionSpec pytree of logical axis names, matching init_params' structure."""
        return nn.get_partition_spec(jax.eval_shape(self._init_boxed, jax.random.PRNGKey(0)))

    def hidden(self, frozen_params, hidden_stats_dict, input_ids, attention_mask):
        """Normalised frozen-LM hidden states, [B, L, Dh] float32, no gradient.

        hidden_stats_dict: {'mean': [Dh], 'std': [Dh]} or None (then h is not normalised; so too
        when config.frozen_lm.normalize is off)."""
        h = self.frozen_lm.hidden_states(
            frozen_params,
            input_ids,
            attention_mask,
            int(self.config.frozen_lm.layer),
            attention_kernel=self.attention_kernel,
        )
        if self.config.frozen_lm.normalize and hidden_stats_dict is not None:
            mean = jnp.asarray(hidden_stats_dict["mean"], jnp.float32)
            std = jnp.asarray(hidden_stats_dict["std"], jnp.float32)
            h = (h - mean) / std
        return jax.lax.stop_gradient(h)

    def encode(self, params, h, mask):
        """h [B, L, Dh], mask [B, L] -> z0 [B, K, Dz] float32."""
        return self.networks.apply({"params": params}, h, mask, method=LDLMNetworks.encode)

    def noise(self, z0, t, eps):
        """z_t = alpha_t z0 + sigma_t eps; z0, eps [B, K, Dz], t [B] -> [B, K, Dz] float32."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        return alpha[:, None, None] * z0 + sigma[:, None, None] * eps

    def denoise(self, params, z_t, t, self_cond=None):
        """x0_hat [B, K, Dz] float32 from z_t [B, K, Dz], t [B], self_cond [B, K, Dz] (None = 0)."""
        if self_cond is None:
            self_cond = jnp.zeros_like(z_t)
        return self.networks.apply(
            {"params": params}, z_t, t, self_cond, method=LDLMNetworks.denoise
        )

    def decode_hidden(self, params, z):
        """z [B, K, Dz] -> h_hat [B, L, Dh] float32 (no decoder noise: that is training only)."""
        return self.networks.apply({"params": params}, z, method=LDLMNetworks.decode_hidden)

    def decode_tokens(self, params, h_hat, mask=None):
        """h_hat [B, L, Dh], mask [B, L] or None -> logits [B, L, V] float32."""
        return self.networks.apply(
            {"params": params}, h_hat, mask, method=LDLMNetworks.decode_tokens
        )

    def reconstruct(self, params, h, mask):
        """Autoencoder round trip without any noise: logits [B, L, V] of D_tok(D_lat(E(h)))."""
        return self.decode_tokens(
            params, self.decode_hidden(params, self.encode(params, h, mask)), mask
        )

    def denoise_fn(self, params):
        """The samplers' callable: (z_t [B,K,D], t [B], self_cond [B,K,D]) -> x0_hat [B,K,D]."""
        return lambda z_t, t, self_cond: self.denoise(params, z_t, t, self_cond)

    def loss(
        self,
        params,
        frozen_params,
        hidden_stats_dict,
        batch,
        rng,
        step,
        adaptive_state=None,
        train: bool = True,
    ):
        """The LDLM training loss; pure, jittable, differentiable w.r.t. params only.

        Args:
          params: trainable params (init_params).
          frozen_params: the frozen LM's params (gets no gradient).
          hidden_stats_dict: {'mean', 'std'} [Dh] for normalising h, or None.
          batch: {'input_ids' int32 [B, L], 'attention_mask' int32 [B, L]}; an optional
            'hidden' [B, L, Dh] float32 holds precomputed normalised hidden states (the frozen LM
            is then not run).
          rng: PRNG key. step: int scalar (gamma warmup). adaptive_state: the adaptive sampler's
            state (None or timestep_sampler='uniform': t ~ U(0, 1)).
          train: decoder-input noise and the self-conditioning coin only when True.
        Returns:
          (total loss f32 scalar, aux) with aux = {'metrics': {name: f32 scalar}, 't': [B],
          'per_example_diffusion_loss': [B]}.
        """
        if "hidden" in batch:
            h = jax.lax.stop_gradient(jnp.asarray(batch["hidden"], jnp.float32))
        else:
            h = self.hidden(
                frozen_params, hidden_stats_dict, batch["input_ids"], batch["attention_mask"]
            )
        return self.loss_from_hidden(params, h, batch, rng, step, adaptive_state, train)

    def loss_from_hidden(self, params, h, batch, rng, step, adaptive_state=None, train=True):
        """`loss` on given normalised hidden states h [B, L, Dh] float32."""
        c = self.config
        ids, mask = batch["input_ids"], batch["attention_mask"]
        rng_t, rng_eps, rng_sc, rng_dec = jax.random.split(rng, 4)
        batch_size = ids.shape[0]

        z0 = self.encode(params, h, mask)
        g = gamma_warmup.gamma(step, c)
        z0g = gamma_warmup.scale_encoder_gradient(z0, g)

        t = adaptive_timesteps.timesteps_from_config(c, adaptive_state, rng_t, (batch_size,))
        eps = jax.random.normal(rng_eps, z0.shape, jnp.float32)
        z_t = self.noise(z0g, t, eps)

        p = c.diffusion.self_cond_prob
        zeros = jnp.zeros_like(z_t)
        if train:
            use_sc = jax.random.uniform(rng_sc, ()) < p
        else:
            use_sc = jnp.asarray(p > 0)

        def first_pass(_):
            return jax.lax.stop_gradient(self.denoise(params, z_t, t, zeros))

        self_cond = jax.lax.cond(use_sc, first_pass, lambda _: zeros, None)
        x0_hat = self.denoise(params, z_t, t, self_cond)
        diffusion_loss, per_example = losses.diffusion_loss(x0_hat, z0g)

        z_dec = losses.decoder_input(z0, c.recipe.decoder_noise, rng_dec, train)
        h_hat = self.decode_hidden(params, z_dec)
        hidden_mse = losses.hidden_mse(h_hat, h, mask)
        if c.recipe.decoder_loss == "mse":
            logits = self.decode_tokens(params, jax.lax.stop_gradient(h_hat), mask)
            token_loss, token_accuracy = losses.token_cross_entropy(logits, ids, mask)
            decoder_loss = hidden_mse
            total_token = token_loss
        else:  # 'ce': the token CE is the decoder loss, end to end
            logits = self.decode_tokens(params, h_hat, mask)
            token_loss, token_accuracy = losses.token_cross_entropy(logits, ids, mask)
            decoder_loss = token_loss
            total_token = jnp.float32(0.0)

        w = c.loss_weights
        total = w.diffusion * diffusion_loss + w.hidden * decoder_loss + w.token * total_token
        metrics = {
            "loss": total,
            "diffusion_loss": diffusion_loss,
            "hidden_loss": decoder_loss,
            "hidden_mse": hidden_mse,
            "token_loss": token_loss,
            "token_accuracy": token_accuracy,
            "gamma": g,
            "latent_std": losses.latent_std(z0),
            "latent_rms": jnp.sqrt(jnp.mean(jax.lax.stop_gradient(z0) ** 2)),
            "self_cond": use_sc.astype(jnp.float32),
            "t_mean": jnp.mean(t),
        }
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        aux = {
            "metrics": metrics,
            "t": t,
            "per_example_diffusion_loss": jax.lax.stop_gradient(per_example),
        }
        return total, aux

    def sample_step(self, params, z_t, t, s, self_cond, rng, temperature: float = 1.0):
        """One ancestral (DDPM posterior) reverse step from time t to s < t.

        z_s ~ q(z_s | z_t, x0 = x0_hat) (returns x0_hat at s = 0); ldlm_jax/samplers.py has the
        Euler-Maruyama and ODE samplers.
        Args:
          z_t [B, K, D] f32; t, s [B] f32; self_cond [B, K, D] f32 (previous x0_hat or zeros).
        Returns:
          (z_s [B, K, D] f32, x0_hat [B, K, D] f32).
        """
        x0_hat = self.denoise(params, z_t, t, self_cond)
        a_t, s_t = self.schedule.alpha_sigma(t)
        a_s, s_s = self.schedule.alpha_sigma(s)
        a_ts = a_t / jnp.maximum(a_s, 1e-12)
        var_ts = jnp.maximum(s_t**2 - a_ts**2 * s_s**2, 0.0)
        st2 = jnp.maximum(s_t**2, 1e-12)
        coef_z, coef_x = a_ts * s_s**2 / st2, a_s * var_ts / st2
        std = jnp.sqrt(var_ts * s_s**2 / st2) * temperature

        def col(x):
            return x[:, None, None]

        noise = jax.random.normal(rng, z_t.shape, jnp.float32)
        z_s = col(coef_z) * z_t + col(coef_x) * x0_hat + col(std) * noise
        return z_s, x0_hat


def count_params(tree) -> int:
    """Number of scalars in a (possibly abstract) params pytree."""
    return int(sum(int(x.size) for x in jax.tree.leaves(tree)))
