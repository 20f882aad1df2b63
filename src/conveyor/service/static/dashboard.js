// The conveyor dashboard: polls the service's own JSON API once a second and redraws.
// Short polling rather than server-sent events: hypercorn on trio does not notice closed
// connections (pgjones/hypercorn#210), so an open event stream could outlive its tab.
// Lists carry bounded previews of payloads, results and errors; a job's whole document is
// fetched only when its detail is opened, so one huge result cannot freeze the page.
"use strict";

const REFRESH_MS = 1000;
const FINISHED = new Set(["completed", "failed", "cancelled"]);
// The server refuses a state-changing request authenticated by the cookie unless it proves it
// comes from this page: a page of another origin cannot add this header.
const CSRF_HEADER = "X-Conveyor-Request";

async function api(path, options) {
  const response = await fetch(path, {
    credentials: "same-origin",
    ...options,
    headers: { [CSRF_HEADER]: "dashboard", ...(options && options.headers) },
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error(body && body.detail ? body.detail : `HTTP ${response.status} on ${path}`);
  }
  return body;
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : String(child ?? ""));
  }
  return node;
}

function time(seconds) {
  return seconds == null ? "–" : new Date(seconds * 1000).toLocaleTimeString();
}

function preview(text, truncated) {
  return truncated ? `${text}…` : text;
}

function jobLink(job) {
  return el("a", { class: "job", href: `#/jobs/${job.id}`, "data-job-id": job.id }, job.id);
}

function actionButton(job, action) {
  return el("button", {
    class: action, "data-action": action, "data-job-id": job.id,
    onclick: () => act(job.id, action),
  }, action);
}

function say(text) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.classList.add("shown");
  clearTimeout(say.timer);
  say.timer = setTimeout(() => message.classList.remove("shown"), 3000);
}

async function act(id, action) {
  try {
    const job = await api(`/jobs/${id}/${action}`, { method: "POST" });
    say(`job ${id}: ${action} done (now ${job.status})`);
  } catch (error) {
    say(`job ${id}: ${action} refused: ${error.message}`);
  }
  if (opened.id === id) opened.job = null; // it changed: the detail fetches it again
  refresh();
}

function fill(tableId, jobs, row, emptyText) {
  const body = document.querySelector(`#${tableId} tbody`);
  const columns = document.querySelectorAll(`#${tableId} thead th`).length;
  body.replaceChildren(
    ...(jobs.length ? jobs.map((job) => {
      const tr = el("tr", { "data-job-id": job.id, "data-status": job.status });
      tr.append(...row(job).map((cell) => (cell instanceof Node && cell.tagName === "TD"
        ? cell : el("td", {}, cell))));
      return tr;
    }) : [el("tr", {}, el("td", { class: "empty", colspan: columns }, emptyText))]),
  );
}

function progressBar(job) {
  const percent = Math.round((job.progress || 0) * 100);
  const bar = el("span", { class: "bar", title: `${percent}%` }, el("span"));
  bar.firstChild.style.width = `${percent}%`;
  return el("td", {}, bar, `${percent}% ${job.progress_message || ""}`);
}

function statusCell(job) {
  return el("td", { class: `status ${job.status}` }, job.status);
}

function drawChart(series) {
  const svg = document.getElementById("chart");
  const buckets = series.buckets;
  const max = Math.max(1, ...buckets.map((b) => b.completed + b.failed));
  const width = 600 / buckets.length;
  const ns = "http://www.w3.org/2000/svg";
  const bars = [];
  buckets.forEach((bucket, index) => {
    let y = 120;
    for (const kind of ["completed", "failed"]) {
      const height = (bucket[kind] / max) * 115;
      if (height > 0) {
        const rect = document.createElementNS(ns, "rect");
        rect.setAttribute("class", kind);
        rect.setAttribute("x", index * width + 0.5);
        rect.setAttribute("width", Math.max(width - 1, 1));
        rect.setAttribute("y", y - height);
        rect.setAttribute("height", height);
        const title = document.createElementNS(ns, "title");
        title.textContent = `${time(bucket.start)}: ${bucket[kind]} ${kind}`;
        rect.append(title);
        bars.push(rect);
        y -= height;
      }
    }
  });
  svg.replaceChildren(...bars);
  document.getElementById("chart-max").textContent = `(tallest bar: ${max} jobs)`;
}

