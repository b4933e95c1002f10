// The timeline plot: each model's score over the face's time in the video, as inline SVG.
//
// Drawn here rather than with a charting library so the page loads nothing from outside and needs
// no build step. A model's timeline is a list of spans [{model, start_s, end_s, score}] (one per clip
// or scored frame window): each span is a horizontal stroke over the seconds it covers, and a line
// joins the spans' midpoints so a trend is visible. The threshold is a dashed line. The caller draws
// it at the width it is shown at (viewBox width = CSS pixels), so its text stays readable on a phone
// instead of shrinking with a desktop-sized drawing.

const SVG = "http://www.w3.org/2000/svg";
export const DEFAULT_WIDTH = 640;
const HEIGHT = 220;
const PAD = { left: 44, right: 12, top: 12, bottom: 34 };

// Okabe-Ito: colours told apart with the common colour-vision deficiencies.
export const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];

/** The same colour for a model in every card: by its place among the result's models. */
export function modelColour(models, name) {
  const index = models.indexOf(name);
  return PALETTE[(index < 0 ? models.length : index) % PALETTE.length];
}

function element(name, attributes = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Tick values for 0..max seconds: about five, on a 1-2-5 step. */
export function timeTicks(max) {
  if (!(max > 0)) return [0];
  const rough = max / 5;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= rough);
  const ticks = [];
  for (let t = 0; t <= max + step * 1e-6; t += step) ticks.push(Number(t.toFixed(6)));
  return ticks;
}

/** Spans grouped by model, each group in time order. */
export function byModel(timeline) {
  const groups = new Map();
  for (const span of timeline) {
    if (typeof span.score !== "number") continue;
    if (!groups.has(span.model)) groups.set(span.model, []);
    groups.get(span.model).push(span);
  }
  for (const spans of groups.values()) spans.sort((a, b) => a.start_s - b.start_s);
  return groups;
}

/**
 * The plot as an <svg> element. `duration` is the x range in seconds (the video's), `threshold` the
 * decision threshold, `models` the result's model names (for colours), `label` the accessible name,
 * `width` the drawing's width in CSS pixels.
 */
export function drawTimeline(timeline, { duration, threshold, models, label, width = DEFAULT_WIDTH }) {
  const WIDTH = Math.max(240, Math.round(width));
  const groups = byModel(timeline);
  const end = Math.max(duration || 0, ...timeline.map((span) => span.end_s || 0));
  const x = (seconds) => PAD.left + (end > 0 ? (seconds / end) * (WIDTH - PAD.left - PAD.right) : 0);
  const y = (score) => PAD.top + (1 - score) * (HEIGHT - PAD.top - PAD.bottom);

  const svg = element("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "timeline-plot", role: "img", "aria-label": label,
    preserveAspectRatio: "xMidYMid meet",
  });
  const axes = element("g", { class: "axes" });
  for (const score of [0, 0.25, 0.5, 0.75, 1]) {
    axes.append(element("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(score), y2: y(score), class: "grid" }));
    axes.append(element("text", { x: PAD.left - 6, y: y(score) + 4, "text-anchor": "end" }, score.toFixed(2)));
  }
  for (const t of timeTicks(end)) {
    axes.append(element("line", { x1: x(t), x2: x(t), y1: HEIGHT - PAD.bottom, y2: HEIGHT - PAD.bottom + 4, class: "tick" }));
    axes.append(element("text", { x: x(t), y: HEIGHT - PAD.bottom + 16, "text-anchor": "middle" }, `${t}`));
  }
  axes.append(element("text", { x: WIDTH - PAD.right, y: HEIGHT - 4, "text-anchor": "end" }, "seconds"));
  axes.append(element("line", {
    x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: HEIGHT - PAD.bottom, class: "axis",
  }));
  axes.append(element("line", {
    x1: PAD.left, x2: WIDTH - PAD.right, y1: HEIGHT - PAD.bottom, y2: HEIGHT - PAD.bottom, class: "axis",
  }));
  svg.append(axes);

  if (typeof threshold === "number") {
    svg.append(element("line", {
      x1: PAD.left, x2: WIDTH - PAD.right, y1: y(threshold), y2: y(threshold), class: "threshold",
    }));
  }

  for (const [model, spans] of groups) {
    const colour = modelColour(models, model);
    const series = element("g", { class: "series", "data-model": model, stroke: colour, fill: colour });
    const trend = spans.map((span, i) => `${i ? "L" : "M"}${x((span.start_s + span.end_s) / 2).toFixed(1)},${y(span.score).toFixed(1)}`);
    if (spans.length > 1) series.append(element("path", { d: trend.join(" "), class: "trend" }));
    for (const span of spans) {
      // a span at least 2 px wide, so a single frame's score is still visible
      const left = x(span.start_s);
      const right = Math.max(x(span.end_s), left + 2);
      series.append(element("path", { d: `M${left.toFixed(1)},${y(span.score).toFixed(1)} H${right.toFixed(1)}`, class: "span" }));
      const dot = element("circle", { cx: ((left + right) / 2).toFixed(1), cy: y(span.score).toFixed(1), r: 3.5 });
      dot.append(element("title", {}, `${model}: ${span.score.toFixed(3)} at ${span.start_s.toFixed(2)}–${span.end_s.toFixed(2)} s`));
      series.append(dot);
    }
    svg.append(series);
  }
  return svg;
}
