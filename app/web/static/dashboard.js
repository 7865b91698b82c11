"use strict";
// The KB dashboard. Served by `kb serve` it reads the API's own JSON routes; inside a
// `kb report` file the same code reads the data embedded in the page (window.KB_DATA).
(function () {
  const DATA = window.KB_DATA || null;
  const $ = (selector) => document.querySelector(selector);
  const COLORS = { uptrend: "#12b76a", downtrend: "#f04438", trending: "#7a5af8", flat: "#2e90fa",
    other: "#98a2b3", untagged: "#d0d5dd", recommended: "#101828" };
  const charts = {};
  let workspace = null;
  let pollTimer = null;

  function make(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function fmt(value, digits = 2) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return typeof value === "number" ? value.toLocaleString(undefined, { maximumFractionDigits: digits }) : String(value);
  }

  function draw(id, config) {
    if (charts[id]) charts[id].destroy();
    config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options);
    const canvas = document.getElementById(id);
    charts[id] = new Chart(canvas, config);
    describe(canvas, config);
    return charts[id];
  }

  // Every chart's values as text: an aria-label summary on the canvas and a data table
  // beside it, so names and values are found by a screen reader, Ctrl-F and copy-paste.
  function describe(canvas, config) {
    const datasets = config.data.datasets || [];
    const labels = config.data.labels;
    let head, rows;
    if (labels) {
      head = ["", ...datasets.map((d) => d.label || "value")];
      rows = labels.map((label, i) => [String(label), ...datasets.map((d) => fmt(d.data[i], 3))]);
    } else {  // scatter: one row per series, its points summarised
      head = ["series", "points", "mean y", "min y", "max y"];
      rows = datasets.map((d) => {
        const ys = d.data.map((p) => p.y).filter((y) => typeof y === "number");
        const mean = ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : null;
        return [d.label || "series", fmt(ys.length, 0), fmt(mean, 3), fmt(ys.length ? Math.min(...ys) : null, 3),
          fmt(ys.length ? Math.max(...ys) : null, 3)];
      });
    }
    const caption = canvas.closest("figure")?.querySelector("figcaption")?.textContent || canvas.id;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `${caption}: ` + rows.map((r) => `${r[0]} ${r.slice(1).join(" / ")}`).join("; "));
    const holder = canvas.closest(".chart");
    let details = holder.nextElementSibling;
    if (!details || !details.classList.contains("chart-data")) {
      details = make("details", { class: "chart-data" });
      holder.after(details);
    }
    details.replaceChildren(make("summary", { text: "Data" }), make("table", { "data-chart": canvas.id },
      make("thead", {}, make("tr", {}, ...head.map((h) => make("th", { text: h })))),
      make("tbody", {}, ...rows.map((r) => make("tr", {}, ...r.map((c, i) => make("td", { class: i ? "num" : "", text: c })))))));
  }

  class AuthNeeded extends Error {}

  async function api(path, options) {
    const init = Object.assign({ credentials: "same-origin", headers: { accept: "application/json" } }, options);
    if (init.body) init.headers["content-type"] = "application/json";
    const response = await fetch(path, init);
    if (response.status === 401) throw new AuthNeeded();
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
      throw new Error(detail);
    }
    return body;
  }

  const q = (params) => new URLSearchParams(params).toString();
  const source = DATA ? {
    workspaces: async () => [{ id: DATA.workspace_id, name: DATA.workspace_name || "", trials: null }],
    overview: async () => DATA.overview,
    coverage: async () => DATA.coverage,
    strategy: async (ws, name) => DATA.strategies[name],
    gate: async () => DATA.gate,
    evaluation: async (ws, name) => DATA.evaluations[name],
    recommend: null,
  } : {
    workspaces: () => api("/kb/workspaces"),
    overview: (ws) => api(`/kb/dashboard/overview?${q({ workspace_id: ws })}`),
    coverage: (ws) => api(`/kb/dashboard/coverage?${q({ workspace_id: ws })}`),
    strategy: (ws, name) => api(`/kb/dashboard/strategy?${q({ workspace_id: ws, strategy_name: name })}`),
    gate: (ws) => api(`/kb/dashboard/gate?${q({ workspace_id: ws })}`),
    evaluation: (ws, name) => api(`/kb/evaluate?${q({ workspace_id: ws, strategy_name: name })}`),
    recommend: (body) => api("/kb/trials/recommend", { method: "POST", body: JSON.stringify(body) }),
  };

  function showMessage(text) {
    const node = $("#message");
    node.textContent = text || "";
    node.hidden = !text;
  }

  function setReady(view) {
    document.body.dataset.ready = view;
  }

  // ---- overview -------------------------------------------------------------------
  async function renderOverview() {
    const data = await source.overview(workspace);
    const byStatus = data.runs_by_kb_status;
    const cards = $("#overview-cards");
    cards.replaceChildren(
      ...[["runs", Object.values(byStatus).reduce((a, b) => a + b, 0)], ["with OOS regime", data.runs_with_regime_oos],
        ["candidate or promoted", data.eligible], ["active KB trials", data.active_trials],
        ["archived trials", data.archived_trials]]
        .map(([label, value]) => make("div", { class: "card" }, make("b", { text: fmt(value, 0) }), make("span", { text: label }))));
    draw("chart-status", { type: "bar", data: { labels: Object.keys(byStatus),
      datasets: [{ label: "runs", data: Object.values(byStatus), backgroundColor: "#2f5bd3" }] },
    options: { plugins: { legend: { display: false } } } });
    const trials = data.active_trials_by_strategy;
    draw("chart-trials", { type: "bar", data: { labels: Object.keys(trials),
      datasets: [{ label: "trials", data: Object.values(trials), backgroundColor: "#12b76a" }] },
    options: { indexAxis: "y", plugins: { legend: { display: false } } } });
    const rows = (data.backfills || []).map((b) => make("tr", { "data-status": b.status },
      make("td", { text: b.started_at.replace("T", " ").slice(0, 19) }), make("td", { text: b.kind }),
      make("td", { text: b.dry_run ? "dry run" : "real" }), make("td", { text: b.status }),
      make("td", { class: "num", text: fmt(b.counts.scanned, 0) }), make("td", { class: "num", text: fmt(b.counts.updated, 0) }),
      make("td", { text: b.heartbeat_at.replace("T", " ").slice(0, 19) }), make("td", { class: "ids", text: b.id })));
    $("#ledger tbody").replaceChildren(...rows);
    const running = (data.backfills || []).some((b) => b.status === "running");
    $("#ledger-live").textContent = running ? "(a backfill is running: refreshing every 2 s)" : "";
    clearTimeout(pollTimer);
    if (running && !DATA) pollTimer = setTimeout(() => currentView() === "overview" && renderOverview().catch(fail), 2000);
  }

  // ---- coverage -------------------------------------------------------------------
  function sharpeColor(value) {
    if (value === null) return "#fff";
    const t = Math.max(-1, Math.min(1, value / 2));
    return t >= 0 ? `rgba(18, 183, 106, ${0.15 + 0.65 * t})` : `rgba(240, 68, 56, ${0.15 + 0.65 * -t})`;
  }

  async function renderCoverage() {
    const data = await source.coverage(workspace);
    $("#thin-below").textContent = `${data.thin_below} trials`;
    const byKey = new Map(data.cells.map((c) => [`${c.tag}\u0000${c.strategy}`, c]));
    const head = make("tr", {}, make("th", { text: "regime tag" }), ...data.strategies.map((s) => make("th", { text: s })));
    const body = data.tags.map((tag) => make("tr", {}, make("th", { text: tag }), ...data.strategies.map((strategy) => {
      const cell = byKey.get(`${tag}\u0000${strategy}`);
      const td = make("td", { class: `cell ${cell.state}`, "data-tag": tag, "data-strategy": strategy,
        "data-trials": String(cell.trials), title: `${strategy} in ${tag}: ${cell.trials} trials` });
      if (cell.state === "blind") td.append("blind spot");
      else {
        td.style.background = sharpeColor(cell.median_sharpe);
        td.append(make("b", { text: fmt(cell.trials, 0) }), make("small", { text: `median ${fmt(cell.median_sharpe)}` }));
      }
      return td;
    })));
    $("#heatmap").replaceChildren(make("thead", {}, head), make("tbody", {}, ...body));
  }

  // ---- strategy -------------------------------------------------------------------
  let strategyData = null;
  let recommended = null;

  async function fillStrategySelects() {
    const cover = await source.coverage(workspace);
    for (const id of ["#strategy-select", "#evaluation-select"]) {
      const select = $(id);
      const keep = select.value;
      select.replaceChildren(...cover.strategies.map((s) => make("option", { value: s, text: s })));
      if (cover.strategies.includes(keep)) select.value = keep;
    }
    return cover.strategies;
  }

  function label(json) {
    const value = JSON.parse(json);
    return typeof value === "string" ? value : json;
  }

  function paramChart(param, data) {
    const id = `param-${param.name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    const categories = param.numeric ? null
      : [...new Set(data.points.map((p) => JSON.stringify(p.params[param.name] ?? null)))].sort();
    const x = (value) => (param.numeric ? value : categories.indexOf(JSON.stringify(value ?? null)));
    const datasets = data.buckets.map((bucket) => ({
      label: bucket, backgroundColor: COLORS[bucket], pointRadius: 2.5,
      data: data.points.filter((p) => p.bucket === bucket && (param.name in p.params))
        .map((p) => ({ x: x(p.params[param.name]), y: p.sharpe })),
    })).filter((d) => d.data.length);
    if (recommended && param.name in recommended.params) {
      datasets.push({ label: "recommended", backgroundColor: COLORS.recommended, pointStyle: "star",
        pointRadius: 12, borderColor: COLORS.recommended, borderWidth: 2,
        data: [{ x: x(recommended.params[param.name]), y: recommended.expected_sharpe ?? 0 }] });
    }
    const figure = make("figure", { "data-param": param.name },
      make("figcaption", { text: `OOS Sharpe against ${param.name}` }),
      make("div", { class: "chart" }, make("canvas", { id })));
    $("#param-charts").append(figure);
    const xScale = param.numeric ? { type: "linear", title: { display: true, text: param.name } }
      : { type: "linear", min: -0.5, max: categories.length - 0.5, title: { display: true, text: param.name },
        ticks: { stepSize: 1, callback: (v) => (Number.isInteger(v) && categories[v] !== undefined ? label(categories[v]) : "") } };
    draw(id, { type: "scatter", data: { datasets },
      options: { scales: { x: xScale, y: { title: { display: true, text: "OOS Sharpe" } } },
        plugins: { legend: { position: "bottom" } } } });
  }

  async function renderStrategy() {
    const strategies = await fillStrategySelects();
    const name = $("#strategy-select").value || strategies[0];
    Object.keys(charts).filter((k) => k.startsWith("param-")).forEach((k) => { charts[k].destroy(); delete charts[k]; });
    $("#param-charts").replaceChildren();
    if (!name) { $("#strategy-note").textContent = "No KB trials yet: run ingest first."; return; }
    strategyData = await source.strategy(workspace, name);
    if (recommended && recommended.strategy !== name) recommended = null;
    $("#strategy-note").textContent = `${fmt(strategyData.trials, 0)} trials` +
      (strategyData.sampled ? `, ${fmt(strategyData.shown, 0)} shown (a random sample)` : "") +
      "; colour: the trend of the trial's OOS window";
    const boxes = $("#tag-boxes");
    if (!boxes.childElementCount) {
      boxes.append(...strategyData.tags.map((tag) => make("label", {},
        make("input", { type: "checkbox", value: tag }), ` ${tag}`)));
    }
    strategyData.params.forEach((param) => paramChart(param, strategyData));
    const top = [...strategyData.points].sort((a, b) => b.sharpe - a.sharpe).slice(0, 20);
    $("#top-trials tbody").replaceChildren(...top.map((p) => make("tr", {},
      make("td", { class: "ids", text: JSON.stringify(p.params) }), make("td", { class: "num", text: fmt(p.sharpe, 3) }),
      make("td", { class: "num", text: fmt(p.dsr, 3) }), make("td", { text: p.bucket }),
      make("td", { class: "ids", text: p.run_id }))));
  }

  async function recommendFor(body) {
    delete document.body.dataset.ready;
    const name = $("#strategy-select").value;
    const answer = await source.recommend(Object.assign({ workspace_id: workspace, strategy_name: name }, body));
    recommended = { strategy: name, params: answer.params || {}, expected_sharpe: answer.expected_sharpe };
    await renderStrategy();
    const tags = ((answer.query && answer.query.tags) || []).join(", ") || "–";
    $("#recommend-result").textContent = Object.keys(recommended.params).length
      ? `recommended ${JSON.stringify(answer.params)} (expected Sharpe ${fmt(answer.expected_sharpe)}; regime ${tags})`
      : `no recommendation (${(answer.reasons || []).join(", ")})`;
    setReady("strategy");
  }

  function parseOhlcv(text) {
    const lines = text.trim().split(/\r?\n/);
    const header = lines.shift().split(",").map((h) => h.trim().toLowerCase().replace(/^\ufeff/, ""));
    const col = (names) => header.findIndex((h) => names.includes(h));
    const idx = { timestamp: col(["timestamp", "time", "date", "datetime"]), open: col(["open"]), high: col(["high"]),
      low: col(["low"]), close: col(["close"]), volume: col(["volume"]) };
    if ([idx.timestamp, idx.high, idx.low, idx.close].some((i) => i < 0)) {
      throw new Error("the file needs timestamp, high, low and close columns");
    }
    return lines.slice(-2000).map((line) => {
      const cells = line.split(",");
      const bar = { timestamp: cells[idx.timestamp], high: +cells[idx.high], low: +cells[idx.low], close: +cells[idx.close] };
      if (idx.open >= 0) bar.open = +cells[idx.open];
      if (idx.volume >= 0) bar.volume = +cells[idx.volume];
      return bar;
    });
  }

  // ---- gate -----------------------------------------------------------------------
  async function renderGate() {
    const data = await source.gate(workspace);
    draw("chart-funnel", { type: "bar", data: { labels: data.funnel.map((f) => f.stage),
      datasets: [{ label: "runs", data: data.funnel.map((f) => f.n), backgroundColor: "#2f5bd3" }] },
    options: { indexAxis: "y", plugins: { legend: { display: false } } } });
    $("#gate-strategies tbody").replaceChildren(...Object.entries(data.trials_by_strategy || {}).map(([name, n]) =>
      make("tr", {}, make("td", { text: name }), make("td", { class: "num", text: fmt(n, 0) }))));
    const latest = data.latest_candidacy;
    const reasons = latest ? Object.entries(latest.counts.reasons || {}).sort((a, b) => b[1] - a[1]) : [];
    draw("chart-reasons", { type: "bar", data: { labels: reasons.map((r) => r[0]),
      datasets: [{ label: "rejected", data: reasons.map((r) => r[1]), backgroundColor: "#f04438" }] },
    options: { indexAxis: "y", plugins: { legend: { display: false } } } });
    $("#gate-run").textContent = latest
      ? `Latest candidacy backfill ${latest.id} (${latest.dry_run ? "dry run" : "real"}, ${latest.status}): ` +
        `scanned ${fmt(latest.counts.scanned, 0)}, passed ${fmt(latest.counts.passed, 0)}, rejected ${fmt(latest.counts.rejected, 0)}`
      : "No candidacy backfill has run on this workspace yet.";
    const examples = latest ? latest.counts.examples || {} : {};
    $("#reasons tbody").replaceChildren(...reasons.map(([reason, n]) => make("tr", { "data-reason": reason },
      make("td", { text: reason }), make("td", { class: "num", text: fmt(n, 0) }),
      make("td", { class: "ids", text: (examples[reason] || []).join(" ") }))));
  }

  // ---- evaluation -----------------------------------------------------------------
  async function renderEvaluation() {
    const strategies = await fillStrategySelects();
    const name = $("#evaluation-select").value || strategies[0];
    const cards = $("#evaluation-cards");
    if (!name) { cards.replaceChildren(make("p", { text: "No KB trials yet." })); return; }
    const data = await source.evaluation(workspace, name);
    if (!data.decisions) {
      cards.replaceChildren(make("p", { class: "muted",
        text: `Not enough dated history to replay ${name} walk-forward (${(data.reasons || []).join(", ")}).` }));
      ["chart-realised", "chart-calibration"].forEach((id) => { if (charts[id]) { charts[id].destroy(); delete charts[id]; } });
      $("#per-regime tbody").replaceChildren();
      return;
    }
    cards.replaceChildren(...[["uplift over the global best", `${fmt(data.uplift, 3)} ± ${fmt(data.uplift_se, 3)}`],
      ["hit rate", fmt(data.hit_rate, 3)], ["decisions", fmt(data.decisions, 0)], ["windows", fmt(data.windows, 0)],
      ["tuning", `k=${data.tuning.k}, shrink=${data.tuning.shrink}`]]
      .map(([label, value]) => make("div", { class: "card" }, make("b", { text: value }), make("span", { text: label }))));
    const realised = data.realised_sharpe;
    draw("chart-realised", { type: "bar", data: { labels: Object.keys(realised).map((k) => k.replace("_", " ")),
      datasets: [{ label: "mean realised OOS Sharpe", data: Object.values(realised),
        backgroundColor: ["#2f5bd3", "#98a2b3", "#98a2b3", "#d0d5dd", "#12b76a"] }] },
    options: { plugins: { legend: { display: false } } } });
    const terciles = Object.entries(data.calibration);
    draw("chart-calibration", { type: "bar", data: { labels: terciles.map(([k, v]) => `${k} (conf ${fmt(v.mean_confidence)})`),
      datasets: [{ label: "realised Sharpe", data: terciles.map(([, v]) => v.realised), backgroundColor: "#7a5af8" }] },
    options: { plugins: { legend: { display: false } } } });
    const pr = data.promises || {};
    $("#promises tbody").replaceChildren(...[
      ["mean expected Sharpe (calibrated)", fmt(pr.mean_expected, 3)], ["mean realised Sharpe", fmt(pr.mean_realised, 3)],
      ["80% interval coverage", fmt(pr.interval_coverage, 3)], ["configurations tried", fmt(data.configurations_tried, 0)],
      ["regime conditioned now", String(data.regime_conditioned)], ["rule", data.rule || "–"]]
      .map(([k, v]) => make("tr", {}, make("th", { text: k }), make("td", { text: v }))));
    $("#per-regime tbody").replaceChildren(...Object.entries(data.per_regime).map(([tag, r]) => make("tr", {},
      make("td", { text: tag }), make("td", { class: "num", text: fmt(r.decisions, 0) }),
      make("td", { class: "num", text: fmt(r.recommend, 3) }), make("td", { class: "num", text: fmt(r.global_best, 3) }))));
  }

  // ---- navigation -----------------------------------------------------------------
  const VIEWS = { overview: renderOverview, coverage: renderCoverage, strategy: renderStrategy, gate: renderGate,
    evaluation: renderEvaluation };

  function currentView() {
    const name = location.hash.replace("#", "");
    return name in VIEWS ? name : "overview";
  }

  function fail(error) {
    if (error instanceof AuthNeeded) { showLogin(); return; }
    showMessage(error.message || String(error));
  }

  async function show() {
    const view = currentView();
    document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
    document.querySelectorAll(".view").forEach((s) => { s.hidden = s.id !== `view-${view}`; });
    if (!workspace) return;
    showMessage("");
    delete document.body.dataset.ready;
    try {
      await VIEWS[view]();
      setReady(view);
    } catch (error) {
      fail(error);
    }
  }

  function showLogin() {
    document.querySelectorAll(".view").forEach((s) => { s.hidden = true; });
    $("#chooser").hidden = true;
    $("#login").hidden = false;
    $("#token").focus();
    document.body.dataset.ready = "login";
  }

  async function login(event) {
    event.preventDefault();
    const field = $("#token");
    try {
      const response = await fetch("/kb/session", { method: "POST", credentials: "same-origin",
        headers: { "content-type": "application/json" }, body: JSON.stringify({ token: field.value }) });
      field.value = "";
      if (!response.ok) { $("#login-error").textContent = "That is not the server's token."; return; }
      $("#login").hidden = true;
      $("#login-error").textContent = "";
      await start();
    } catch (error) {
      $("#login-error").textContent = error.message;
    }
  }

  async function start() {
    const wanted = new URLSearchParams(location.search).get("workspace_id");
    let list;
    try {
      list = await source.workspaces();
    } catch (error) {
      fail(error);
      return;
    }
    const select = $("#workspace");
    select.replaceChildren(...list.map((w) => make("option", { value: w.id,
      text: `${w.name || "workspace"} · ${w.id.slice(0, 8)}` + (w.trials === null ? "" : ` · ${fmt(w.trials, 0)} trials`) })));
    if (wanted && !list.some((w) => w.id === wanted)) {
      select.prepend(make("option", { value: wanted, text: wanted }));
    }
    workspace = wanted || (list[0] && list[0].id) || null;
    if (!workspace) { showMessage("No workspace yet: run `kb demo` or `kb import` first."); return; }
    select.value = workspace;
    $("#chooser").hidden = Boolean(DATA);
    $("#subtitle").textContent = DATA ? `report of workspace ${workspace}, made ${DATA.generated_at}` : "";
    await show();
  }

  document.addEventListener("DOMContentLoaded", () => {
    window.addEventListener("hashchange", show);
    $("#login").addEventListener("submit", login);
    $("#workspace").addEventListener("change", (event) => {
      workspace = event.target.value;
      const url = new URL(location.href);
      url.searchParams.set("workspace_id", workspace);
      history.replaceState(null, "", url);
      recommended = null;
      show();
    });
    $("#strategy-select").addEventListener("change", () => show());
    $("#evaluation-select").addEventListener("change", () => show());
    if (source.recommend) {
      $("#recommend-tags").addEventListener("click", () => {
        $("#recommend-result").textContent = "";
        const tags = [...document.querySelectorAll("#tag-boxes input:checked")].map((i) => i.value);
        if (!tags.length) { $("#recommend-result").textContent = "tick at least one tag"; return; }
        recommendFor({ tags }).catch(fail);
      });
      $("#ohlcv-file").addEventListener("change", async (event) => {
        const file = event.target.files[0];
        if (!file) return;
        delete document.body.dataset.ready;
        $("#recommend-result").textContent = `reading ${file.name}…`;
        try {
          await recommendFor({ ohlcv: parseOhlcv(await file.text()) });
        } catch (error) {
          $("#recommend-result").textContent = error.message;
          setReady("strategy");
        }
      });
    } else {
      $("#recommend-controls").hidden = true;
    }
    start();
  });
}());