async function refresh() {
  const connection = document.getElementById("connection");
  try {
    const [stats, series, running, pending, failed, recent] = await Promise.all([
      api("/stats"),
      api("/stats/throughput"),
      api("/jobs?status=running&limit=50"),
      api("/jobs?status=pending&limit=15"),
      api("/jobs?status=failed&limit=15"),
      api("/jobs?limit=20"),
    ]);
    for (const [status, count] of Object.entries(stats.by_status)) {
      const tile = document.getElementById(`count-${status}`);
      if (tile) tile.textContent = count;
    }
    document.getElementById("throughput").textContent = stats.throughput.toFixed(2);
    document.getElementById("success-rate").textContent =
      stats.success_rate == null ? "–" : `${Math.round(stats.success_rate * 100)}%`;
    drawChart(series);
    fill("running", running.jobs, (job) => [
      jobLink(job), job.name, `${job.attempts}/${job.max_attempts}`, progressBar(job),
      actionButton(job, "cancel"),
    ], "nothing running");
    fill("pending", pending.jobs, (job) => [
      jobLink(job), job.name, job.priority, time(job.run_at), actionButton(job, "cancel"),
    ], "nothing pending");
    fill("failed", failed.jobs, (job) => {
      const error = preview(job.error_preview || "", job.error_truncated);
      return [
        jobLink(job), job.name, `${job.attempts}/${job.max_attempts}`, time(job.finished_at),
        el("td", { class: "error", title: error }, error), actionButton(job, "requeue"),
      ];
    }, "no failures");
    fill("recent", recent.jobs, (job) => [
      jobLink(job), job.name, statusCell(job), `${job.attempts}/${job.max_attempts}`,
      time(job.created_at),
      job.status === "failed"
        ? el("td", { class: "error" }, preview(job.error_preview || "", job.error_truncated))
        : (job.result_preview === "null" ? ""
          : preview(job.result_preview, job.result_truncated)),
    ], "no jobs yet");
    await refreshDetail();
    connection.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
    connection.classList.remove("down");
  } catch (error) {
    connection.textContent = `cannot reach the service: ${error.message}`;
    connection.classList.add("down");
  }
}

function detailId() {
  const match = location.hash.match(/^#\/jobs\/(\d+)$/);
  return match ? Number(match[1]) : null;
}

// The job the detail panel shows: its id, the job as last fetched whole, and the id of a fetch
// in flight (so that a poll does not fetch it a second time meanwhile).
const opened = { id: null, job: null, loading: null };

async function refreshDetail() {
  const panel = document.getElementById("detail");
  const id = detailId();
  if (id == null) {
    panel.hidden = true;
    opened.id = null;
    opened.job = null;
    return;
  }
  panel.hidden = false;
  // A finished job stays as it is until someone acts on it: fetched once when opened, not on
  // every poll (its result may be large). An unfinished one is fetched again until it ends.
  if (opened.id === id
      && (opened.loading === id || (opened.job && FINISHED.has(opened.job.status)))) return;
  if (opened.id !== id) {
    opened.id = id;
    opened.job = null;
  }
  opened.loading = id;
  let job;
  try {
    job = await api(`/jobs/${id}`);
  } catch (error) {
    if (opened.id === id) {
      document.getElementById("detail-title").textContent = `Job ${id}: ${error.message}`;
      document.getElementById("detail-fields").replaceChildren();
    }
    return;
  } finally {
    if (opened.loading === id) opened.loading = null;
  }
  if (opened.id !== id) return; // another job was opened meanwhile
  opened.job = job;
  document.getElementById("detail-title").replaceChildren(
    `Job ${job.id} · ${job.name} · `, el("span", { class: `status ${job.status}` }, job.status));
  const actions = [];
  if (!FINISHED.has(job.status)) actions.push(actionButton(job, "cancel"));
  if (job.status === "failed" || job.status === "cancelled") {
    actions.push(actionButton(job, "requeue"));
  }
  document.getElementById("detail-actions").replaceChildren(...actions);
  const fields = [];
  for (const [key, value] of Object.entries(job)) {
    let shown;
    if (key.endsWith("_at")) shown = value == null ? "–" : new Date(value * 1000).toLocaleString();
    else if (key === "payload" || key === "result") shown = el("pre", {}, JSON.stringify(value, null, 2));
    else if (key === "error" && value) shown = el("pre", {}, value);
    else if (key === "progress" && value != null) shown = `${Math.round(value * 100)}%`;
    else shown = value == null ? "–" : value;
    fields.push(el("dt", {}, key), el("dd", {}, shown));
  }
  document.getElementById("detail-fields").replaceChildren(...fields);
}

window.addEventListener("hashchange", refreshDetail);
document.addEventListener("DOMContentLoaded", () => {
  refresh();
  setInterval(refresh, REFRESH_MS);
});
