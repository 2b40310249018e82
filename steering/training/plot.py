"""Training curves as a PNG (matplotlib, an optional dependency: `pip install 'tinymorph[plot]'`)."""

from __future__ import annotations

import io

from steering.errors import TinymorphError


def require_matplotlib() -> None:
    """Fail early (before a long training run) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise TinymorphError("Training curves need matplotlib: pip install 'tinymorph[plot]'.") from None


def curves_png(history: list[dict[str, float]], title: str = "") -> bytes:
    """Loss, FVU, L0 and dead fraction against training tokens, as PNG bytes."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not history:
        raise TinymorphError("No training history to plot.")
    tokens = [p["tokens"] for p in history]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    for ax, key, name in zip(axes.flat, ("loss", "fvu", "l0", "dead"),
                             ("loss", "FVU", "L0 (active latents per token)", "dead fraction"), strict=True):
        ax.plot(tokens, [p[key] for p in history], lw=1.2)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if key in ("loss", "fvu"):
            ax.set_yscale("log")
    for ax in axes[1]:
        ax.set_xlabel("training tokens")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
