// The conveyor dashboard: polls the service's own JSON API once a second and redraws.
// Short polling rather than server-sent events: hypercorn on trio does not notice closed
// connections (pgjones/hypercorn#210), so an open event stream could outlive its tab.
// Lists carry bounded previews of payloads, results and errors; a job's whole document is
// fetched only when its detail is opened, so one huge result cannot freeze the page.
//
// Auth: no cookie. With a token, the page trades it (from the login box, or #token=... in the
// address, dropped from it at once) for a session value (POST /session), keeps that in this
// tab's sessionStorage, which is per origin and so per port, and sends it as the bearer value.
// A cookie would reach every port of the host, and so any other server running there.
"use strict";

const REFRESH_MS = 1000;
const FINISHED = new Set(["completed", "failed", "cancelled"]);
// The server refuses a state-changing request authenticated by a session unless it proves it
// comes from this page: a page of another origin cannot add this header.
const CSRF_HEADER = "X-Conveyor-Request";
const SESSION_KEY = "conveyor.session";

class Unauthorized extends Error {}

// The API's path "/jobs" as a URL relative to this page, which is the app's root: the page works
// wherever the app is mounted ("/", or "/queue/" inside another app).
function here(path) {
  return path.slice(1);
}

async function api(path, options) {
  const headers = { [CSRF_HEADER]: "dashboard", ...(options && options.headers) };
  const session = sessionStorage.getItem(SESSION_KEY);
  if (session) headers.Authorization = `Bearer ${session}`;
  const response = await fetch(here(path), { credentials: "omit", ...options, headers });
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    sessionStorage.removeItem(SESSION_KEY);
    showLogin(session ? "the session ended: give the token again" : "");
    throw new Unauthorized("this server needs its token");
  }
  if (!response.ok) {
    throw new Error(body && body.detail ? body.detail : `HTTP ${response.status} on ${path}`);
  }
  return body;
}

// --- login ------------------------------------------------------------------------------------

function showLogin(text) {
  document.getElementById("login").hidden = false;
  document.getElementById("login-message").textContent = text;
}

// Trades the token for a session; false if the server has no token (nothing to log in to).
async function logIn(token) {
  const response = await fetch(here("/session"), {
    method: "POST",
    credentials: "omit",
    headers: { Authorization: `Bearer ${token}`, [CSRF_HEADER]: "dashboard" },
  });
  const body = await response.json().catch(() => null);
  if (response.status === 409) return false;
  if (!response.ok) {
    throw new Error(body && body.detail ? body.detail : `HTTP ${response.status}`);
  }
  sessionStorage.setItem(SESSION_KEY, body.session);
  return true;
}

async function submitLogin() {
  const input = document.getElementById("login-token");
  try {
    await logIn(input.value);
  } catch (error) {
    showLogin(`refused: ${error.message}`);
    return;
  }
  input.value = "";
  document.getElementById("login").hidden = true;
  refresh();
}

// The token given in the address (#token=..., or ?token=... as earlier versions took it), which
// is dropped from the address and the history entry at once.
function tokenFromAddress() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  const fromQuery = new URLSearchParams(location.search).get("token");
  const token = fromHash || fromQuery;
  if (token) history.replaceState(null, "", location.pathname);
  return token;
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

// Date and time: a schedule's ticks may be days apart.
function when(seconds) {
  return seconds == null ? "–" : new Date(seconds * 1000).toLocaleString();
}

