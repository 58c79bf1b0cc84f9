"""ldlm_jax: LDLM, the Latent Diffusion Language Model, trained jointly with its latent space.

A frozen pretrained LM gives hidden states h; the encoder turns them into latents z0; the denoiser
learns continuous diffusion on z0; the latent decoder maps latents back to h_hat, and the token
decoder maps h_hat to tokens. README.md has the commands; the method is in LDLM_SPEC.md.
"""

__version__ = "0.1.0"
