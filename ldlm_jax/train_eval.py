"""Periodic evaluation during training: held-out loss and a few decoded samples.

Every train.eval_every steps the trainer calls Evaluator.run, which
- computes the training losses on train.eval_batches held-out batches with the EMA params
  (logged as 'eval/<name>' in metrics.jsonl and TensorBoard), and
- writes WORKDIR/samples_step_<N>.jsonl: config.train.eval_samples texts sampled from noise with
  the config's sampler (ldlm_jax.generation / samplers); when the samplers are not available, or
  the run spans several processes, autoencoder reconstructions of held-out sequences instead.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from ldlm_jax import metrics_logging, train_feed
from ldlm_jax import sharding as shd
from ldlm_jax.train_step import make_eval_step

log = logging.getLogger(__name__)


class Evaluator:
    """Held-out loss and samples at eval steps (all processes call run; process 0 writes).

    Args:
      config, model (LDLM), mesh, rules (sharding.rules_table), workdir, logger (MetricsLogger).
    """

    def __init__(self, config, model, mesh, rules, workdir: str, logger):
        self.config, self.model, self.mesh = config, model, mesh
        self.workdir = metrics_logging.epath.Path(workdir)
        self.logger = logger
        self.sharding = shd.batch_sharding(mesh, rules)
        self._eval_step = None
        self._reconstruct = None
        self._generator = None

    def _with_rules(self, fn):
        """fn traced under the config's activation rules (the trainer sets the mesh)."""
        return shd.with_activation_rules(fn, self.config.logical_axis_rules)

    def _eval_batches(self):
        c = self.config
        iterator = train_feed.make_eval_iterator(
            c, self.model.frozen_lm.tokenizer, jax.process_index(), jax.process_count()
        )
        if iterator is None:
            return []
        batches = []
        for _ in range(max(int(c.train.eval_batches), 0)):
            try:
                local = next(iterator)
            except StopIteration:
                break
            batches.append(train_feed.to_global(local, self.sharding, c.train.batch_size))
        return batches

    def _losses(self, state, frozen_params, stats, batches) -> dict[str, float]:
        if self._eval_step is None:
            step = make_eval_step(self.model.loss, use_ema=True)
            self._eval_step = jax.jit(self._with_rules(step))
        totals: dict[str, float] = {}
        for i, batch in enumerate(batches):
            rng = jax.random.PRNGKey(1000 + i)  # the same noise at every eval
            metrics = jax.device_get(self._eval_step(state, batch, frozen_params, stats, rng))
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) / len(batches)
        return totals

    def _sampled(self, state, frozen_params, stats, step: int) -> list[dict]:
        from ldlm_jax import generation

        c = self.config
        gen = generation.Generator(
            config=c,
            ldlm=self.model,
            params=state.ema_params if c.sampler.use_ema else state.params,
            frozen_params=frozen_params,
            hidden_stats=stats,
            adaptive_state=state.adaptive_state,
            mesh=self.mesh,
            step=step,
            weights="ema" if c.sampler.use_ema else "raw",
        )
        if self._generator is not None:
            gen._cache = self._generator._cache  # reuse the compiled sampler
        self._generator = gen
        return generation.generate(
            gen,
            num=int(c.train.eval_samples),
            steps=int(c.sampler.steps),
            sampler=c.sampler.name,
            seed=step,
            time_grid=c.sampler.time_grid,
            t_min=float(c.sampler.t_min),
            temperature=float(c.sampler.temperature),
            self_cond=bool(c.sampler.self_cond),
            progress=False,
        )

    def _reconstructions(self, state, frozen_params, stats, batch) -> list[dict]:
        model = self.model
        if self._reconstruct is None:

            def rec(params, frozen_params, stats, ids, mask):
                h = model.hidden(frozen_params, stats, ids, mask)
                return jnp.argmax(model.reconstruct(params, h, mask), axis=-1)

            rec = self._with_rules(rec)
            self._reconstruct = jax.jit(rec, out_shardings=shd.replicated(self.mesh))
        ids = self._reconstruct(
            state.ema_params, frozen_params, stats, batch["input_ids"], batch["attention_mask"]
        )
        ids = np.asarray(jax.device_get(ids))
        mask = np.asarray(
            jax.device_get(
                jax.jit(lambda x: x, out_shardings=shd.replicated(self.mesh))(
                    batch["attention_mask"]
                )
            )
        )
        tok = model.frozen_lm.tokenizer
        out = []
        for i in range(min(int(self.config.train.eval_samples), len(ids))):
            row = ids[i][mask[i].astype(bool)].tolist()
            out.append(
                {
                    "index": i,
                    "kind": "reconstruction",
                    "text": tok.decode(row, skip_special_tokens=True),
                    "token_ids": row,
                }
            )
        return out

    def run(self, step: int, state, frozen_params, stats) -> dict[str, float]:
        """Eval losses (returned and logged) and samples_step_<step>.jsonl."""
        batches = self._eval_batches()
        metrics = self._losses(state, frozen_params, stats, batches) if batches else {}
        if metrics:
            self.logger.write(step, metrics, prefix="eval/")
        samples = []
        try:
            if jax.process_count() == 1 and self.config.train.eval_samples > 0:
                samples = self._sampled(state, frozen_params, stats, step)
        except ImportError as error:  # the samplers workstream's module is not there
            log.info("sampling unavailable (%s): writing reconstructions", error)
        if not samples and batches:
            samples = self._reconstructions(state, frozen_params, stats, batches[0])
        if samples:
            metrics_logging.write_jsonl(self.workdir / f"samples_step_{step}.jsonl", samples)
            self.logger.write_text(step, "samples", "\n\n".join(s["text"] for s in samples))
        return metrics
