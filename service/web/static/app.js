// The page's controller: submit a URL or a file as a job, follow its progress, show the result.
//
// Jobs (POST jobs, GET jobs/{id}, DELETE jobs/{id}) rather than POST /predict: the analysis takes
// from seconds to minutes, a job reports how far it got, and the page can cancel it.

import { ApiError, requestJson, storeKey, storedKey, submitFile, submitUrl, request } from "./api.js";
import { renderResult } from "./result.js";

const UPLOAD_PATH = "jobs/upload"; // multipart field "file" (service/api/routes/jobs.py)
const POLL_MS = 700;
const FINISHED = new Set(["done", "failed", "cancelled"]);

const $ = (id) => document.getElementById(id);

let current = null; // {jobId, abortUpload, stopped}: the one job this page follows

function show(section, visible) {
  $(section).hidden = !visible;
}

function showError(message) {
  $("error").textContent = message;
  show("error", Boolean(message));
  if (message) $("error").focus();
}

function setBusy(busy) {
  for (const button of document.querySelectorAll("[data-submit]")) button.disabled = busy;
  $("cancel").disabled = !busy;
}

// Announced through aria-live: only when the words change (a stage, a tenth of the work), so a
// screen reader is not read a new number every poll.
let lastAnnounced = "";
function setProgress(stage, fraction, detail = "") {
  const bar = $("progress-bar");
  if (typeof fraction === "number") {
    bar.value = Math.max(0, Math.min(1, fraction));
    bar.textContent = `${Math.round(bar.value * 100)} %`;
  } else {
    bar.removeAttribute("value"); // indeterminate
  }
  $("progress-stage").textContent = `${stage}${detail ? ` — ${detail}` : ""}`;
  const spoken = typeof fraction === "number" ? `${stage}, ${Math.floor(fraction * 10) * 10} percent` : stage;
  if (spoken !== lastAnnounced) {
    $("progress-text").textContent = spoken;
    lastAnnounced = spoken;
  }
}

function stageDetail(progress) {
  if (!progress) return "";
  const parts = [];
  if (typeof progress.done === "number" && typeof progress.total === "number" && progress.total > 0) {
    parts.push(`${progress.done} of ${progress.total}`);
  }
  if (typeof progress.fraction === "number") parts.push(`${Math.round(progress.fraction * 100)} %`);
  return parts.join(", ");
}

function begin() {
  showError("");
  show("result", false);
  show("progress", true);
  setBusy(true);
  lastAnnounced = "";
}

function finish(message) {
  setBusy(false);
  if (message) setProgress(message, undefined);
  current = null;
}

/** Poll the job until it finishes or `state` is stopped (Cancel, or a newer job took over). */
async function follow(state, job) {
  state.jobId = job.job_id;
  if (state.stopped) {
    // Cancel was pressed while the job was being submitted: it exists now, so cancel it too
    await request(`jobs/${encodeURIComponent(job.job_id)}`, { method: "DELETE" }).catch(() => {});
    return;
  }
  setProgress("Queued", 0);
  while (!state.stopped) {
    let status;
    try {
      status = await requestJson(`jobs/${encodeURIComponent(job.job_id)}`);
    } catch (error) {
      if (state.stopped) return;
      finish("Stopped");
      showError(`Could not follow the job: ${error.message}`);
      return;
    }
    if (state.stopped) return;
    const progress = status.progress || {};
    const stage = status.status === "queued" ? "Queued" : progress.stage ? `Running: ${progress.stage}` : "Running";
    if (!FINISHED.has(status.status)) {
      setProgress(stage, progress.fraction, stageDetail(progress));
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      continue;
    }
    if (status.status === "done") {
      setProgress("Done", 1);
      finish();
      renderResult(status.result, status.job_id);
      show("result", true);
      $("verdict-heading").focus();
    } else if (status.status === "failed") {
      finish("Failed");
      const error = status.error || {};
      showError(`The analysis failed: ${error.error || "error"}${error.detail ? `: ${typeof error.detail === "string" ? error.detail : JSON.stringify(error.detail)}` : ""}`);
    } else {
      finish("Cancelled");
    }
    return;
  }
}

function failedToStart(error) {
  finish("Not started");
  showError(error instanceof ApiError || error instanceof Error ? error.message : String(error));
  if (error instanceof ApiError && error.status === 401) {
    $("key-box").open = true;
    $("api-key").focus();
  }
}

async function analyseUrl(event) {
  event.preventDefault();
  const url = $("video-url").value.trim();
  if (!url || current) return;
  const state = (current = { stopped: false });
  begin();
  setProgress("Submitting", undefined);
  try {
    await follow(state, await submitUrl(url));
  } catch (error) {
    if (!state.stopped) failedToStart(error);
  }
}

async function analyseFile(file) {
  if (!file || current) return;
  const state = (current = { stopped: false });
  begin();
  setProgress("Uploading", 0, file.name);
  const upload = submitFile(UPLOAD_PATH, file, (fraction) => {
    if (!state.stopped) setProgress("Uploading", fraction, file.name);
  });
  state.abortUpload = upload.abort;
  try {
    const job = await upload.promise;
    state.abortUpload = null;
    await follow(state, job);
  } catch (error) {
    if (!state.stopped) failedToStart(error); // an upload aborted by Cancel is no error
  }
}

async function cancel() {
  const state = current;
  if (!state) return;
  state.stopped = true;
  if (state.abortUpload) state.abortUpload();
  if (state.jobId) {
    try {
      await request(`jobs/${encodeURIComponent(state.jobId)}`, { method: "DELETE" });
    } catch (error) {
      showError(`Could not cancel the job: ${error.message}`);
    }
  }
  finish("Cancelled");
}

function wireDropZone() {
  const zone = $("drop-zone");
  const input = $("video-file");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault(); // allows the drop
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (!file) return;
    input.files = event.dataTransfer.files; // the chosen-file label shows what was dropped
    showChosen();
    analyseFile(file);
  });
  input.addEventListener("change", showChosen);
}

function showChosen() {
  const file = $("video-file").files[0];
  $("chosen-file").textContent = file ? `Chosen: ${file.name} (${size(file.size)})` : "No file chosen";
}

function size(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1e3))} kB`;
}

function wireKey() {
  const input = $("api-key");
  input.value = storedKey();
  $("key-state").textContent = storedKey() ? "A key is kept for this tab." : "No key set.";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    storeKey(input.value.trim());
    $("key-state").textContent = input.value.trim() ? "Key saved for this tab." : "No key set.";
  });
  $("forget-key").addEventListener("click", () => {
    input.value = "";
    storeKey("");
    $("key-state").textContent = "Key forgotten.";
  });
}

async function showHealth() {
  // /healthcheck is open without a key; it says whether the models are loaded yet
  const line = $("health");
  try {
    const response = await fetch("healthcheck");
    const body = await response.json();
    line.textContent = body.healthy ? "Service ready." : `Service not ready: ${body.reason || "models loading"}.`;
    line.dataset.healthy = String(Boolean(body.healthy));
  } catch {
    line.textContent = "Service not reachable.";
    line.dataset.healthy = "false";
  }
}

$("url-form").addEventListener("submit", analyseUrl);
$("file-form").addEventListener("submit", (event) => {
  event.preventDefault();
  analyseFile($("video-file").files[0]);
});
$("cancel").addEventListener("click", cancel);
wireDropZone();
wireKey();
showHealth();
