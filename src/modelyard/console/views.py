"""Formatting helpers for the console's pages (pure functions: numbers, sizes, charts as SVG)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from html import escape
from typing import Any


def human_count(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}".replace(".0" + unit, unit)
    return str(value)


def human_bytes(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def short_time(value: Any) -> str:
    if not isinstance(value, str):
        return "—"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M")


def spec_card(spec: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The readable lines of a model's spec (the chat template is shown apart)."""
    if not spec:
        return []
    rows: list[tuple[str, str]] = []

    def add(label: str, value: Any) -> None:
        if value is not None and value != "":
            rows.append((label, str(value)))

    add("Architecture", spec.get("family"))
    add("Checkpoint", spec.get("checkpoint_model_name"))
    add("Parameters", human_count(spec.get("base_num_parameters")) if spec.get("base_num_parameters") else None)
    add("Context length", f"{spec['context_size']:,} tokens" if spec.get("context_size") else None)
    if spec.get("num_layers"):
        add("Layers", f"{spec['num_layers']} × hidden {spec.get('hidden_size')}, "
                      f"{spec.get('num_attention_heads')} heads ({spec.get('num_kv_heads')} KV)")
    add("Vocabulary", f"{spec['vocab_size']:,}" if spec.get("vocab_size") else None)
    add("Precision", spec.get("precision"))
    if spec.get("moe_config"):
        moe = spec["moe_config"]
        add("Mixture of experts", f"{moe.get('num_experts')} experts, top-{moe.get('num_experts_per_tok')}")
    add("Chat model", {True: "yes", False: "no"}.get(spec.get("is_chat")))
    return rows


# -- usage charts -------------------------------------------------------------------------------------

_W, _H, _PAD = 320, 120, 28
SERIES_COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea")


def _parse(start: str) -> float:
    try:
        return datetime.fromisoformat(start).timestamp()
    except ValueError:
        return 0.0


def svg_chart(title: str, points: list[tuple[float, dict[str, float | None]]], series: list[str]) -> str:
    """A small line chart (one line per series, a dot per point) as inline SVG: no library, no script."""
    xs = [x for x, _ in points]
    values = [v for _, row in points for s in series if (v := row.get(s)) is not None]
    top = max(values) if values else 0.0
    top = top if top > 0 else 1.0
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span = (x1 - x0) or 1.0
    inner_w, inner_h = _W - _PAD - 8, _H - _PAD

    def px(x: float) -> float:
        return _PAD + (inner_w * (x - x0) / span if len(xs) > 1 else inner_w / 2)

    def py(y: float) -> float:
        return 8 + inner_h - inner_h * y / top

    parts = [f'<svg class="chart" viewBox="0 0 {_W} {_H + 14}" role="img" aria-label="{escape(title)}">',
             f'<line x1="{_PAD}" y1="{8 + inner_h}" x2="{_W - 8}" y2="{8 + inner_h}" class="axis"/>',
             f'<line x1="{_PAD}" y1="8" x2="{_PAD}" y2="{8 + inner_h}" class="axis"/>',
             f'<text x="{_PAD - 3}" y="14" text-anchor="end" class="tick">{escape(human_count(round(top, 1)))}</text>',
             f'<text x="{_PAD - 3}" y="{8 + inner_h}" text-anchor="end" class="tick">0</text>']
    for i, name in enumerate(series):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        coords = [(px(x), py(row[name])) for x, row in points if row.get(name) is not None]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for x, y in coords:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>')
        parts.append(f'<text x="{_PAD + 4 + i * 80}" y="{_H + 10}" class="legend" fill="{colour}">'
                     f'{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def usage_charts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: four charts over time (requests and errors, tokens, p50/p95 latency) and totals."""
    by_model: dict[str, dict[float, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        model = str(row.get("model"))
        start = _parse(str(row.get("start", "")))
        slot = by_model[model].setdefault(start, {"requests": 0, "errors": 0, "prompt": 0, "completion": 0,
                                                  "p50": None, "p95": None})
        slot["requests"] += int(row.get("requests") or 0)
        slot["errors"] += int(row.get("errors") or 0)
        slot["prompt"] += int(row.get("prompt_tokens") or 0)
        slot["completion"] += int(row.get("completion_tokens") or 0)
        latency = row.get("latency_ms") or {}
        for key in ("p50", "p95"):
            if latency.get(key) is not None:
                slot[key] = max(slot[key] or 0.0, float(latency[key]))
    charts = []
    for model in sorted(by_model):
        points = sorted(by_model[model].items())
        series_points = [(x, {"requests": s["requests"], "errors": s["errors"],
                              "prompt tokens": s["prompt"], "completion tokens": s["completion"],
                              "p50 ms": s["p50"], "p95 ms": s["p95"]}) for x, s in points]
        charts.append({
            "model": model,
            "requests": sum(s["requests"] for _, s in points),
            "errors": sum(s["errors"] for _, s in points),
            "tokens": sum(s["prompt"] + s["completion"] for _, s in points),
            "svgs": [
                ("Requests and errors", svg_chart("requests and errors", series_points, ["requests", "errors"])),
                ("Tokens", svg_chart("tokens", series_points, ["prompt tokens", "completion tokens"])),
                ("Latency (ms)", svg_chart("latency", series_points, ["p50 ms", "p95 ms"])),
            ],
        })
    return charts
