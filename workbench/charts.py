"""Plotly figures of the workbench: token heatmaps, training curves, reward-vs-length scatter.

What it is: pure functions from plain Python data (lists, dicts) to ``plotly`` figures;
no Streamlit, no torch, so they are easy to test and reuse in notebooks.

What it leaves out: reading runs and models (pages and ``workbench.components`` do that).

    fig = token_heatmap(["Hello", " world"], {"toxicity": [0.0, -0.3], "total": [0.0, -0.3]})
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

_HEIGHT_PER_ROW = 34


def _finite(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def show_token(tok: str) -> str:
    """A token as a readable label: spaces as '·', newlines as '⏎', empty as '∅'."""
    if tok is None or tok == "":
        return "∅"
    return str(tok).replace("\n", "⏎").replace(" ", "·")


def token_heatmap(tokens: list[str], rows: dict[str, list[float]], title: str = "", per_row_scale: bool = False) -> go.Figure:
    """One row per named series (reward component, KL, value, ...), one cell per response token.

    tokens: T token strings; rows: name -> T values (missing values drawn empty).
    Colours share one symmetric scale (rewards in the same units stay comparable), or with
    ``per_row_scale`` each row is scaled by its own max |value| (KL, values and log-probs
    differ by orders of magnitude). Hover always shows the row, the token index, the token
    text and the exact value.
    """
    names = list(rows)
    T = len(tokens)
    values = [[_finite(v) for v in (list(rows[n]) + [None] * T)[:T]] for n in names]
    labels = [show_token(t) for t in tokens]
    custom = [[[labels[t], "" if row[t] is None else f"{row[t]:.5g}"] for t in range(T)] for row in values]
    if per_row_scale:
        z = []
        for row in values:
            m = max((abs(v) for v in row if v is not None), default=0.0) or 1.0
            z.append([None if v is None else v / m for v in row])
        bound, colorbar = 1.0, {"thickness": 12, "title": {"text": "÷ row max"}}
    else:
        z = values
        flat = [abs(v) for r in z for v in r if v is not None]
        bound = max(flat) if flat and max(flat) > 0 else 1.0
        colorbar = {"thickness": 12}
    fig = go.Figure(
        go.Heatmap(
            z=z, x=list(range(T)), y=names, customdata=custom, colorscale="RdBu", zmid=0.0,
            zmin=-bound, zmax=bound, xgap=1, ygap=1, colorbar=colorbar,
            hovertemplate="<b>%{y}</b><br>token %{x}: '%{customdata[0]}'<br>value %{customdata[1]}<extra></extra>",
        )
    )
    fig.update_xaxes(tickmode="array", tickvals=list(range(T)), ticktext=labels, tickangle=-60, tickfont={"size": 10})
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=title or None, height=120 + _HEIGHT_PER_ROW * max(len(names), 1),
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 80},
    )
    return fig


def curves(series: dict[str, list[tuple[float, float]]], metric: str, height: int = 300) -> go.Figure:
    """Several runs of one metric on the same axes: label -> [(step, value), ...]."""
    fig = go.Figure()
    steps = set()
    for label, points in series.items():
        pts = [(s, _finite(v)) for s, v in points if _finite(v) is not None]
        if not pts:
            continue
        steps.update(p[0] for p in pts)
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=label))
    if len(steps) <= 12:
        fig.update_xaxes(dtick=1)  # few steps: integer ticks only
    fig.update_layout(
        title=metric, height=height, margin={"l": 10, "r": 10, "t": 36, "b": 10},
        xaxis_title="step", legend={"orientation": "h", "y": -0.25}, showlegend=len(series) > 1,
    )
    return fig


def metric_series(rows: list[dict], metric: str) -> list[tuple[float, float]]:
    """[(step, value)] of ``metric`` from run-store metric rows (rows without it are skipped)."""
    return [(r["step"], r[metric]) for r in rows if metric in r and _finite(r[metric]) is not None]


def length_scatter(points: list[dict]) -> go.Figure:
    """Implicit reward against response length: points have length, reward, kind ("DPO: sum" / "SimPO: average"), which."""
    fig = go.Figure()
    for kind in sorted({p["kind"] for p in points}):
        sel = [p for p in points if p["kind"] == kind]
        fig.add_trace(
            go.Scatter(
                x=[p["length"] for p in sel], y=[p["reward"] for p in sel], mode="markers", name=kind,
                customdata=[p.get("which", "") for p in sel],
                hovertemplate="%{customdata}<br>length %{x} tokens<br>implicit reward %{y:.4f}<extra>" + kind + "</extra>",
            )
        )
    fig.update_layout(
        height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10}, title="implicit reward vs response length",
        xaxis_title="response length (tokens)", yaxis_title="implicit reward",
    )
    return fig
