"""Draws the score distributions of ham and spam as an SVG histogram (no plotting library:
the README's picture must build offline).

    python3 bench/plot_scores.py SCORES OUT.svg

SCORES has one line per message: `spam|ham SCORE VERDICT` (as bench/detection.sh writes).
"""
import sys

LOW, HIGH, STEP = -6.0, 20.0, 0.5
W, H, PAD = 720, 300, 40


def main():
    scores = {"ham": [], "spam": []}
    for line in open(sys.argv[1]):
        kind, score, _ = line.split()
        scores[kind].append(min(max(float(score), LOW), HIGH - 1e-9))
    bins = int((HIGH - LOW) / STEP)
    counts = {k: [0] * bins for k in scores}
    for k, values in scores.items():
        for v in values:
            counts[k][int((v - LOW) / STEP)] += 1
    top = max(max(c) for c in counts.values()) or 1
    bw = (W - 2 * PAD) / bins

    def x(v):
        return PAD + (v - LOW) / (HIGH - LOW) * (W - 2 * PAD)

    def y(n):
        return H - PAD - (n / top) ** 0.5 * (H - 2 * PAD)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
    ]
    colours = {"ham": "#2b7bba", "spam": "#d9412b"}
    for k in ("ham", "spam"):
        for i, n in enumerate(counts[k]):
            if n:
                out.append(
                    f'<rect x="{PAD + i * bw:.1f}" y="{y(n):.1f}" width="{bw:.1f}" '
                    f'height="{H - PAD - y(n):.1f}" fill="{colours[k]}" fill-opacity="0.55"/>'
                )
    out.append(f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="black"/>')
    for v in range(int(LOW), int(HIGH) + 1, 2):
        out.append(f'<text x="{x(v):.1f}" y="{H - PAD + 14}" text-anchor="middle">{v}</text>')
    t = x(6.0)
    out.append(f'<line x1="{t:.1f}" y1="{PAD - 10}" x2="{t:.1f}" y2="{H - PAD}" stroke="black" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{t + 4:.1f}" y="{PAD - 12}">spam threshold 6</text>')
    out.append(f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">score (clipped to {LOW:g}..{HIGH:g}; height: square root of the count)</text>')
    for i, k in enumerate(("ham", "spam")):
        out.append(f'<rect x="{W - PAD - 150}" y="{PAD + i * 16}" width="10" height="10" fill="{colours[k]}"/>')
        out.append(
            f'<text x="{W - PAD - 135}" y="{PAD + 9 + i * 16}">{"easy-ham-2" if k == "ham" else "spam-2"} '
            f'({len(scores[k])})</text>'
        )
    out.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out) + "\n")


main()
