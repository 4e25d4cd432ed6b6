"""Learning curves: AP (and heatmap PCK) against training minutes, read from a run's ``log.jsonl``.

Training writes one ``{"kind": "val", "minutes": ..., "AP": ..., "heatmap_pck": ...}`` record per validation
(``grmpose.train``); :func:`learning_curve` collects them, :func:`write_learning_curve` writes them as
JSON and, when matplotlib is installed, as a PNG plot.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def learning_curve(log_path: str | Path) -> list[dict]:
    """The validation points of a run: ``[{"minutes", "step", "AP", "AP50", "heatmap_pck"}, ...]`` in
    log order (``heatmap_pck`` is None where the run did not measure it).

    ``minutes`` is the training time (the time budget's clock) when the validation started.
    """
    points = []
    for line in Path(log_path).read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "val" and "AP" in record:
            points.append({key: record.get(key) for key in ("minutes", "step", "AP", "AP50", "heatmap_pck")})
    return points


def write_learning_curve(
    points: list[dict],
    json_path: str | Path,
    png_path: str | Path | None,
    title: str,
    goal: float | None = None,
) -> Path | None:
    """Write the points as JSON and plot AP (and AP50, and the heatmap PCK when every point has
    them) against minutes; returns the PNG path (or None when matplotlib is missing or there are no
    points)."""
    Path(json_path).write_text(
        json.dumps({"title": title, "goal_AP": goal, "points": points}, indent=2) + "\n"
    )
    if png_path is None or not points:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: learning curve written as JSON only (%s)", json_path)
        return None
    minutes = [p["minutes"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(minutes, [p["AP"] for p in points], "o-", label="AP")
    if all(p.get("AP50") is not None for p in points):
        ax.plot(minutes, [p["AP50"] for p in points], "s--", alpha=0.7, label="AP50")
    if all(p.get("heatmap_pck") is not None for p in points):
        ax.plot(minutes, [p["heatmap_pck"] for p in points], "^-.", alpha=0.8, label="heatmap PCK (given the person)")
    if goal is not None:
        ax.axhline(goal, color="grey", linestyle=":", label=f"goal AP {goal:g}")
    ax.set_xlabel("training minutes (this CPU)")
    ax.set_ylabel("held-out set: OKS AP, PCK")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return Path(png_path)
