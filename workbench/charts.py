"""Plotly figures of the workbench: token heatmaps, training curves, reward-vs-length scatter.

What it is: pure functions from plain Python data (lists, dicts) to ``plotly`` figures;
no Streamlit, no torch, so they are easy to test and reuse in notebooks.

What it leaves out: reading runs and models (pages and ``workbench.components`` do that).

    fig = token_heatmap(["Hello", " world"], {"toxicity": [0.0, -0.3], "total": [0.0, -0.3]})
"""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go
from plotly.colors import qualitative

from workbench.limits import TOKEN_LABELS_UP_TO

_HEIGHT_PER_ROW = 34
PALETTE = list(qualitative.Plotly) + list(qualitative.Dark2)
"""run colours: a run keeps its colour on every chart (``workbench.components.run_colours``)"""
SCALE_RATIO = 5.0
"""two groups of runs (e.g. DPO and SimPO) whose values differ more than this in size get an axis each"""


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


def token_heatmap(tokens: list[str], rows: dict[str, list[float]], title: str = "", per_row_scale: bool = False,
                  scales: dict[str, float | None] | None = None) -> go.Figure:
    """One row per named series (reward component, KL, value, ...), one cell per response token.

    tokens: T token strings; rows: name -> T values (missing values drawn empty).
    Colours share one symmetric scale (rewards in the same units stay comparable), or with
    ``per_row_scale`` each row is scaled by its own max |value| (KL, values and log-probs
    differ by orders of magnitude). With ``scales`` (name -> stated scale s, e.g.
    ``core.rewards.scales.colour_scale``), each row is drawn on its own fixed [-s, s], so a
    small value stays pale however large it is next to the others (a row without a scale
    falls back to its own max). Hover always shows the row, the token index, the token
    text and the exact value.
    """
    names = list(rows)
    T = len(tokens)
    values = [[_finite(v) for v in (list(rows[n]) + [None] * T)[:T]] for n in names]
    labels = [show_token(t) for t in tokens]
    custom = [[[labels[t], "" if row[t] is None else f"{row[t]:.5g}"] for t in range(T)] for row in values]
    if scales is not None:
        z = []
        for name, row in zip(names, values):
            m = scales.get(name) or max((abs(v) for v in row if v is not None), default=0.0) or 1.0
            z.append([None if v is None else max(-1.0, min(1.0, v / m)) for v in row])
        bound, colorbar = 1.0, {"thickness": 12, "len": 1.0, "title": {"text": "÷ stated scale", "side": "right"}}
    elif per_row_scale:
        z = []
        for row in values:
            m = max((abs(v) for v in row if v is not None), default=0.0) or 1.0
            z.append([None if v is None else v / m for v in row])
        bound, colorbar = 1.0, {"thickness": 12, "len": 1.0, "title": {"text": "÷ row max", "side": "right"}}
    else:
        z = values
        flat = [abs(v) for r in z for v in r if v is not None]
        bound = max(flat) if flat and max(flat) > 0 else 1.0
        colorbar = {"thickness": 12, "len": 1.0}
    fig = go.Figure(
        go.Heatmap(
            z=z, x=list(range(T)), y=names, customdata=custom, colorscale="RdBu", zmid=0.0,
            zmin=-bound, zmax=bound, xgap=1 if T <= TOKEN_LABELS_UP_TO else 0, ygap=1, colorbar=colorbar,
            hovertemplate="<b>%{y}</b><br>token %{x}: '%{customdata[0]}'<br>value %{customdata[1]}<extra></extra>",
        )
    )
    if T <= TOKEN_LABELS_UP_TO:
        fig.update_xaxes(tickmode="array", tickvals=list(range(T)), ticktext=labels, tickangle=-60, tickfont={"size": 10})
        bottom = 80
    else:  # a label per token would be unreadable (and slow to lay out): token indices; the text is on hover
        fig.update_xaxes(title_text="token index (hover for the token)", tickfont={"size": 10})
        bottom = 40
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=title or None, height=120 + _HEIGHT_PER_ROW * max(len(names), 1),
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": bottom},
    )
    return fig


