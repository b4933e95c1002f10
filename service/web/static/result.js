// Rendering a finished job: the verdict, the annotated video, one card per face, the JSON download.
//
// Everything the service sent is put in the page as text (textContent, attributes), never as HTML,
// so a warning or a model name cannot inject markup.

import { mediaUrl } from "./api.js";
import { DEFAULT_WIDTH, byModel, drawTimeline, modelColour } from "./timeline.js";

/** A DOM element: h("p", {class: "x"}, "text", child, ...). */
export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function percent(p) {
  return typeof p === "number" ? `${(p * 100).toFixed(1)} %` : "—";
}

function seconds(value) {
  return `${value.toFixed(2)} s`;
}

const VERDICT_TEXT = {
  FAKE: "Likely manipulated",
  REAL: "No manipulation found",
  NO_FACE: "No face found",
};

function verdictBlock(result) {
  const prediction = result.prediction;
  return h("div", { class: `verdict verdict-${prediction.toLowerCase()}`, id: "verdict", "data-prediction": prediction },
    h("p", { class: "verdict-label" }, h("strong", {}, prediction), " — ", VERDICT_TEXT[prediction] || ""),
    h("p", { class: "verdict-score" },
      prediction === "NO_FACE" ? "No face track to score." :
        `P(fake) of the most suspicious face: ${percent(result.df_probability)} (threshold ${percent(result.threshold)})`),
  );
}

function modelTable(caption, rows, models, withItems) {
  return h("table", { class: "scores" },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Model"), h("th", { scope: "col" }, "P(fake)"),
      withItems ? h("th", { scope: "col" }, "Items") : null)),
    h("tbody", {}, rows.map(([name, score]) => h("tr", {},
      h("th", { scope: "row" }, h("span", { class: "swatch", "data-colour": modelColour(models, name) }), name),
      h("td", {}, percent(score.score)),
      withItems ? h("td", {}, score.items ?? "—") : null,
    ))),
  );
}

function videoFacts(video) {
  return h("dl", { class: "facts" },
    h("dt", {}, "Size"), h("dd", {}, `${video.width} × ${video.height}`),
    h("dt", {}, "Duration"), h("dd", {}, `${seconds(video.duration_s)} at ${video.fps.toFixed(2)} fps`),
    h("dt", {}, "Frames analysed"), h("dd", {}, `${video.frames_analyzed} of ${video.frames}`),
  );
}

function timelineBlock(face, result, models, title) {
  const timeline = Array.isArray(face.timeline) ? face.timeline : [];
  const groups = byModel(timeline);
  if (!groups.size) return h("p", { class: "muted" }, "No timeline for this face.");
  const label = `${title}: score over time for ${[...groups.keys()].join(", ")}`;
  const draw = (width) => drawTimeline(timeline, {
    duration: result.video.duration_s, threshold: result.threshold, models, label, width,
  });
  const plot = draw(DEFAULT_WIDTH); // redrawn at its real width once shown (below)
  const legend = h("ul", { class: "legend" }, [...groups.keys()].map((model) =>
    h("li", {}, h("span", { class: "swatch", "data-colour": modelColour(models, model) }), model)),
  h("li", {}, h("span", { class: "swatch threshold-swatch" }), "threshold"));
  // the same numbers as a table, for screen readers and for reading exact values
  const data = h("details", { class: "timeline-data" }, h("summary", {}, "Timeline data"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Model", "From", "To", "P(fake)"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, timeline.map((span) => h("tr", {}, h("td", {}, span.model), h("td", {}, seconds(span.start_s)),
        h("td", {}, seconds(span.end_s)), h("td", {}, percent(span.score)))))));
  const figure = h("figure", { class: "timeline" }, plot, h("figcaption", {}, legend), data);
  redrawAtWidth(figure, draw);
  return figure;
}

/** Redraw the figure's plot whenever its width changes (shown, window resized, phone rotated). */
function redrawAtWidth(figure, draw) {
  if (typeof ResizeObserver !== "function") return; // the default drawing scales with its viewBox
  let drawnWidth = 0;
  new ResizeObserver(([entry]) => {
    const width = Math.round(entry.contentRect.width);
    if (width < 1 || width === drawnWidth) return; // hidden, or nothing changed
    drawnWidth = width;
    figure.querySelector("svg.timeline-plot").replaceWith(draw(width));
  }).observe(figure);
}

