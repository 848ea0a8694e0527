// Honing dashboard: a small single-page front end over the OpenAI-compatible API (same origin, same key).
//
//   #/             jobs list (status, progress from the newest metrics event), polled while any job runs
//   #/new          upload a file (its validation result shown) and start a job
//   #/jobs/<id>    one job: live loss curves, events, checkpoints, resolved hyperparameters,
//                  the files' validation, the evaluation report once it exists
//   #/chat         chat with any served model, streamed (server-sent events); answers are stored
//                  (store: true) and can be rated or corrected under each bubble
//   #/review       the review queue: stored completions (filter by model, metadata, rated or not) to rate
//                  or correct; the feedback becomes training data (`hone data from-traffic`)
//
// Safety rule for the next engineer: every string that comes from the API goes into the page through
// h() / textContent, never through an HTML-parsing property. The evaluation report is HTML by design: it goes into a
// sandboxed srcdoc frame (no scripts, opaque origin).
"use strict";

(() => {
  const KEY_STORAGE = "honing.apiKey";
  const POLL_MS = 1500; // the issue asks for curves that update while a job runs: ~1-2 s
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const SVG_NS = "http://www.w3.org/2000/svg";

  // ---------------------------------------------------------------- DOM helpers (text only)
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, ...children);
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    append(el, ...children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }

  function append(el, ...children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function replace(el, ...children) {
    el.replaceChildren();
    append(el, ...children);
    return el;
  }

  const $ = (sel, root = document) => root.querySelector(sel);

  function replaceIfChanged(el, key, build) {
    if (el.dataset.key === key) return;
    el.dataset.key = key;
    replace(el, build());
  }

  function when(unix) {
    return unix ? new Date(unix * 1000).toLocaleString() : "—";
  }

  function fmt(x, digits = 4) {
    if (x === null || x === undefined || x === "") return "—";
    if (typeof x === "number") return Number.isInteger(x) ? String(x) : x.toPrecision(digits);
    if (typeof x === "object") return JSON.stringify(x);
    return String(x);
  }

  function flash(message) {
    const el = $("#flash");
    if (!message) { el.hidden = true; return; }
    el.textContent = message;
    el.hidden = false;
  }

  // ---------------------------------------------------------------- the API, as the openai client calls it
  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders() {
    const key = localStorage.getItem(KEY_STORAGE);
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  async function request(path, { method = "GET", json, form } = {}) {
    const headers = authHeaders();
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form) {
      body = form; // multipart: the browser sets the boundary
    }
    const res = await fetch(path, { method, headers, body });
    if (res.ok) return res;
    let message = `${res.status} ${res.statusText}`;
    let code = null;
    try {
      const err = (await res.json()).error || {};
      if (err.message) message = err.message;
      code = err.code || null;
    } catch (_) { /* not JSON: keep the status line */ }
    if (res.status === 401) askForKey(message);
    throw new ApiError(res.status, message, code);
  }

  const api = {
    get: async (path) => (await request(path)).json(),
    post: async (path, json) => (await request(path, { method: "POST", json })).json(),
    upload: async (file, purpose) => {
      const form = new FormData();
      form.append("purpose", purpose);
      form.append("file", file, file.name);
      return (await request("/v1/files", { method: "POST", form })).json();
    },
    // A Honing extension that may not exist (older server, file without a validation): null on 404.
    optional: async (path, as = "json") => {
      try {
        const res = await request(path);
        return as === "text" ? res.text() : res.json();
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) return null;
        throw e;
      }
    },
  };

  const jobPath = (id) => `/v1/fine_tuning/jobs/${encodeURIComponent(id)}`;
  const listOf = (body) => (Array.isArray(body) ? body : (body && body.data) || []);

  // ---------------------------------------------------------------- API key form (shown on a 401)
  function askForKey(message) {
    $("#key-panel").hidden = false;
    flash(`${message} — enter an API key (hone serve keys create --project NAME).`);
    $("#key-input").focus();
  }

  function setupKeyForm() {
    $("#key-button").addEventListener("click", () => { $("#key-panel").hidden = !$("#key-panel").hidden; });
    $("#key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      localStorage.setItem(KEY_STORAGE, $("#key-input").value.trim());
      $("#key-input").value = "";
      $("#key-panel").hidden = true;
      flash(null);
      route();
    });
    $("#key-forget").addEventListener("click", () => {
      localStorage.removeItem(KEY_STORAGE);
      route();
    });
  }

  async function pollHealth() {
    const el = $("#health");
    try {
      const res = await fetch("/health");
      el.className = res.ok ? "health up" : "health down";
      el.textContent = res.ok ? "server up" : `server ${res.status}`;
    } catch (_) {
      el.className = "health down";
      el.textContent = "server unreachable";
    }
    setTimeout(pollHealth, 5000);
  }

  // ---------------------------------------------------------------- routing and polling lifetimes
  // Each view gets a context; leaving the view kills its pollers so no request outlives its page.
  let current = null;

  function newContext() {
    if (current) {
      current.alive = false;
      current.timers.forEach(clearTimeout);
    }
    current = { alive: true, timers: [] };
    return current;
  }

  // Run fn now and again every ms while the view is alive and fn returns true.
  function poll(ctx, fn, ms = POLL_MS) {
    const tick = async () => {
      if (!ctx.alive) return;
      let again = false;
      try {
        again = await fn();
      } catch (e) {
        if (!ctx.alive) return;
        if (e instanceof ApiError && e.status === 401) return; // the key form is shown; stop polling
        flash(e.message);
        again = true; // a transient error (server restarting): keep trying
      }
      if (again && ctx.alive) ctx.timers.push(setTimeout(tick, ms));
    };
    return tick();
  }

  function route() {
    const ctx = newContext();
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, query] = hash.split("?");
    const params = new URLSearchParams(query || "");
    const view = $("#view");
    let name = "jobs";
    if (path.startsWith("/jobs/")) {
      name = "jobs";
      jobView(ctx, view, decodeURIComponent(path.slice("/jobs/".length)));
    } else if (path === "/new") {
      name = "new";
      newJobView(ctx, view);
    } else if (path === "/chat") {
      name = "chat";
      chatView(ctx, view, params.get("model"));
    } else if (path === "/review") {
      name = "review";
      reviewView(ctx, view, params);
    } else {
      jobsView(ctx, view);
    }
    for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === name);
  }

  // ---------------------------------------------------------------- progress (step / total_steps)
  // The job object has no step counter; the newest metrics event carries it (as the client sees it).
  const progressCache = new Map(); // job id -> {step, total_steps} (final for finished jobs)

  async function latestProgress(job) {
    if (TERMINAL.has(job.status) && progressCache.has(job.id)) return progressCache.get(job.id);
    const events = listOf(await api.get(`${jobPath(job.id)}/events?limit=50`));
    const m = events.find((e) => e.type === "metrics" && e.data && e.data.step !== undefined);
    let p = m ? { step: m.data.step, total_steps: m.data.total_steps } : null;
    if (!p && job.status !== "validating_files" && job.status !== "queued") {
      // Many log lines after the last step (the end-of-job evaluation): ask the run's metrics instead.
      const body = await api.optional(`${jobPath(job.id)}/metrics`);
      const rows = listOf(body).filter((r) => typeof r.step === "number");
      if (rows.length) p = { step: rows[rows.length - 1].step, total_steps: body.total_steps };
    }
    progressCache.set(job.id, p);
    return p;
  }

  function progressBar(job, p) {
    let frac = 0;
    let label = "—";
    if (p && p.total_steps) {
      frac = Math.min(1, p.step / p.total_steps);
      label = `${p.step}/${p.total_steps}`;
    }
    if (job.status === "succeeded") frac = 1;
    return h("div", { class: "progress", dataset: { step: p ? p.step : "", total: p ? p.total_steps : "" } },
      h("div", { class: "bar" }, h("span", { style: `width:${(frac * 100).toFixed(1)}%` })),
      h("span", { class: "num" }, label));
  }

  const badge = (status) => h("span", { class: `status ${status}`, dataset: { status } }, status);

  // ---------------------------------------------------------------- #/ : jobs list
  function jobsView(ctx, view) {
    const tbody = h("tbody");
    const more = h("button", { class: "secondary", type: "button", hidden: true }, "Load more");
    let pageSize = 20;
    replace(view,
      h("div", { class: "headline" }, h("h1", null, "Fine-tuning jobs"),
        h("a", { href: "#/new" }, h("button", { type: "button" }, "New job"))),
      h("div", { class: "panel" },
        h("table", { id: "jobs" },
          h("thead", null, h("tr", null, ["Job", "Model", "Status", "Progress", "Fine-tuned model", "Created"]
            .map((t) => h("th", null, t)))),
          tbody),
        h("div", { class: "toolbar" }, more)));

    more.addEventListener("click", () => { pageSize += 20; refresh(); });

    // Cursor pagination as the client does it: follow `after` = the last id until enough rows.
    async function fetchJobs(n) {
      const jobs = [];
      let after = null;
      let hasMore = true;
      while (hasMore && jobs.length < n) {
        const q = new URLSearchParams({ limit: String(Math.min(100, n - jobs.length)) });
        if (after) q.set("after", after);
        const page = await api.get(`/v1/fine_tuning/jobs?${q}`);
        jobs.push(...page.data);
        hasMore = page.has_more && page.data.length > 0;
        after = page.data.length ? page.data[page.data.length - 1].id : null;
      }
      return { jobs, hasMore };
    }

    async function refresh() {
      const { jobs, hasMore } = await fetchJobs(pageSize);
      const progress = await Promise.all(jobs.map((j) => latestProgress(j).catch(() => null)));
      if (!ctx.alive) return false;
      flash(null);
      more.hidden = !hasMore;
      replace(tbody, jobs.length ? jobs.map((j, i) => h("tr", { dataset: { job: j.id } },
        h("td", null, h("a", { class: "mono", href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id)),
        h("td", { class: "mono" }, j.model),
        h("td", null, badge(j.status)),
        h("td", null, progressBar(j, progress[i])),
        h("td", { class: "mono" }, j.fine_tuned_model || "—"),
        h("td", { class: "muted" }, when(j.created_at)))) :
        h("tr", null, h("td", { colspan: 6, class: "muted" }, "No jobs yet. ", h("a", { href: "#/new" }, "Start one."))));
      return jobs.some((j) => !TERMINAL.has(j.status));
    }

    poll(ctx, refresh, 2000);
  }

  // ---------------------------------------------------------------- #/new : upload + start a job
  function newJobView(ctx, view) {
    // A served model from the list, or any local model directory / .gguf path the server can read.
    const modelList = h("datalist", { id: "model-list" });
    const model = h("input", { type: "text", name: "model", id: "model", list: "model-list", required: true,
      placeholder: "catalog name or local model path", size: 48 });
    const existing = h("select", { name: "existing", id: "existing-file" }, h("option", { value: "" }, "— upload a new file —"));
    const training = h("input", { type: "file", name: "training", id: "training-file", accept: ".jsonl,.json,.csv,.parquet" });
    const validation = h("input", { type: "file", name: "validation", id: "validation-file", accept: ".jsonl,.json,.csv,.parquet" });
    const number = (name, attrs) => h("input", Object.assign({ type: "number", name, id: name, placeholder: "auto" }, attrs));
    const epochs = number("n_epochs", { min: 1, step: 1 });
    const batch = number("batch_size", { min: 1, step: 1 });
    const lrm = number("learning_rate_multiplier", { min: 0, step: "any" });
    const suffix = h("input", { type: "text", name: "suffix", id: "suffix", maxlength: 64, placeholder: "optional" });
    const extra = h("textarea", { name: "honing_config", id: "honing-config", rows: 2,
      placeholder: '{"max_steps": 50, "method": "lora"}' });
    const submit = h("button", { type: "submit", id: "start-job" }, "Upload and start");
    const result = h("div", { id: "upload-result" });
    const form = h("form", { class: "stack", id: "new-job" },
      h("label", { for: "model" }, "Base model"), h("div", null, model, modelList),
      h("label", { for: "training-file" }, "Training file"),
      h("div", null, training, h("div", { class: "hint" }, "JSONL chat / prompt-completion, CSV or Parquet; validated on upload")),
      h("label", { for: "existing-file" }, "…or an uploaded file"), existing,
      h("label", { for: "validation-file" }, "Validation file (optional)"), validation,
      h("label", { for: "n_epochs" }, "Epochs"), epochs,
      h("label", { for: "batch_size" }, "Batch size"), batch,
      h("label", { for: "learning_rate_multiplier" }, "Learning-rate multiplier"), lrm,
      h("label", { for: "suffix" }, "Suffix"), suffix,
      h("label", { for: "honing-config" }, "Honing training keys (JSON)"),
      h("div", null, extra, h("div", { class: "hint" }, "optional: sent as honing_config (max_steps, method, lora, …)")),
      h("div", { class: "full" }, submit));
    replace(view, h("h1", null, "New fine-tuning job"), h("div", { class: "panel" }, form), result);

    (async () => {
      const [models, files] = await Promise.all([
        api.get("/v1/models"), api.get("/v1/files?purpose=fine-tune&limit=100").catch(() => ({ data: [] }))]);
      if (!ctx.alive) return;
      // Base models first (fine-tuned ones can be tuned further, but are rarely what one wants).
      const ids = listOf(models).map((m) => m.id).sort((a, b) => a.startsWith("ft:") - b.startsWith("ft:"));
      replace(modelList, ids.map((id) => h("option", { value: id })));
      if (!model.value && ids.length) model.value = ids[0];
      append(existing, listOf(files).map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`)));
    })().catch((e) => flash(e.message));

    const hp = (input, integer) => {
      if (input.value === "") return "auto";
      return integer ? parseInt(input.value, 10) : parseFloat(input.value);
    };

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      flash(null);
      if (!training.files.length && !existing.value) { flash("Choose a training file or an uploaded one."); return; }
      let honingConfig = null;
      if (extra.value.trim()) {
        try { honingConfig = JSON.parse(extra.value); } catch (e) { flash(`Honing training keys: not JSON (${e.message})`); return; }
      }
      submit.disabled = true;
      try {
        const trainingId = await uploadChecked(training.files[0], existing.value, result, "Training file");
        let validationId = null;
        if (validation.files.length) {
          validationId = await uploadChecked(validation.files[0], "", result, "Validation file");
        }
        const body = {
          model: model.value,
          training_file: trainingId,
          method: { type: "supervised", supervised: { hyperparameters: {
            n_epochs: hp(epochs, true), batch_size: hp(batch, true), learning_rate_multiplier: hp(lrm, false) } } },
        };
        if (validationId) body.validation_file = validationId;
        if (suffix.value.trim()) body.suffix = suffix.value.trim();
        if (honingConfig) body.honing_config = honingConfig;
        const job = await api.post("/v1/fine_tuning/jobs", body);
        location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
      } catch (e) {
        flash(e.message);
      } finally {
        submit.disabled = false;
      }
    });
  }

  // Upload (or reuse) a file and show its validation. A file with errors is still submitted: the server
  // decides (the job then fails at validating_files with the same line-numbered problems in its error).
  async function uploadChecked(file, existingId, out, label) {
    let id = existingId;
    if (file) {
      append(out, h("p", { class: "muted" }, `Uploading ${file.name}…`));
      id = (await api.upload(file, "fine-tune")).id;
    }
    const v = await api.optional(`/v1/files/${encodeURIComponent(id)}/validation`);
    append(out, h("div", { class: "panel" }, h("h2", null, `${label} ${id}`), validationBlock(v)));
    return id;
  }

  function validationBlock(v) {
    if (!v) return h("p", { class: "muted" }, "No validation result for this file.");
    const rank = (p) => (p.severity === "error" ? 0 : 1);
    const problems = (v.problems || []).map((p, i) => [p, i]).sort((a, b) => rank(a[0]) - rank(b[0]) || a[1] - b[1])
      .map(([p]) => p);
    const count = (sev) => (typeof v[`${sev}s`] === "number" ? v[`${sev}s`] : problems.filter((p) => p.severity === sev).length);
    const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
    const errors = count("error");
    const warnings = count("warning");
    const headline = v.ok ?
      h("p", { class: "ok" }, "✓ valid", warnings ? h("span", { class: "muted" }, ` (${plural(warnings, "warning")})`) : null) :
      h("p", { class: "bad" }, `✗ ${plural(errors, "error")}`, warnings ? `, ${plural(warnings, "warning")}` : "");
    const stats = v.stats && Object.keys(v.stats).length ?
      h("table", { class: "kv" }, Object.entries(v.stats).map(([k, x]) => h("tr", null, h("th", null, k), h("td", { class: "mono" }, fmt(x))))) : null;
    return h("div", { class: "validation", dataset: { ok: String(!!v.ok) } },
      headline,
      problemList(problems.slice(0, SHOWN_PROBLEMS)),
      problems.length > SHOWN_PROBLEMS ? h("details", null,
        h("summary", null, `${problems.length - SHOWN_PROBLEMS} more`),
        problemList(problems.slice(SHOWN_PROBLEMS, MAX_PROBLEMS)),
        problems.length > MAX_PROBLEMS ? h("p", { class: "muted" }, `… and ${problems.length - MAX_PROBLEMS} more`) : null) : null,
      stats);
  }

  // Errors first (they decide whether the job runs), then warnings, each in file order.
  const SHOWN_PROBLEMS = 5;
  const MAX_PROBLEMS = 200;

  function problemList(problems) {
    if (!problems.length) return null;
    return h("ul", { class: "problems" }, problems.map((p) =>
      h("li", { class: p.severity === "error" ? "bad-line" : null },
        h("span", { class: "mono" }, p.line === null || p.line === undefined ? "file" : `line ${p.line}`),
        ` · ${p.severity ? `${p.severity} · ` : ""}${p.category} · `, p.message)));
  }

  // ---------------------------------------------------------------- #/jobs/<id> : one job, live
  function jobView(ctx, view, id) {
    const title = h("div", { class: "headline" }, h("h1", { class: "mono" }, id));
    const chart = h("div", { class: "chart", id: "loss-chart" }, h("p", { class: "muted" }, "No metrics yet."));
    const chartTitle = h("h2", { id: "chart-title" }, "Loss");
    const progressText = h("p", { class: "muted", id: "progress-text" });
    const details = h("div", { id: "job-details" });
    const hyper = h("div", { id: "hyperparameters" });
    const files = h("div", { id: "file-validation" }, h("p", { class: "muted" }, "…"));
    const checkpoints = h("div", { id: "checkpoints" });
    const events = h("div", { class: "events", id: "events" });
    const report = h("div", { id: "report" }, h("p", { class: "muted" }, "The evaluation report appears here when the job ends."));
    replace(view, title,
      h("div", { class: "grid" },
        h("div", { class: "panel" }, chartTitle, chart, progressText),
        h("div", { class: "panel" }, h("h2", null, "Job"), details)),
      h("div", { class: "grid", style: "margin-top:16px" },
        h("div", { class: "panel" }, h("h2", null, "Hyperparameters (resolved)"), hyper),
        h("div", { class: "panel" }, h("h2", null, "Data validation"), h("div", { class: "scroll" }, files)),
        h("div", { class: "panel" }, h("h2", null, "Checkpoints"), h("div", { class: "scroll" }, checkpoints))),
      h("div", { class: "panel", style: "margin-top:16px" }, h("h2", null, "Events (newest first)"), events),
      h("div", { class: "panel" }, h("h2", null, "Evaluation report"), report));

    let filesShown = false;
    let reportShown = false;
    let reportTries = 0;

    async function refresh() {
      const job = await api.get(jobPath(id));
      const [evs, rows, ckpts] = await Promise.all([
        api.get(`${jobPath(id)}/events?limit=100`).then(listOf),
        api.optional(`${jobPath(id)}/metrics`),
        api.get(`${jobPath(id)}/checkpoints?limit=100`).then(listOf),
      ]);
      if (!ctx.alive) return false;
      flash(null);
      renderHeader(title, job, () => refresh());
      const series = lossSeries(rows === null ? null : listOf(rows), evs, rows && rows.total_steps);
      replace(chart, series.train.length || series.evals.length ? lossChart(series) : h("p", { class: "muted" }, "No metrics yet."));
      chartTitle.textContent = series.kind === "reward" ? "Reward" : "Loss";
      progressText.textContent = series.step !== null ?
        `step ${series.step}${series.total ? ` of ${series.total}` : ""}` : "";
      replace(details, jobTable(job));
      replace(hyper, kvTable(resolvedHyperparameters(job)));
      // Rebuilt only when they changed, so that a reader's scroll position survives the polling.
      replaceIfChanged(checkpoints, ckpts.map((c) => c.id).join(), () => checkpointTable(ckpts));
      replaceIfChanged(events, `${evs.length}:${evs.length ? evs[0].id : ""}`, () => eventTable(evs));
      if (!filesShown) filesShown = await showValidation(files, job);
      const done = TERMINAL.has(job.status);
      if (done && !reportShown && job.status === "succeeded") {
        reportShown = await showReport(report, id);
        // The report is written as the job ends: give it a little while before saying it is absent.
        if (!reportShown && ++reportTries > 40) {
          replace(report, h("p", { class: "muted" }, "No evaluation report for this job (no validation data?)."));
          return false;
        }
        return !reportShown;
      }
      if (done && job.status !== "succeeded") replace(report, h("p", { class: "muted" }, `The job ${job.status}; no report.`));
      return !done;
    }

    poll(ctx, refresh);
  }

  function renderHeader(title, job, after) {
    const actions = [];
    if (!TERMINAL.has(job.status)) {
      const cancel = h("button", { class: "danger", type: "button", id: "cancel-job" }, "Cancel");
      cancel.addEventListener("click", async () => {
        cancel.disabled = true;
        try { await api.post(`${jobPath(job.id)}/cancel`, {}); after(); } catch (e) { flash(e.message); }
      });
      actions.push(cancel);
    }
    if (job.fine_tuned_model) {
      actions.push(h("a", { href: `#/chat?model=${encodeURIComponent(job.fine_tuned_model)}`, id: "chat-with-model" },
        h("button", { type: "button", class: "secondary" }, "Chat with this model")));
    }
    replace(title, h("h1", { class: "mono" }, job.id), badge(job.status), actions);
  }

  function jobTable(job) {
    const err = job.error && (job.error.message || job.error.code) ?
      `${job.error.code ? `${job.error.code}: ` : ""}${job.error.message || ""}` : null;
    return kvTable({
      model: job.model,
      fine_tuned_model: job.fine_tuned_model,
      training_file: job.training_file,
      validation_file: job.validation_file,
      created: when(job.created_at),
      finished: job.finished_at ? when(job.finished_at) : null,
      estimated_finish: job.estimated_finish ? when(job.estimated_finish) : null,
      trained_tokens: job.trained_tokens,
      seed: job.seed,
      suffix: job.user_provided_suffix || job.suffix,
      error: err,
    });
  }

  function resolvedHyperparameters(job) {
    const m = job.method || {};
    const fromMethod = m.type && m[m.type] && m[m.type].hyperparameters;
    return Object.assign({ method: m.type || "supervised" }, fromMethod || job.hyperparameters || {});
  }

  function kvTable(obj) {
    const rows = Object.entries(obj).filter(([, v]) => v !== null && v !== undefined && v !== "");
    return h("table", { class: "kv" }, rows.map(([k, v]) => h("tr", null, h("th", null, k), h("td", { class: "mono" }, fmt(v)))));
  }

  function checkpointTable(ckpts) {
    if (!ckpts.length) return h("p", { class: "muted" }, "None yet.");
    return h("table", null,
      h("thead", null, h("tr", null, h("th", null, "Step"), h("th", null, "Model (chat)"), h("th", null, "Metrics"))),
      h("tbody", null, ckpts.map((c) => h("tr", null,
        h("td", null, fmt(c.step_number)),
        // The full name is long (ft:<base>:<project>:<suffix>:<job>:ckpt-step-N): show its tail, keep the whole.
        h("td", { class: "mono" }, h("a", { href: `#/chat?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}`,
          title: c.fine_tuned_model_checkpoint }, `…:${String(c.fine_tuned_model_checkpoint).split(":").pop()}`)),
        h("td", { class: "mono metrics" }, Object.entries(c.metrics || {}).filter(([k, v]) => v !== null && k !== "step")
          .map(([k, v]) => h("div", null, `${k} ${fmt(v)}`)))))));
  }

  function eventTable(evs) {
    if (!evs.length) return h("p", { class: "muted" }, "No events yet.");
    return h("table", null, h("tbody", null, evs.map((e) => h("tr", { class: `${e.type || "message"} level-${e.level || "info"}` },
      h("td", { class: "when" }, when(e.created_at)),
      h("td", { class: "msg" }, e.message)))));
  }

  async function showValidation(out, job) {
    const ids = [["training", job.training_file], ["validation", job.validation_file]].filter(([, f]) => f);
    const results = await Promise.all(ids.map(([, f]) => api.optional(`/v1/files/${encodeURIComponent(f)}/validation`)));
    replace(out, ids.map(([label, f], i) => h("div", null, h("p", null, `${label}: `, h("span", { class: "mono" }, f)),
      validationBlock(results[i]))));
    return true;
  }

  async function showReport(out, id) {
    const html = await api.optional(`${jobPath(id)}/report`, "text");
    if (html === null) return false;
    // sandbox="" : no scripts, no forms, an opaque origin; the report is static HTML with inline images.
    const frame = h("iframe", { class: "report", id: "report-frame", sandbox: "", title: "Evaluation report" });
    frame.srcdoc = html;
    replace(out, frame);
    return true;
  }

  // ---------------------------------------------------------------- loss curves (inline SVG)
  // Rows of GET .../metrics ({step, train_loss, eval_loss}); without that extension, the metrics events.
  // A reinforcement job's rows carry rewards (train_reward, eval_reward): those are what it optimizes.
  function lossSeries(rows, evs, totalSteps) {
    let points = rows;
    if (!points) {
      points = evs.filter((e) => e.type === "metrics" && e.data).map((e) => ({
        step: e.data.step, total_steps: e.data.total_steps, train_loss: e.data.train_loss, eval_loss: e.data.valid_loss,
        train_reward: e.data.train_reward, eval_reward: e.data.valid_reward }))
        .reverse();
    }
    const finite = (x) => typeof x === "number" && Number.isFinite(x);
    const kind = points.some((r) => finite(r.train_reward) || finite(r.eval_reward)) ? "reward" : "loss";
    const series = (key) => points.filter((r) => finite(r[key]) && finite(r.step)).map((r) => [r.step, r[key]]);
    const train = series(`train_${kind}`);
    const evals = series(`eval_${kind}`);
    const steps = points.map((r) => r.step).filter(finite);
    const totals = points.map((r) => r.total_steps).filter(finite);
    const fromEvents = evs.find((e) => e.type === "metrics" && e.data && finite(e.data.total_steps));
    const total = finite(totalSteps) ? totalSteps : totals.length ? Math.max(...totals)
      : fromEvents ? fromEvents.data.total_steps : null;
    return { train, evals, step: steps.length ? Math.max(...steps) : null, total, kind };
  }

  // At most ~n points of a long run for drawing (every k-th, the last kept): the chart is 640 units wide.
  function thin(pts, n) {
    if (pts.length <= n) return pts;
    const k = Math.ceil(pts.length / n);
    return pts.filter((_, i) => i % k === 0 || i === pts.length - 1);
  }

  // Round tick spacing (1, 2, 5 x 10^k) giving about n ticks over [lo, hi].
  function ticks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / n;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((x) => x >= raw);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function lossChart({ train, evals, total, kind = "loss" }) {
    const W = 640, H = 260, m = { l: 48, r: 14, t: 10, b: 30 };
    const all = train.concat(evals);
    const xMax = Math.max(total || 0, ...all.map((p) => p[0]), 1);
    let yLo = Math.min(...all.map((p) => p[1]));
    let yHi = Math.max(...all.map((p) => p[1]));
    const pad = (yHi - yLo) * 0.08 || Math.abs(yHi) * 0.1 || 1;
    yLo = Math.max(0, yLo - pad);
    yHi += pad;
    const x = (v) => m.l + (v / xMax) * (W - m.l - m.r);
    const y = (v) => H - m.b - ((v - yLo) / (yHi - yLo)) * (H - m.t - m.b);
    const line = (pts) => thin(pts, 1200).map(([a, b]) => `${x(a).toFixed(1)},${y(b).toFixed(1)}`).join(" ");
    const xt = ticks(0, xMax, 6).filter((v) => Number.isInteger(v));
    const yt = ticks(yLo, yHi, 5);
    // As many decimals as the tick spacing needs (0.5 -> 1, 0.05 -> 2), the same for every label.
    const yDigits = yt.length > 1 ? Math.max(0, -Math.floor(Math.log10(yt[1] - yt[0]) + 1e-9)) : 2;
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `train and eval ${kind} by step`,
      "data-train-points": train.length, "data-eval-points": evals.length },
      yt.map((v) => [s("line", { class: "gridline", x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }),
        s("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(yDigits))]),
      xt.map((v) => s("text", { x: x(v), y: H - m.b + 16, "text-anchor": "middle" }, String(v))),
      s("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }),
      s("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }),
      s("text", { x: W - m.r, y: H - 2, "text-anchor": "end" }, "step"),
      train.length ? s("polyline", { class: "train", points: line(train) }) : null,
      evals.length > 1 ? s("polyline", { class: "eval", points: line(evals) }) : null,
      evals.map(([a, b]) => s("circle", { class: "eval-dot", cx: x(a), cy: y(b), r: 3.5 },
        s("title", null, `step ${a}: eval ${kind} ${fmt(b)}`))));
    const last = (pts) => (pts.length ? fmt(pts[pts.length - 1][1]) : "—");
    return h("div", null, svg, h("div", { class: "legend" },
      h("span", null, h("span", { class: "swatch", style: "background:var(--train)" }), `train ${kind} (last ${last(train)})`),
      h("span", null, h("span", { class: "swatch", style: "background:var(--eval)" }), `eval ${kind} (last ${last(evals)})`)));
  }

  // ---------------------------------------------------------------- #/chat : streamed chat
  function chatView(ctx, view, preselect) {
    const model = h("select", { id: "chat-model" });
    const system = h("input", { type: "text", id: "chat-system", placeholder: "optional system prompt", size: 40 });
    const maxTokens = h("input", { type: "number", id: "chat-max-tokens", value: 128, min: 1, style: "width:90px" });
    const temperature = h("input", { type: "number", id: "chat-temperature", value: 0.7, min: 0, max: 2, step: 0.1, style: "width:80px" });
    const log = h("div", { class: "chat-log", id: "chat-log" });
    const input = h("textarea", { id: "chat-input", placeholder: "Message… (Enter sends, Shift+Enter for a new line)" });
    const send = h("button", { type: "submit", id: "chat-send" }, "Send");
    const clear = h("button", { type: "button", class: "secondary" }, "Clear");
    const store = h("input", { type: "checkbox", id: "chat-store", checked: true });
    const usage = h("p", { class: "muted", id: "chat-usage" });
    const form = h("form", { class: "chat-form" }, input, send, clear);
    replace(view, h("h1", null, "Chat"),
      h("div", { class: "panel" },
        h("div", { class: "toolbar" },
          h("label", null, "Model ", model), h("label", null, "System ", system),
          h("label", null, "max tokens ", maxTokens), h("label", null, "temperature ", temperature),
          h("label", { title: "store: true — kept for review and rating (#/review)" }, store, " keep for review")),
        log, form, usage));

    let history = [];
    clear.addEventListener("click", () => { history = []; log.replaceChildren(); usage.textContent = ""; });
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
    });

    api.get("/v1/models").then((body) => {
      if (!ctx.alive) return;
      const ids = listOf(body).map((m) => m.id);
      if (preselect && !ids.includes(preselect)) ids.unshift(preselect);
      replace(model, ids.map((id) => h("option", { value: id, selected: id === preselect }, id)));
    }).catch((e) => flash(e.message));

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const text = input.value.trim();
      if (!text || !model.value) return;
      input.value = "";
      send.disabled = true;
      history.push({ role: "user", content: text });
      append(log, h("div", { class: "msg user" }, text));
      const bubble = h("div", { class: "msg assistant" });
      append(log, bubble);
      const messages = (system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []).concat(history);
      const t0 = performance.now();
      try {
        const reply = await streamChat({
          model: model.value, messages, stream: true, stream_options: { include_usage: true }, store: store.checked,
          metadata: store.checked ? { source: "dashboard-chat" } : undefined,
          max_tokens: parseInt(maxTokens.value, 10) || 128, temperature: parseFloat(temperature.value) || 0,
        }, (delta) => { bubble.textContent += delta; log.scrollTop = log.scrollHeight; }, (u) => {
          const secs = (performance.now() - t0) / 1000;
          usage.textContent = `${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens in ` +
            `${secs.toFixed(1)} s (${(u.completion_tokens / secs).toFixed(1)} tokens/s)`;
        });
        history.push({ role: "assistant", content: reply.text });
        bubble.dataset.done = "true";
        if (store.checked && reply.id) {
          bubble.dataset.id = reply.id;
          bubble.after(feedbackControls(reply.id, null, reply.text));
        }
      } catch (e) {
        bubble.className = "msg error";
        bubble.textContent = e.message;
        history.pop();
      } finally {
        send.disabled = false;
      }
    });
  }

  // POST /v1/chat/completions with stream: true; parse the server-sent events ("data: {...}", "data: [DONE]").
  async function streamChat(body, onDelta, onUsage) {
    const res = await request("/v1/chat/completions", { method: "POST", json: body });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let text = "";
    let id = null;
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") return { text, id };
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new ApiError(500, chunk.error.message || "stream error", chunk.error.code);
        id = id || chunk.id || null;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
        if (delta) { text += delta; onDelta(delta); }
        if (chunk.usage) onUsage(chunk.usage);
      }
      if (done) return { text, id: null }; // closed without [DONE]: keep what came; nothing was stored
    }
  }

  // ---------------------------------------------------------------- feedback on a stored completion
  // Thumbs up / down, or the corrected answer (POST /v1/chat/completions/{id}/feedback, a Honing extension).
  function feedbackControls(id, current, answer) {
    const status = h("span", { class: "fb-status muted" });
    const correction = h("textarea", { class: "fb-correction", rows: 3 });
    correction.value = answer || "";
    const note = h("input", { type: "text", class: "fb-note", placeholder: "note (optional)", size: 30 });
    const save = h("button", { type: "button", class: "fb-save" }, "Save correction");
    const box = h("div", { class: "fb-correct", hidden: true },
      h("label", { class: "muted" }, "The answer it should have given"), correction, h("div", null, note, " ", save));
    const up = h("button", { type: "button", class: "secondary fb-up", title: "a good answer" }, "👍");
    const down = h("button", { type: "button", class: "secondary fb-down", title: "a wrong answer" }, "👎");
    const fix = h("button", { type: "button", class: "link fb-fix" }, "correct…");
    const el = h("div", { class: "feedback", dataset: { id } }, up, down, fix, status, box);

    function show(fb) {
      el.dataset.rating = fb && fb.rating ? fb.rating : "";
      el.dataset.corrected = fb && fb.correction ? "true" : "false";
      status.textContent = !fb ? "not rated" : `rated ${fb.rating || "—"}${fb.correction ? ", corrected" : ""}`;
    }
    async function send(body) {
      try {
        const obj = await api.post(`/v1/chat/completions/${encodeURIComponent(id)}/feedback`, body);
        show(obj.feedback);
        box.hidden = true;
        flash(null);
      } catch (e) {
        flash(e.message);
      }
    }
    up.addEventListener("click", () => send({ rating: "up" }));
    down.addEventListener("click", () => send({ rating: "down" }));
    fix.addEventListener("click", () => { box.hidden = !box.hidden; if (!box.hidden) correction.focus(); });
    save.addEventListener("click", () => {
      const text = correction.value.trim();
      if (!text) { flash("Write the corrected answer first."); return; }
      send({ rating: "down", correction: text, note: note.value.trim() || null });
    });
    show(current);
    return el;
  }

  // ---------------------------------------------------------------- #/review : the review queue
  // Stored completions (GET /v1/chat/completions), newest first, filtered by model, metadata and whether
  // they were rated; each with its request's messages and the feedback controls.
  function metadataQuery(text) {
    const q = new URLSearchParams();
    for (const pair of text.split(",")) {
      const [k, ...v] = pair.split("=");
      if (k.trim()) q.set(`metadata[${k.trim()}]`, v.join("=").trim());
    }
    return q;
  }

  function reviewView(ctx, view, params) {
    const model = h("select", { id: "review-model" }, h("option", { value: "" }, "any model"));
    const meta = h("input", { type: "text", id: "review-metadata", placeholder: "key=value, key2=value2", size: 28,
      value: params.get("metadata") || "" });
    const show = h("select", { id: "review-show" }, ["unrated", "all", "rated"].map((v) =>
      h("option", { value: v, selected: v === (params.get("show") || "unrated") }, v)));
    const apply = h("button", { type: "submit", id: "review-apply" }, "Show");
    const list = h("div", { id: "review-list" });
    const more = h("button", { type: "button", class: "secondary", id: "review-more", hidden: true }, "More");
    const form = h("form", { class: "toolbar" }, h("label", null, "Model ", model), h("label", null, "Metadata ", meta),
      h("label", null, "Show ", show), apply);
    replace(view, h("h1", null, "Review"),
      h("p", { class: "muted" }, "Stored chat completions (store: true). Rate them or give the corrected answer; " +
        "the feedback becomes a training file below (or with `hone data from-traffic`), after validation."),
      h("div", { class: "panel" }, form, list, more),
      trafficPanel(model, meta));

    api.get("/v1/models").then((body) => {
      if (!ctx.alive) return;
      append(model, listOf(body).map((m) => h("option", { value: m.id, selected: m.id === params.get("model") }, m.id)));
    }).catch((e) => flash(e.message));

    let after = null;
    async function load(reset) {
      const q = metadataQuery(meta.value);
      q.set("order", "desc");
      q.set("limit", "20");
      if (model.value) q.set("model", model.value);
      if (show.value !== "all") q.set("rated", show.value);
      if (!reset && after) q.set("after", after);
      const page = await api.get(`/v1/chat/completions?${q}`);
      if (!ctx.alive) return;
      if (reset) list.replaceChildren();
      const items = listOf(page);
      const cards = await Promise.all(items.map(reviewCard));
      if (!ctx.alive) return;
      append(list, cards);
      if (reset && !items.length) append(list, h("p", { class: "muted", id: "review-empty" }, "Nothing to review."));
      after = page.last_id;
      more.hidden = !page.has_more;
      list.dataset.loads = String(Number(list.dataset.loads || 0) + 1); // a page landed (tests wait on it)
    }
    form.addEventListener("submit", (ev) => { ev.preventDefault(); load(true).catch((e) => flash(e.message)); });
    more.addEventListener("click", () => load(false).catch((e) => flash(e.message)));
    load(true).catch((e) => flash(e.message));
  }

  // POST /v1/files/from_traffic with the queue's filters: a validated fine-tune file, or the reason why not.
  function trafficPanel(model, meta) {
    const kind = h("select", { id: "traffic-kind" },
      h("option", { value: "sft" }, "sft — corrected answers"),
      h("option", { value: "kto" }, "kto — rated answers (unpaired)"),
      h("option", { value: "dpo" }, "dpo — correction vs the model's answer"));
    const minimum = h("input", { type: "number", id: "traffic-min", value: 10, min: 1, style: "width:80px" });
    const build = h("button", { type: "button", id: "traffic-build" }, "Build training file");
    const out = h("div", { id: "traffic-result" });
    build.addEventListener("click", async () => {
      build.disabled = true;
      out.replaceChildren();
      const metadata = Object.fromEntries([...metadataQuery(meta.value)].map(([k, v]) => [k.slice(9, -1), v]));
      try {
        const r = await api.post("/v1/files/from_traffic", {
          kind: kind.value, model: model.value || null, min_examples: parseInt(minimum.value, 10) || 10,
          metadata: Object.keys(metadata).length ? metadata : null,
        });
        const sm = r.summary;
        const v = await api.optional(`/v1/files/${encodeURIComponent(r.file.id)}/validation`);
        append(out, h("p", { class: "ok", dataset: { file: r.file.id } }, `${r.file.id}: ${sm.kept} ${sm.kind} examples`),
          h("p", { class: "muted" }, `from ${sm.stored_completions} stored completions with feedback; removed ` +
            `${sm.invalid} invalid, ${sm.duplicates} duplicate, ${sm.near_duplicates} near-duplicate`),
          validationBlock(v));
      } catch (e) {
        append(out, h("p", { class: "bad", id: "traffic-error" }, e.message));
      } finally {
        build.disabled = false;
      }
    });
    return h("div", { class: "panel" }, h("h2", null, "Training file from feedback"),
      h("div", { class: "toolbar" }, h("label", null, "Kind ", kind), h("label", null, "at least ", minimum, " examples"),
        build), out);
  }

  async function reviewCard(c) {
    const msgs = listOf(await api.get(`/v1/chat/completions/${encodeURIComponent(c.id)}/messages?limit=100`));
    const answer = (c.choices && c.choices[0] && c.choices[0].message.content) || "";
    const tags = Object.entries(c.metadata || {}).map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`));
    return h("div", { class: "review-item", dataset: { id: c.id } },
      h("div", { class: "review-head muted" }, h("span", { class: "mono" }, c.model), " · ", when(c.created), " ", tags),
      msgs.map((m) => h("div", { class: `msg ${m.role === "user" ? "user" : "context"}` }, `${m.role}: ${m.content || ""}`)),
      h("div", { class: "msg assistant review-answer" }, answer),
      feedbackControls(c.id, c.feedback, answer));
  }

  // ---------------------------------------------------------------- start
  window.addEventListener("hashchange", route);
  document.addEventListener("DOMContentLoaded", () => {
    setupKeyForm();
    pollHealth();
    route();
  });
})();
