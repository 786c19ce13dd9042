"""curves.png from metrics.jsonl: the reward and each of its components over the RL steps, plus KL and length;
validation.png: held-out accuracy of each saved checkpoint, one line per run."""
from __future__ import annotations

from pathlib import Path

from src.grpo.run_log import read_metrics

PANELS = (
    ("reward", "mean reward (weighted total)"),
    ("reward/format", "format reward"),
    ("reward/accuracy", "accuracy reward"),
    ("reward/reasoning", "reasoning reward"),
    ("reward/length", "length reward"),
    ("kl", "KL to the reference (k3)"),
    ("completion_length", "completion length (tokens)"),
    ("frac_zero_std", "groups with equal rewards"),
)


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (shorter at the start), so the curve keeps every step."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # optional: the `plot` extra
        raise ImportError("plots need matplotlib: pip install -e '.[plot]'") from error
    return plt


def save(plt, fig, out_path: str | Path) -> Path:
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def plot_curves(metrics_path: str | Path, out_path: str | Path, title: str = "", window: int = 10) -> Path:
    plt = pyplot()
    records = read_metrics(metrics_path)
    panels = [(key, label) for key, label in PANELS if any(key in r for r in records)]
    fig, axes = plt.subplots(2, (len(panels) + 1) // 2, figsize=(3.2 * ((len(panels) + 1) // 2), 5.6), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        steps = [r["step"] for r in records if key in r]
        values = [r[key] for r in records if key in r]
        ax.plot(steps, values, color="0.75", linewidth=0.8)
        ax.plot(steps, moving_average(values, window), color="C0", linewidth=1.8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title or str(metrics_path), fontsize=10)
    return save(plt, fig, out_path)


def plot_validation(curves: dict[str, dict[int, float]], chosen: dict[str, int], out_path: str | Path,
                    title: str) -> Path:
    """One line per run: the share of validation questions answered right (%) at each saved step,
    step 0 being the model RL started from; a star marks the step each run chose."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (label, curve) in enumerate(curves.items()):
        steps = sorted(curve)
        line, = ax.plot(steps, [100 * curve[s] for s in steps], marker="o", markersize=3, linewidth=1.2,
                        label=label, color=f"C{i % 10}")
        ax.plot([chosen[label]], [100 * curve[chosen[label]]], marker="*", markersize=11, color=line.get_color())
    ax.set_xlabel("RL step (0: the warm start)", fontsize=9)
    ax.set_ylabel("validation answers right (%)", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return save(plt, fig, out_path)