def coloured_text_html(tokens: list[str], values: list[float], bound: float | None = None,
                       segment_ends: set[int] | None = None, marks: list[list[tuple[str, str]]] | None = None) -> str:
    """The response as text, each token's background coloured by its value (red < 0 < blue), the value on hover.

    Readable at any length. bound: the stated scale s (``core.rewards.scales``): |value| >= s
    is full colour and the opacity grows linearly from 0, so a value near 0 stays near the
    neutral (white) background. None scales to the data's max |value| (with a faint floor,
    so every non-zero token shows): only for values that have no stated scale.
    segment_ends: token indices where a reward segment ends, marked with a bar after the token.
    marks: per token, (css colour, label) of the human spans it lies in (``components.span_marks``): the token is
    underlined in the first span's colour and every label is added to its hover text.
    """
    vals = [_finite(v) for v in values] + [None] * max(0, len(tokens) - len(values))
    stated = bound is not None and bound > 0
    if not stated:
        bound = max((abs(v) for v in vals if v is not None), default=0.0) or 1.0
    out = []
    ends = segment_ends or set()
    for i, (tok, v) in enumerate(zip(tokens, vals)):
        text = html.escape(str(tok))
        bar = "border-right:2px solid #555;" if i in ends else ""
        here = marks[i] if marks and i < len(marks) else []
        if here:  # a human span: underlined in its category's colour, its labels on hover
            bar += f"border-bottom:3px solid {here[0][0]};"
            labels = " · ".join(label for _, label in here)
            attrs = f' data-span="{html.escape(labels)}"'
        else:
            labels, attrs = "", ""
        if v is None or v == 0.0:
            hover = f' title="{html.escape(labels)}"' if labels else ""
            out.append(f'<span style="{bar}"{hover}{attrs}>{text}</span>' if bar else text)
            continue
        alpha = min(abs(v) / bound, 1.0) * 0.85 if stated else min(abs(v) / bound, 1.0) * 0.75 + 0.1
        rgb = "33,102,172" if v > 0 else "178,24,43"
        hover = html.escape(f"{v:.5g}" + (f" · {labels}" if labels else ""))
        out.append(f'<span style="{bar}background:rgba({rgb},{alpha:.3f})" title="{hover}"{attrs}>{text}</span>')
    return '<div style="line-height:1.7;white-space:pre-wrap">' + "".join(out) + "</div>"


def _size(points: list[tuple[float, float]]) -> float:
    return max((abs(v) for _, v in points), default=0.0)


def curves(series: dict[str, list[tuple[float, float]]], metric: str, height: int = 300, *, names: dict | None = None,
           colours: dict | None = None, groups: dict | None = None, legend: bool = True) -> go.Figure:
    """Several runs of one metric: key -> [(step, value), ...], one line per key.

    names: key -> legend label (default: the key); colours: key -> colour (keep a run's colour
    the same on every chart); groups: key -> group name (e.g. "DPO", "SimPO"): when there are
    two groups whose values differ in size by more than SCALE_RATIO, the second gets its own
    y axis on the right, so neither is drawn as a flat line. The legend sits above the plot,
    horizontal, clear of the axis titles.
    """
    names, colours, groups = names or {}, colours or {}, groups or {}
    clean = {k: [(s, _finite(v)) for s, v in pts if _finite(v) is not None] for k, pts in series.items()}
    clean = {k: pts for k, pts in clean.items() if pts}
    order = list(dict.fromkeys(groups.get(k, "") for k in clean))
    right = None
    if len(order) == 2:
        sizes = [max((_size(p) for k, p in clean.items() if groups.get(k, "") == g), default=0.0) for g in order]
        small, large = min(sizes), max(sizes)
        if large > 0 and (small == 0 or large / small > SCALE_RATIO):
            right = order[1]
    fig = go.Figure()
    steps = set()
    for key, pts in clean.items():
        steps.update(p[0] for p in pts)
        on_right = right is not None and groups.get(key, "") == right
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=names.get(key, key),
                                 line={"color": colours[key]} if key in colours else None,
                                 marker={"color": colours[key]} if key in colours else None,
                                 yaxis="y2" if on_right else "y", legendgroup=key))
    if len(steps) <= 12:
        fig.update_xaxes(dtick=1)  # few steps: integer ticks only
    shown = legend and len(clean) > 1
    top = 36 + (22 * len(clean) if shown else 0)  # room for one legend row per run between the title and the plot
    fig.update_layout(
        title={"text": metric, "x": 0.0, "xanchor": "left", "yref": "container", "y": 1.0, "yanchor": "top", "pad": {"t": 10}},
        height=height + (top - 36), margin={"l": 10, "r": 10, "t": top, "b": 10}, xaxis_title="step", showlegend=shown,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0.0},
    )
    if right is not None:
        fig.update_layout(yaxis={"title": {"text": f"{order[0]} (left)"}},
                          yaxis2={"title": {"text": f"{right} (right)"}, "overlaying": "y", "side": "right", "showgrid": False})
    return fig


def metric_series(rows: list[dict], metric: str) -> list[tuple[float, float]]:
    """[(step, value)] of ``metric`` from run-store metric rows (rows without it are skipped)."""
    return [(r["step"], r[metric]) for r in rows if metric in r and _finite(r[metric]) is not None]


def length_scatter(points: list[dict]) -> go.Figure:
    """Implicit reward against response length: points have length, reward, kind (which reward, shown in the legend), which."""
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
        height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10}, title="implicit reward vs response length", showlegend=True,
        xaxis_title="response length (tokens)", yaxis_title="implicit reward",
    )
    return fig
