#!/usr/bin/python3
"""Renders a run's metrics.jsonl to PNG plots, with Debian's python3-matplotlib.

    scripts/plot_metrics.py RUN_DIR_OR_METRICS_JSONL [--out DIR]

Writes into DIR (default: the run directory):
  training.png    loss (and validation loss), learning rate, gradient norm, tokens/s, with the
                  skipped, spiking and non-finite steps marked
  expert_load.png one heat map per MoE layer: tokens per expert (rows) per logged step (columns),
                  as a share of the layer's tokens in that step
Exits 1 with a one-line message when the file is missing or holds no metrics.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    rows = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    print(f"plot_metrics: {path}:{n}: not JSON, skipped", file=sys.stderr)
    except OSError as e:
        sys.exit(f"plot_metrics: cannot read {path}: {e.strerror}")
    if not rows:
        sys.exit(f"plot_metrics: {path} holds no metrics")
    return path, rows


def series(rows, key):
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def training_plot(rows, out):
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    ax.plot(*series(rows, "loss"), ".-", label="train loss")
    vs, vl = series(rows, "val_loss")
    if vs:
        ax.plot(vs, vl, "o-", label="val loss")
    # Steps where the health monitor intervened (counters grow between logged steps).
    for key, color, name in (("loss_spikes", "orange", "loss spike"),
                             ("bad_steps", "red", "non-finite step")):
        prev = 0
        marked = False
        for r in rows:
            if r.get(key, 0) > prev:
                ax.axvline(r["step"], color=color, alpha=0.5, label=None if marked else name)
                marked = True
            prev = r.get(key, prev)
    ax.set_title("loss (nats/token)")
    ax.legend()
    axes[0][1].plot(*series(rows, "lr"), ".-")
    axes[0][1].set_title("learning rate")
    axes[1][0].plot(*series(rows, "grad_norm"), ".-")
    axes[1][0].set_yscale("log")
    axes[1][0].set_title("gradient norm (before clipping)")
    axes[1][1].plot(*series(rows, "tokens_per_s"), ".-")
    axes[1][1].set_title("tokens/s")
    for a in axes.flat:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def load_plot(rows, out):
    with_load = [r for r in rows if r.get("expert_load")]
    if not with_load:
        return False
    layers = len(with_load[0]["expert_load"])
    fig, axes = plt.subplots(layers, 1, figsize=(12, 2.5 * layers), squeeze=False)
    steps = [r["step"] for r in with_load]
    for layer in range(layers):
        grid = []
        for r in with_load:
            counts = r["expert_load"][layer]
            total = max(sum(counts), 1)
            grid.append([c / total for c in counts])
        columns = list(map(list, zip(*grid)))  # experts x steps
        ax = axes[layer][0]
        im = ax.imshow(columns, aspect="auto", interpolation="nearest", cmap="viridis",
                       extent=[steps[0] - 0.5, steps[-1] + 0.5, len(columns) - 0.5, -0.5])
        ax.set_ylabel(f"layer {layer}\nexpert")
        fig.colorbar(im, ax=ax, label="share of tokens")
    axes[-1][0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("metrics", help="a run directory or its metrics.jsonl")
    p.add_argument("--out", help="directory for the PNG files (default: next to metrics.jsonl)")
    args = p.parse_args()
    path, rows = load(args.metrics)
    out = args.out or os.path.dirname(os.path.abspath(path))
    os.makedirs(out, exist_ok=True)
    training_plot(rows, os.path.join(out, "training.png"))
    written = [os.path.join(out, "training.png")]
    if load_plot(rows, os.path.join(out, "expert_load.png")):
        written.append(os.path.join(out, "expert_load.png"))
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
