"""Plain SVG bar charts for docs/BENCHMARKS.md (no plotting library to install): one horizontal bar
per case, or a group of bars per case (e.g. p50 and p99)."""

from html import escape

COLORS = ["#2b7a4b", "#d98c1f", "#3c6fb0", "#a33b3b"]


def bars(path, title, unit, labels, series):
    """`series`: {name: [value per label]}; several names draw grouped bars with a legend."""
    names = list(series)
    label_w, bar_h, gap, chart_w = 330, 14, 10, 420
    group_h = bar_h * len(names) + gap
    top = 40 + (18 if len(names) > 1 else 0)
    height = top + group_h * len(labels) + 30
    peak = max((v for vs in series.values() for v in vs if v == v), default=1) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + chart_w + 90}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>']
    if len(names) > 1:
        x = label_w
        for i, n in enumerate(names):
            out.append(f'<rect x="{x}" y="32" width="12" height="12" fill="{COLORS[i % len(COLORS)]}"/>')
            out.append(f'<text x="{x + 16}" y="43">{escape(n)}</text>')
            x += 20 + 8 * len(n)
    for gi, label in enumerate(labels):
        y0 = top + gi * group_h
        out.append(f'<text x="{label_w - 8}" y="{y0 + group_h / 2}" text-anchor="end" '
                   f'dominant-baseline="middle">{escape(label)}</text>')
        for si, n in enumerate(names):
            v = series[n][gi]
            if v != v:  # NaN: not measured
                continue
            w = max(1, v / peak * chart_w)
            y = y0 + si * bar_h
            out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                       f'fill="{COLORS[si % len(COLORS)]}"/>')
            text = f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 4}">{text} {escape(unit)}</text>')
    out.append(f'<line x1="{label_w}" y1="{top - 4}" x2="{label_w}" y2="{height - 24}" stroke="#888"/>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