/** A face card; its thumbnail and heat map are fetched afterwards (they need the key header). */
function faceCard(face, index, result, models, jobId) {
  const fps = result.video.fps || 0;
  const title = `Face ${index + 1}`;
  const span = fps ? ` (${seconds(face.first_frame / fps)} – ${seconds(face.last_frame / fps)})` : "";
  const thumbnail = h("img", { class: "thumbnail", alt: `${title}, as detected`, width: 112, height: 112, hidden: true });
  const heatmap = h("figure", { class: "heatmap", hidden: true },
    h("img", { alt: `${title}: heat map of the regions that drove the score` }),
    h("figcaption", {}, "Heat map"));
  const card = h("li", { class: "face-card", "data-track": face.track_id },
    h("article", { "aria-labelledby": `face-${face.track_id}-title` },
      h("header", { class: "face-head" }, thumbnail,
        h("div", {},
          h("h3", { id: `face-${face.track_id}-title` }, title),
          h("p", { class: "face-score" }, `P(fake) ${percent(face.score)}`),
          h("p", { class: "muted" }, `Track ${face.track_id}, frames ${face.first_frame}–${face.last_frame}${span}`))),
      modelTable(`Scores of ${title.toLowerCase()} per model`, Object.entries(face.models), models, true),
      timelineBlock(face, result, models, title),
      heatmap,
    ));
  loadImage(thumbnail, `jobs/${jobId}/faces/${face.track_id}.jpg`, thumbnail);
  loadImage(heatmap.querySelector("img"), `jobs/${jobId}/heatmaps/${face.track_id}.png`, heatmap);
  return card;
}

async function loadImage(img, url, shown) {
  try {
    const src = await mediaUrl(url);
    if (!src) return; // this face has none: the element stays hidden
    img.src = src;
    shown.hidden = false;
  } catch {
    shown.hidden = true; // a thumbnail that failed to load is not worth an error banner
  }
}

async function loadVideo(video, note, jobId) {
  note.textContent = "Loading the annotated video…";
  try {
    const src = await mediaUrl(`jobs/${jobId}/annotated.mp4`);
    if (!src) {
      note.textContent = "The service made no annotated video for this job.";
      return;
    }
    video.src = src;
    video.hidden = false;
    note.textContent = "";
  } catch (error) {
    note.textContent = `The annotated video could not be loaded: ${error.message}`;
  }
}

/** Fill the result section (elements by id in index.html) from a done job. */
export function renderResult(result, jobId) {
  const models = Object.keys(result.models || {}).sort();
  document.getElementById("verdict").replaceWith(verdictBlock(result));
  document.getElementById("video-models").replaceChildren(
    modelTable("Video score per model", Object.entries(result.models || {}), models, false), videoFacts(result.video));

  const warnings = document.getElementById("warnings");
  warnings.replaceChildren(...(result.warnings || []).map((text) => h("li", {}, text)));
  warnings.hidden = !warnings.children.length;

  const download = document.getElementById("download-json");
  if (download.href.startsWith("blob:")) URL.revokeObjectURL(download.href);
  download.href = URL.createObjectURL(new Blob([JSON.stringify(result, null, 2)], { type: "application/json" }));
  download.download = `deepfake-${jobId}.json`;

  const faces = document.getElementById("faces");
  faces.replaceChildren(...(result.faces || []).map((face, i) => faceCard(face, i, result, models, jobId)));
  document.getElementById("faces-heading").textContent = `Faces (${(result.faces || []).length})`;

  const video = document.getElementById("annotated");
  video.hidden = true;
  video.removeAttribute("src");
  loadVideo(video, document.getElementById("video-note"), jobId);
  paintSwatches(document.getElementById("result"));
}

/** Swatch colours come from data-colour: set as a style property (allowed by the page's CSP). */
export function paintSwatches(root) {
  for (const swatch of root.querySelectorAll(".swatch[data-colour]")) swatch.style.backgroundColor = swatch.dataset.colour;
}
