"""The ablation study's report: results.json (ldlm_jax/ablation.py) -> a markdown table and the
frontier plot (generative perplexity against mean unigram entropy, one line per arm).

Numbers are means over seeds, with the standard deviation when there is more than one seed. The
LDLM arms form one line each over the sampler step counts; the autoregressive baseline (ancestral
sampling, one point) and the held-out reference text are single markers.
"""

from __future__ import annotations

import math

import numpy as np


def _stat(values) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


def _fmt(values, digits: int = 2) -> str:
    mean, std, n = _stat(values)
    if n == 0:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _point(result: dict, steps) -> dict:
    return next((p for p in result["frontier"] if p["steps"] == steps), {})


def arm_points(runs: dict) -> list[dict]:
    """{seed: result} -> one dict per sampler step count with seed-mean gen_ppl / entropy."""
    first = next(iter(runs.values()))
    out = []
    for p in first["frontier"]:
        ppl = [_point(r, p["steps"]).get("gen_ppl") for r in runs.values()]
        ent = [_point(r, p["steps"]).get("entropy") for r in runs.values()]
        out.append({"steps": p["steps"], "gen_ppl": _stat(ppl)[0], "entropy": _stat(ent)[0]})
    return out


def _train_metric(runs: dict, name: str) -> list:
    return [(r.get("train") or {}).get("final_metrics", {}).get(name) for r in runs.values()]


def _relative_diffusion(runs: dict) -> list:
    out = []
    for r in runs.values():
        m = (r.get("train") or {}).get("final_metrics", {})
        if m.get("diffusion_loss") is not None and m.get("latent_rms"):
            out.append(m["diffusion_loss"] / m["latent_rms"] ** 2)
    return out


def _real_tokens(summary: dict) -> str:
    counts = [
        (r.get("train") or {}).get("real_tokens")
        for runs in summary["arms"].values()
        for r in runs.values()
    ]
    counts = [c for c in counts if c]
    return f"{counts[0]:,}" if counts else "n/a"


def markdown(summary: dict) -> str:
    """The study's tables as markdown."""
    st = summary["study"]
    steps_list = st["sampler_steps"]
    scorer = summary.get("scorer_info") or {}
    held = scorer.get("heldout_teacher_forced", {})
    lines = [
        "# LDLM recipe ablation",
        "",
        f"- base config `{' '.join([st['config'], *st['overrides']])}`; seeds {st['seeds']}",
        f"- budget per arm: {summary['steps_per_arm']} steps = {summary['tokens_per_arm']:,} "
        f"token positions (batch x seq_len, pads included; {_real_tokens(summary)} real tokens); "
        "the same batches for every arm",
        f"- budget-scaled: gamma warmup {st['warmup_fraction']} of the steps, lr warmup "
        f"{st['lr_warmup_fraction']}, weight-EMA horizon {st['ema_fraction']}",
        f"- samples per point: {st['num_samples']}; sampler: the config's (EMA weights); "
        "entropy in nats (mean per-sample unigram entropy, special tokens removed)",
        f"- scorer: GPT-2 {tuple(scorer.get('size', ()))} ({scorer.get('params', 0):,} params), "
        f"{(scorer.get('train') or {}).get('steps', '?')} steps on the training split; its "
        f"teacher-forced held-out PPL {held.get('ppl', float('nan')):.1f}",
    ]
    unk = sum(
        p.get("unk_texts", 0)
        for runs in summary["arms"].values()
        for r in runs.values()
        for p in r["frontier"]
    )
    if unk:
        lines.append(f"- samples scored with [UNK] after retokenisation (all arms): {unk}")
    lines.append("")
    head = [
        "arm",
        "decoder loss",
        "gamma warmup",
        "t",
        "sigma_dec",
        "recon acc",
        "diff loss / rms^2",
        "latent std",
    ]
    for s in steps_list:
        head += [f"PPL@{s}", f"H@{s}"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    singles = []
    for name, runs in summary["arms"].items():
        first = next(iter(runs.values()))
        if first["kind"] != "ldlm":
            singles.append((name, runs))
            continue
        r = first["recipe"]
        warm = f"on ({r['gamma_warmup_steps']})" if r["gamma_warmup"] else "off"
        row = [
            name,
            r["decoder_loss"],
            warm,
            r["timestep_sampler"],
            f"{r['decoder_noise']:g}",
            _fmt([x["reconstruction_accuracy"] for x in runs.values()], 3),
            _fmt(_relative_diffusion(runs), 3),
            _fmt(_train_metric(runs, "latent_std"), 3),
        ]
        for s in steps_list:
            row.append(_fmt([_point(x, s).get("gen_ppl") for x in runs.values()], 1))
            row.append(_fmt([_point(x, s).get("entropy") for x in runs.values()], 2))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| single-point rows | gen PPL | entropy H | note |", "|---|---|---|---|"]
    for name, runs in singles:
        pts = [x["frontier"][0] for x in runs.values()]
        self_ppl = [(x.get("heldout_teacher_forced") or {}).get("ppl") for x in runs.values()]
        note = f"ancestral, T=1; own teacher-forced held-out PPL {_fmt(self_ppl, 1)} ([SEP] incl.)"
        lines.append(
            f"| {name} | {_fmt([p['gen_ppl'] for p in pts], 1)} | "
            f"{_fmt([p['entropy'] for p in pts])} | {note} |"
        )
    ref = summary["reference"]
    lines.append(
        f"| reference (held-out verses) | {ref['gen_ppl']:.1f} | {ref['entropy']:.2f} | "
        f"{ref['num_samples']} verses |"
    )
    return "\n".join(lines) + "\n"


def write_markdown(summary: dict, path: str) -> None:
    with open(path, "w") as f:
        f.write(markdown(summary))


def plot(summary: dict, png_path: str) -> None:
    """Gen PPL (log) against entropy: a line per LDLM arm over the step counts, markers for the
    autoregressive baseline and the reference text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for name, runs in summary["arms"].items():
        pts = [p for p in arm_points(runs) if math.isfinite(p["gen_ppl"])]
        if not pts:
            continue
        xs, ys = [p["entropy"] for p in pts], [p["gen_ppl"] for p in pts]
        if next(iter(runs.values()))["kind"] != "ldlm":
            ax.plot(xs, ys, "*", markersize=14, label=f"{name} (ancestral)")
            continue
        (line,) = ax.plot(xs, ys, "o-", label=name)
        for p, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(
                str(p["steps"]),
                (x, y),
                textcoords="offset points",
                xytext=(3, 3),
                fontsize=7,
                color=line.get_color(),
            )
    ref = summary["reference"]
    if math.isfinite(ref["gen_ppl"]):
        ax.plot([ref["entropy"]], [ref["gen_ppl"]], "kX", markersize=10, label="held-out text")
    ax.set_yscale("log")
    ax.set_xlabel("mean unigram entropy (nats)")
    ax.set_ylabel("generative perplexity (AR scorer)")
    ax.set_title(f"LDLM ablation, {summary['steps_per_arm']} steps per arm (labels: sampler steps)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