const UNITS = [["w", 604800], ["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];

function period(seconds) {
  for (const [unit, size] of UNITS) {
    if (seconds >= size && seconds % size === 0) return `${seconds / size}${unit}`;
  }
  return `${seconds}s`;
}

function cadence(schedule) {
  return schedule.every != null
    ? `every ${period(schedule.every)}`
    : `cron ${schedule.cron} (${schedule.timezone})`;
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

// --- handlers -----------------------------------------------------------------------------------

function limitsText(options) {
  if (options == null) return "(not run by this server)";
  const limits = options.limits;
  const parts = [];
  if (limits.concurrency != null) parts.push(`concurrency ${limits.concurrency}`);
  if (limits.key_concurrency != null) parts.push(`per key ${limits.key_concurrency}`);
  if (limits.rate_limit != null) {
    parts.push(`${limits.rate_limit.count} per ${period(limits.rate_limit.seconds)}`);
  }
  if (limits.retry_priority_step) parts.push(`retry priority +${limits.retry_priority_step}`);
  if (options.process) parts.push("process");
  return parts.join(", ") || "–";
}

function handlerButton(handler) {
  const action = handler.paused ? "resume" : "pause";
  return el("button", {
    class: action, "data-action": action, "data-handler": handler.name,
    onclick: () => setPaused(handler.name, action),
  }, action);
}

async function setPaused(name, action) {
  try {
    const answer = await api(`/handlers/${encodeURIComponent(name)}/${action}`, { method: "POST" });
    say(`handler ${name}: ${answer.paused ? "paused" : "resumed"}`);
  } catch (error) {
    say(`handler ${name}: ${action} refused: ${error.message}`);
  }
  refresh();
}

function jobRowAttributes(job) {
  return { "data-job-id": job.id, "data-status": job.status };
}

function fill(tableId, items, row, emptyText, attributes = jobRowAttributes) {
  const body = document.querySelector(`#${tableId} tbody`);
  const columns = document.querySelectorAll(`#${tableId} thead th`).length;
  body.replaceChildren(
    ...(items.length ? items.map((item) => {
      const tr = el("tr", attributes(item));
      tr.append(...row(item).map((cell) => (cell instanceof Node && cell.tagName === "TD"
        ? cell : el("td", {}, cell))));
      return tr;
    }) : [el("tr", {}, el("td", { class: "empty", colspan: columns }, emptyText))]),
  );
}

function lastJobCell(schedule) {
  if (schedule.last_job_id == null) return el("td", { class: "last-job" }, "–");
  const status = schedule.last_job_status;
  return el("td", { class: "last-job" }, jobLink({ id: schedule.last_job_id }), " ",
    status ? el("span", { class: `status ${status}` }, status) : "(purged)");
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
  if (!document.getElementById("login").hidden) {
    connection.textContent = "log in to see the queue";
    return;
  }
  try {
    const [stats, series, running, pending, failed, recent, schedules, handlers] =
      await Promise.all([
        api("/stats"),
        api("/stats/throughput"),
        api("/jobs?status=running&limit=50"),
        api("/jobs?status=pending&limit=15"),
        api("/jobs?status=failed&limit=15"),
        api("/jobs?limit=20"),
        api("/schedules"),
        api("/handlers"),
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
    fill("handlers", handlers.handlers, (handler) => [
      handler.name,
      el("td", { class: handler.paused ? "state paused" : "state" },
        handler.paused ? "paused" : "active"),
      limitsText(handler.options),
      handler.counts.pending, handler.counts.running, handler.counts.failed,
      handlerButton(handler),
    ], "no handlers", (handler) => ({
      "data-handler": handler.name, "data-paused": String(handler.paused),
    }));
    fill("schedules", schedules.schedules, (schedule) => [
      schedule.key, schedule.name, cadence(schedule), when(schedule.next_run_at),
      when(schedule.last_run_at), lastJobCell(schedule),
    ], "no schedules", (schedule) => ({ "data-schedule-key": schedule.key }));
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
    await Promise.all([refreshDetail(), refreshWorkflow()]);
    connection.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
    connection.classList.remove("down");
  } catch (error) {
    connection.textContent = error instanceof Unauthorized
      ? "log in to see the queue" : `cannot reach the service: ${error.message}`;
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
    else if (key === "after") {
      shown = value.length ? el("span", {}, ...value.flatMap((dep, index) => [
        ...(index ? [", "] : []), jobLink({ id: dep })])) : "–";
    }
    else shown = value == null ? "–" : value;
    fields.push(el("dt", {}, key), el("dd", {}, shown));
  }
  document.getElementById("detail-fields").replaceChildren(...fields);
}

// --- the opened job's workflow, drawn as a graph -------------------------------------------------
// The jobs connected to the opened one through `after` (GET /jobs/{id}/workflow, at most 200),
// laid out in columns by depth: a job stands one column right of the deepest job it runs
// after. Each job's id is greater than those it runs after, so one pass in id order places it.

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 140;
const NODE_H = 40;
const GAP_X = 36;
const GAP_Y = 14;
const PAD = 10;
const LABEL_CHARS = 18;

function svgEl(tag, attributes, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function columnsOf(jobs) {
  const depth = new Map();
  const columns = [];
  for (const job of [...jobs].sort((a, b) => a.id - b.id)) {
    let level = 0;
    for (const dep of job.after) if (depth.has(dep)) level = Math.max(level, depth.get(dep) + 1);
    depth.set(job.id, level);
    (columns[level] ||= []).push(job);
  }
  return columns;
}

function drawWorkflow(graph) {
  const section = document.getElementById("workflow");
  const svg = document.getElementById("workflow-graph");
  if (graph.jobs.length < 2) {
    section.hidden = true;
    svg.replaceChildren();
    return;
  }
  const columns = columnsOf(graph.jobs);
  const place = new Map();
  columns.forEach((column, x) => column.forEach((job, y) => {
    place.set(job.id, { x: PAD + x * (NODE_W + GAP_X), y: PAD + y * (NODE_H + GAP_Y) });
  }));
  const width = 2 * PAD + columns.length * (NODE_W + GAP_X) - GAP_X;
  const height = 2 * PAD + Math.max(...columns.map((c) => c.length)) * (NODE_H + GAP_Y) - GAP_Y;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const defs = svgEl("defs", {}, svgEl("marker", {
    id: "arrow", viewBox: "0 0 8 8", refX: 8, refY: 4, markerWidth: 7, markerHeight: 7,
    orient: "auto",
  }, svgEl("path", { d: "M0,0 L8,4 L0,8 z", class: "arrow" })));
  const edges = [];
  let hidden = 0;
  for (const job of graph.jobs) {
    const to = place.get(job.id);
    for (const dep of job.after) {
      const from = place.get(dep);
      if (!from) {
        hidden += 1;
        continue;
      }
      const x1 = from.x + NODE_W;
      const y1 = from.y + NODE_H / 2;
      const x2 = to.x;
      const y2 = to.y + NODE_H / 2;
      const middle = (x1 + x2) / 2;
      edges.push(svgEl("path", {
        class: "edge", "data-from": dep, "data-to": job.id, "marker-end": "url(#arrow)",
        d: `M${x1},${y1} C${middle},${y1} ${middle},${y2} ${x2},${y2}`,
      }));
    }
  }
  const nodes = graph.jobs.map((job) => {
    const { x, y } = place.get(job.id);
    const label = `#${job.id} ${job.name}`;
    return svgEl("a", {
      href: `#/jobs/${job.id}`,
      class: `node ${job.status}${job.id === graph.job_id ? " root" : ""}`,
      "data-job-id": job.id, "data-status": job.status,
    },
    svgEl("title", {}, `job ${job.id} · ${job.name} · ${job.status}`),
    svgEl("rect", { x, y, width: NODE_W, height: NODE_H, rx: 5 }),
    svgEl("text", { x: x + 8, y: y + 16 },
      label.length > LABEL_CHARS ? `${label.slice(0, LABEL_CHARS - 1)}…` : label),
    svgEl("text", { x: x + 8, y: y + 32, class: "state" }, job.status));
  });
  svg.replaceChildren(defs, ...edges, ...nodes);
  const notes = [`${graph.jobs.length} jobs`];
  if (graph.truncated) notes.push("more are connected than shown");
  if (hidden) notes.push(`${hidden} dependencies not shown (purged, or beyond the bound)`);
  document.getElementById("workflow-note").textContent = `· ${notes.join(" · ")}`;
  section.hidden = false;
}

// The graph is fetched again on every poll while a job is open: the statuses of its steps
// change as they run. Its answer is bounded (200 jobs, with previews), so this stays cheap.
const flow = { id: null, loading: null, drawn: null };

async function refreshWorkflow() {
  const id = detailId();
  if (id !== flow.id) {
    flow.id = id;
    flow.drawn = null;
    document.getElementById("workflow").hidden = true;
  }
  if (id == null || flow.loading === id) return;
  flow.loading = id;
  let graph;
  try {
    graph = await api(`/jobs/${id}/workflow`);
  } catch (error) {
    return; // the detail panel says why the job cannot be read
  } finally {
    if (flow.loading === id) flow.loading = null;
  }
  if (flow.id !== id) return; // another job was opened meanwhile
  // Which job's workflow was read last (drawn, or hidden as a lone job).
  document.getElementById("workflow").dataset.jobId = id;
  const shape = JSON.stringify([graph.truncated,
    graph.jobs.map((job) => [job.id, job.status, job.after])]);
  if (shape === flow.drawn) return;
  flow.drawn = shape;
  drawWorkflow(graph);
}

window.addEventListener("hashchange", () => {
  refreshDetail();
  refreshWorkflow();
});
document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("login-button").addEventListener("click", submitLogin);
  document.getElementById("login-token").addEventListener("keydown", (event) => {
    if (event.key === "Enter") submitLogin();
  });
  const token = tokenFromAddress();
  if (token) {
    try {
      await logIn(token);
    } catch (error) {
      showLogin(`refused: ${error.message}`);
    }
  }
  refresh();
  setInterval(refresh, REFRESH_MS);
});
