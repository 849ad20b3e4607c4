// privmesh DP dashboards: live tiles and charts over /v1/queries and /v1/live.
//
// Plain browser JavaScript, no build step, no external assets. The live stream is read
// with fetch() + ReadableStream (EventSource cannot send an Authorization header) and the
// SSE wire format is parsed here. Every value from the API is put in the page with
// textContent or SVG attributes, never as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "privmesh.apiKey";
  const HISTORY_LIMIT = 30;
  const MAX_POINTS = 60;
  const WATCHDOG_MS = 45000; // three missed keep-alives (sent every ~15 s): reconnect
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHART = { w: 380, h: 150, left: 46, right: 12, top: 10, bottom: 22 };

  const state = {
    key: sessionStorage.getItem(KEY_STORAGE) || "",
    classes: new Map(), // id -> {meta, budget, series, latest, problem, el}
    generation: 0, // bumped on every (re)start; older loops see they are stale and stop
    controller: null,
    retryTimer: null,
    watchdog: null,
    backoff: BACKOFF_MIN_MS,
    lastEventId: "",
    historySupported: true,
    streamed: false, // a stream was open before in this start(): a reconnect reloads history
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- formatting

  const intFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const decFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
  const compactFmt = new Intl.NumberFormat("en-US", {
    notation: "compact",
    maximumFractionDigits: 1,
  });

  function fmtNumber(v) {
    if (v === null || v === undefined || Number.isNaN(Number(v))) return "—";
    const n = Number(v);
    return Number.isInteger(n) ? intFmt.format(n) : decFmt.format(n);
  }

  // A CI bound is shown at the precision of its value, rounded outwards (lower bound down,
  // upper bound up), so the displayed interval always contains the released interval.
  function fmtBound(bound, value, side) {
    if (bound === null || bound === undefined) return "—";
    const digits = Number.isInteger(Number(value)) ? 0 : 2;
    const f = 10 ** digits;
    const n = side < 0 ? Math.floor(Number(bound) * f) / f : Math.ceil(Number(bound) * f) / f;
    return fmtNumber(n);
  }

  function fmtCompact(v) {
    return Math.abs(v) < 1000 ? decFmt.format(v) : compactFmt.format(v);
  }

  function utcTime(iso) {
    const d = iso instanceof Date ? iso : new Date(iso);
    return Number.isNaN(d.getTime()) ? "—" : d.toISOString().slice(11, 19);
  }

  function utcDateTime(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${d.toISOString().slice(0, 19).replace("T", " ")} UTC`;
  }

  function fmtIn(iso) {
    const ms = new Date(iso).getTime() - Date.now();
    if (Number.isNaN(ms)) return "";
    if (ms <= 0) return "now";
    const min = Math.round(ms / 60000);
    if (min < 1) return "in < 1 min";
    if (min < 60) return `in ${min} min`;
    return `in ${Math.floor(min / 60)} h ${min % 60} min`;
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---------------------------------------------------------------- HTTP

  function authHeaders(extra) {
    const headers = { ...(extra || {}) };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    return headers;
  }

  async function readBody(response) {
    const type = response.headers.get("content-type") || "";
    try {
      if (type.includes("json")) return await response.json();
      const text = await response.text();
      return { detail: text.slice(0, 300) };
    } catch (err) {
      return { detail: String(err) };
    }
  }

  async function getJson(path) {
    const response = await fetch(path, {
      headers: authHeaders({ Accept: "application/json" }),
      cache: "no-store",
    });
    return { status: response.status, ok: response.ok, body: await readBody(response) };
  }

  // ---------------------------------------------------------------- SSE wire format

  // Parses text/event-stream per the HTML standard: "field: value" lines, a blank line
  // dispatches, ":" starts a comment (keep-alive), data lines join with "\n".
  class SseParser {
    constructor(onEvent, onComment, onRetry) {
      this.onEvent = onEvent;
      this.onComment = onComment;
      this.onRetry = onRetry;
      this.buffer = "";
      this.data = [];
      this.type = "";
      this.id = "";
      this.first = true;
    }

    feed(text) {
      if (this.first && text) {
        if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
        this.first = false;
      }
      this.buffer += text;
      // A trailing "\r" may be the first half of "\r\n": it waits for the next chunk.
      const cut = this.buffer.endsWith("\r") ? this.buffer.length - 1 : this.buffer.length;
      const lines = this.buffer.slice(0, cut).split(/\r\n|\r|\n/);
      this.buffer = lines.pop() + this.buffer.slice(cut); // an unterminated line waits too
      for (const line of lines) this.line(line);
    }

    line(line) {
      if (line === "") return this.dispatch();
      if (line.startsWith(":")) return this.onComment(line.slice(1).trim());
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") this.type = value;
      else if (field === "data") this.data.push(value);
      else if (field === "id" && !value.includes("\0")) this.id = value;
      else if (field === "retry" && /^\d+$/.test(value)) this.onRetry(Number(value));
      return undefined;
    }

    dispatch() {
      const type = this.type || "message";
      const data = this.data.join("\n");
      const had = this.data.length > 0;
      this.type = "";
      this.data = [];
      if (had) this.onEvent({ type, data, id: this.id });
    }
  }

  // ---------------------------------------------------------------- connection state

  function setConn(stateName, text) {
    const pill = $("conn");
    pill.dataset.state = stateName;
    $("conn-text").textContent = text || stateName;
  }

  function touchUpdate() {
    const now = new Date();
    const node = $("last-update");
    node.textContent = `${utcTime(now)} UTC`;
    node.dateTime = now.toISOString();
  }

  function showAuthError(status, body) {
    const box = $("auth-error");
    box.replaceChildren();
    const title = status === 403 ? "Forbidden:" : state.key ? "Not authorised:" : "API key needed:";
    const detail = body.detail || body.title || `HTTP ${status}`;
    box.append(el("strong", "", title), el("span", "auth-detail", detail));
    if (!state.key) {
      const hint = " — paste a key above; it is kept in this tab's session storage only.";
      box.append(el("span", "muted", hint));
    }
    box.hidden = false;
    setConn("auth", status === 403 ? "forbidden" : state.key ? "not authorised" : "key needed");
    clearTiles(`${state.key ? "Use a valid" : "Enter an"} API key to see the releases.`);
    $("api-key").focus();
  }

  function showGlobalProblem(body) {
    const box = $("global-problem");
    box.replaceChildren();
    if (!body) {
      box.hidden = true;
      return;
    }
    box.append(el("strong", "", body.title || "Problem"), el("span", "", body.detail || ""));
    box.hidden = false;
  }

  // ---------------------------------------------------------------- lifecycle

  function stop() {
    state.generation += 1;
    if (state.controller) state.controller.abort();
    state.controller = null;
    clearTimeout(state.retryTimer);
    clearTimeout(state.watchdog);
  }

  function start() {
    stop();
    const gen = state.generation;
    state.backoff = BACKOFF_MIN_MS;
    state.streamed = false;
    $("auth-error").hidden = true;
    $("api-key").placeholder = state.key ? "key set for this tab" : "paste your key";
    $("key-forget").hidden = !state.key;
    setConn("connecting", "connecting");
    loadClasses(gen);
  }

  function retryLater(gen, what) {
    if (gen !== state.generation) return;
    const delay = Math.round(state.backoff * (0.8 + Math.random() * 0.4));
    state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_MS);
    setConn("reconnecting", `reconnecting (retry in ${Math.max(1, Math.round(delay / 1000))} s)`);
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(() => {
      if (gen === state.generation) what();
    }, delay);
  }

  async function loadClasses(gen) {
    let res;
    try {
      res = await getJson("/v1/queries");
    } catch (err) {
      if (gen !== state.generation) return;
      showGlobalProblem({ title: "API unreachable", detail: String(err) });
      retryLater(gen, () => loadClasses(gen));
      return;
    }
    if (gen !== state.generation) return;
    if (res.status === 401 || res.status === 403) {
      showAuthError(res.status, res.body);
      return;
    }
    if (!res.ok) {
      showGlobalProblem(res.body);
      retryLater(gen, () => loadClasses(gen));
      return;
    }
    showGlobalProblem(null);
    const classes = Array.isArray(res.body.classes) ? res.body.classes : [];
    syncTiles(classes);
    await Promise.all(classes.map((c) => loadHistory(gen, c.id)));
    if (gen === state.generation) connect(gen);
  }

  function historyItems(body) {
    if (Array.isArray(body)) return body;
    for (const name of ["releases", "history", "items", "entries"]) {
      if (body && Array.isArray(body[name])) return body[name];
    }
    return [];
  }

  async function loadHistory(gen, id) {
    if (!state.historySupported) return;
    let res;
    try {
      res = await getJson(`/v1/queries/${encodeURIComponent(id)}/history?limit=${HISTORY_LIMIT}`);
    } catch (_err) {
      return; // history is a nicety: the live stream fills the chart
    }
    if (gen !== state.generation) return;
    if (res.status === 404 && res.body.code !== "unknown_query_class") {
      state.historySupported = false;
      return;
    }
    if (!res.ok) return;
    const cls = state.classes.get(id);
    if (!cls) return;
    for (const item of historyItems(res.body)) {
      if (item && item.window) addRelease(cls, { class_id: id, ...item });
    }
    renderTile(cls);
  }

  async function connect(gen) {
    const controller = new AbortController();
    state.controller = controller;
    let response;
    try {
      const extra = { Accept: "text/event-stream" };
      if (state.lastEventId) extra["Last-Event-ID"] = state.lastEventId;
      response = await fetch("/v1/live", {
        headers: authHeaders(extra),
        cache: "no-store",
        signal: controller.signal,
      });
    } catch (err) {
      if (gen === state.generation) retryLater(gen, () => connect(gen));
      return;
    }
    if (gen !== state.generation) return;
    if (response.status === 401 || response.status === 403) {
      showAuthError(response.status, await readBody(response));
      return;
    }
    if (!response.ok || !response.body) {
      showGlobalProblem(await readBody(response));
      retryLater(gen, () => connect(gen));
      return;
    }
    showGlobalProblem(null);
    setConn("live", "live");
    if (state.streamed) {
      // A reconnect: the stream resumes at the newest window; history fills the gap.
      for (const id of state.classes.keys()) loadHistory(gen, id);
    }
    state.streamed = true;
    const parser = new SseParser(
      (event) => {
        if (event.id) state.lastEventId = event.id;
        handleEvent(event);
      },
      () => touchHeartbeat(),
      (ms) => {
        state.backoff = Math.min(Math.max(ms, BACKOFF_MIN_MS), BACKOFF_MAX_MS);
      },
    );
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const arm = () => {
      clearTimeout(state.watchdog);
      state.watchdog = setTimeout(() => controller.abort(), WATCHDOG_MS);
    };
    arm();
    let received = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        if (!received) {
          received = true;
          state.backoff = BACKOFF_MIN_MS;
        }
        parser.feed(decoder.decode(value, { stream: true }));
      }
    } catch (_err) {
      // aborted (key change, watchdog) or the connection dropped: decided below
    }
    clearTimeout(state.watchdog);
    if (gen === state.generation) retryLater(gen, () => connect(gen));
  }

  function touchHeartbeat() {
    $("conn").title = `last keep-alive ${utcTime(new Date())} UTC`;
  }

  function handleEvent(event) {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (_err) {
      return; // not ours to show
    }
    touchUpdate();
    if (event.type === "release") onRelease(data);
    else if (event.type === "problem") onProblem(data);
    else if (event.type === "budget") onBudget(data);
  }

  // ---------------------------------------------------------------- state updates

  function classState(id) {
    let cls = state.classes.get(id);
    if (!cls) {
      cls = newClass({ id, title: id });
      state.classes.set(id, cls);
      $("tiles").append(cls.el.root);
      $("empty").hidden = true;
    }
    return cls;
  }

  // Keyed by where a window ends: a running total's windows all start at its horizon.
  function windowKey(release) {
    return release.window && release.window.end
      ? new Date(release.window.end).getTime()
      : Number.NaN;
  }

  function addRelease(cls, release) {
    const key = windowKey(release);
    if (Number.isNaN(key)) return;
    cls.series = cls.series.filter((r) => windowKey(r) !== key);
    cls.series.push(release);
    cls.series.sort((a, b) => windowKey(a) - windowKey(b));
    if (cls.series.length > MAX_POINTS) cls.series = cls.series.slice(-MAX_POINTS);
    const newest = cls.series[cls.series.length - 1];
    if (!cls.latest || windowKey(newest) >= windowKey(cls.latest)) cls.latest = newest;
  }

  function onRelease(release) {
    if (!release || !release.class_id) return;
    const cls = classState(release.class_id);
    addRelease(cls, release);
    if (release.budget) cls.budget = release.budget;
    cls.problem = null;
    renderTile(cls);
  }

  function onProblem(problem) {
    if (!problem) return;
    if (!problem.class_id) {
      showGlobalProblem(problem);
      return;
    }
    const cls = classState(problem.class_id);
    cls.problem = problem;
    if (problem.budget) cls.budget = problem.budget;
    renderTile(cls);
  }

  function onBudget(data) {
    if (!data || !data.class_id || !data.budget) return;
    const cls = classState(data.class_id);
    cls.budget = data.budget;
    renderTile(cls);
  }

  // ---------------------------------------------------------------- tiles

  function clearTiles(message) {
    state.classes.clear();
    $("tiles").replaceChildren();
    const empty = $("empty");
    empty.textContent = message;
    empty.hidden = false;
  }

  function syncTiles(classes) {
    const seen = new Set();
    for (const meta of classes) {
      seen.add(meta.id);
      let cls = state.classes.get(meta.id);
      if (!cls) {
        cls = newClass(meta);
        state.classes.set(meta.id, cls);
        $("tiles").append(cls.el.root);
      }
      cls.meta = meta;
      if (meta.budget) cls.budget = meta.budget;
      renderTile(cls);
    }
    for (const [id, cls] of state.classes) {
      if (!seen.has(id)) {
        cls.el.root.remove();
        state.classes.delete(id);
      }
    }
    const empty = $("empty");
    empty.textContent = "No query classes are registered.";
    empty.hidden = state.classes.size > 0;
  }

  function newClass(meta) {
    const root = el("article", "tile");
    root.dataset.classId = meta.id;
    const head = el("header", "tile-head");
    const title = el("h2", "title");
    const chips = el("div", "chips");
    head.append(title, chips);

    const problem = el("div", "problem");
    problem.setAttribute("role", "alert");
    problem.hidden = true;
    const problemTitle = el("span", "problem-title");
    const problemDetail = el("span", "problem-detail");
    const problemCode = el("span", "problem-code");
    const problemExtra = el("div", "problem-extra muted");
    problem.append(problemTitle, problemDetail, problemCode, problemExtra);

    const body = el("div", "tile-body");
    const valueBlock = el("div", "value-block");
    const valueLine = el("div", "value-line");
    const value = el("span", "value none", "no release yet");
    const suppressed = el("span", "suppressed-mark", "suppressed");
    suppressed.hidden = true;
    valueLine.append(value, suppressed);
    const ci = el("div", "ci");
    const ciLo = el("span", "ci-lo");
    const ciHi = el("span", "ci-hi");
    ci.append(el("span", "ci-label", "95% CI"), ciLo, document.createTextNode(" – "), ciHi);
    ci.hidden = true;
    const windowLine = el("div", "window muted");
    const eps = el("div", "eps muted");
    valueBlock.append(valueLine, ci, windowLine, eps);

    const budget = el("div", "budget-block");
    const gaugeLabel = el("div", "gauge-label");
    const spentLine = el("strong", "budget-used");
    const budgetSpent = el("span", "budget-spent", "—");
    const budgetTotal = el("span", "budget-total", "—");
    const text = (t) => document.createTextNode(t);
    spentLine.append(budgetSpent, text(" / "), budgetTotal, text(" ε"));
    gaugeLabel.append(el("span", "", "Budget spent"), spentLine);
    const gauge = el("div", "gauge");
    gauge.setAttribute("role", "meter");
    gauge.setAttribute("aria-label", "privacy budget spent");
    const gaugeFill = el("div", "gauge-fill");
    gauge.append(gaugeFill);
    const gaugeFoot = el("div", "gauge-foot");
    const remaining = el("span", "budget-remaining", "—");
    const resets = el("time", "budget-resets");
    gaugeFoot.append(remaining, text(" ε remaining · resets "), resets);
    budget.append(gaugeLabel, gauge, gaugeFoot);
    budget.hidden = !meta.budget;
    body.append(valueBlock, budget);

    const chartWrap = el("div", "chart-wrap");
    const groups = el("table", "groups");
    groups.hidden = true;
    const foot = el("footer", "tile-foot");
    root.append(head, problem, body, chartWrap, groups, foot);

    return {
      meta,
      budget: meta.budget || null,
      series: [],
      latest: null,
      problem: null,
      el: {
        root, title, chips, problem, problemTitle, problemDetail, problemCode, problemExtra,
        value, suppressed, ci, ciLo, ciHi, windowLine, eps, budget, budgetSpent, budgetTotal, gauge,
        gaugeFill, remaining, resets, chartWrap, groups, foot,
      },
    };
  }

  function renderTile(cls) {
    const { meta, el: e } = cls;
    e.title.textContent = meta.title || meta.id;
    e.title.title = meta.id;
    const chips = [meta.id];
    if (meta.aggregate) chips.push([meta.aggregate, meta.mechanism].filter(Boolean).join(" · "));
    if (meta.epsilon_per_release) chips.push(`ε ${meta.epsilon_per_release} / release`);
    e.chips.replaceChildren(...chips.map((c) => el("span", "chip", c)));

    renderProblem(cls);
    renderValue(cls);
    renderBudget(cls);
    renderChart(cls);
  }

  function renderProblem(cls) {
    const { problem: p, el: e } = cls;
    e.problem.hidden = !p;
    e.root.dataset.state = p ? "problem" : cls.latest ? "ok" : "empty";
    if (!p) return;
    e.problem.dataset.code = p.code || "";
    e.problem.dataset.status = String(p.status || "");
    e.problemTitle.textContent = p.title || "Problem";
    e.problemDetail.textContent = p.detail || "";
    e.problemCode.textContent = p.code ? `${p.code}${p.status ? ` · ${p.status}` : ""}` : "";
    const extra = [];
    if (p.resets_at) {
      extra.push(`budget resets ${utcDateTime(p.resets_at)} (${fmtIn(p.resets_at)})`);
    }
    if (p.retry_after_seconds) extra.push(`next try in about ${p.retry_after_seconds} s`);
    e.problemExtra.textContent = extra.join(" · ");
    e.problemExtra.hidden = extra.length === 0;
  }

  function renderValue(cls) {
    const { latest: r, el: e } = cls;
    if (!r) {
      e.value.textContent = "no release yet";
      e.value.className = "value none";
      e.ci.hidden = true;
      e.suppressed.hidden = true;
      e.windowLine.textContent = "";
      e.eps.textContent = "";
      e.groups.hidden = true;
      e.foot.replaceChildren();
      return;
    }
    const grouped = Array.isArray(r.groups);
    const missing = r.value === null || r.value === undefined;
    const suppressed = Boolean(r.suppressed) || (!grouped && missing);
    if (grouped) {
      const shown = r.groups.filter((g) => !g.suppressed).length;
      e.value.textContent = `${r.groups.length} groups`;
      e.value.className = "value";
      e.suppressed.hidden = shown === r.groups.length;
      e.suppressed.textContent = `${r.groups.length - shown} suppressed`;
      e.ci.hidden = true;
      renderGroupsTable(e.groups, r.groups);
    } else {
      e.groups.hidden = true;
      e.value.textContent = suppressed ? "—" : fmtNumber(r.value);
      e.value.className = suppressed ? "value none" : "value";
      e.suppressed.hidden = !suppressed;
      const below = r.suppress_below ? ` · below ${fmtNumber(r.suppress_below)}` : "";
      e.suppressed.textContent = `suppressed${below}`;
      e.suppressed.title = "the noisy count fell below the class's publication threshold";
      const ci = Array.isArray(r.ci95) ? r.ci95 : null;
      e.ci.hidden = suppressed || !ci;
      if (ci) {
        e.ciLo.textContent = fmtBound(ci[0], r.value, -1);
        e.ciHi.textContent = fmtBound(ci[1], r.value, 1);
      }
    }
    if (r.window) {
      e.windowLine.textContent = `window ${utcTime(r.window.start)} → ${utcTime(r.window.end)} UTC`;
      e.windowLine.title = `${utcDateTime(r.window.start)} to ${utcDateTime(r.window.end)}`;
    }
    e.eps.replaceChildren();
    if (r.epsilon_charged !== undefined) {
      e.eps.append(el("span", "eps-charged", `ε charged ${r.epsilon_charged}`));
      if (r.reused) e.eps.append(document.createTextNode(" · "), el("span", "reused", "reused"));
    }
    const foot = [];
    if (r.released_at) foot.push(`released ${utcTime(r.released_at)} UTC`);
    if (r.ledger_entry !== undefined) foot.push(`ledger #${r.ledger_entry}`);
    if (r.data_version) foot.push(r.data_version);
    e.foot.replaceChildren(...foot.map((f) => el("span", "", f)));
    const released = e.foot.firstChild;
    if (released && r.released_at) released.className = "released-at";
  }

  function renderGroupsTable(table, groups) {
    table.replaceChildren();
    for (const g of groups.slice(0, 8)) {
      const tr = el("tr");
      tr.append(el("td", "", String(g.key)));
      if (g.suppressed) {
        tr.append(el("td", "num muted", "suppressed"), el("td", "num"));
      } else {
        const ci = Array.isArray(g.ci95)
          ? `${fmtBound(g.ci95[0], g.value, -1)} – ${fmtBound(g.ci95[1], g.value, 1)}`
          : "";
        tr.append(el("td", "num", fmtNumber(g.value)), el("td", "num muted", ci));
      }
      table.append(tr);
    }
    table.hidden = groups.length === 0;
  }

  function renderBudget(cls) {
    const { budget: b, el: e } = cls;
    e.budget.hidden = !b;
    if (!b) return;
    const spent = Number(b.epsilon_spent);
    const total = Number(b.epsilon_budget);
    const share = total > 0 ? Math.min(1, Math.max(0, spent / total)) : 0;
    e.budgetSpent.textContent = b.epsilon_spent;
    e.budgetTotal.textContent = b.epsilon_budget;
    e.remaining.textContent = b.epsilon_remaining;
    e.gaugeFill.style.width = `${(share * 100).toFixed(1)}%`;
    e.gaugeFill.dataset.level = share >= 1 ? "full" : share >= 0.8 ? "high" : "ok";
    e.gauge.setAttribute("aria-valuemin", "0");
    e.gauge.setAttribute("aria-valuemax", String(total));
    e.gauge.setAttribute("aria-valuenow", String(spent));
    e.gauge.title = `period ${b.period}: ${b.epsilon_spent} of ${b.epsilon_budget} ε spent`;
    if (b.resets_at) {
      e.resets.dateTime = b.resets_at;
      e.resets.textContent = `${utcTime(b.resets_at).slice(0, 5)} UTC (${fmtIn(b.resets_at)})`;
      e.resets.title = utcDateTime(b.resets_at);
    }
  }

  // ---------------------------------------------------------------- charts

  function niceTicks(lo, hi, count) {
    const span = hi - lo;
    const raw = span / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
    const ticks = [];
    for (let i = Math.ceil(lo / step); i * step <= hi + step * 1e-9; i += 1) {
      ticks.push(i === 0 ? 0 : i * step); // integer steps: no drift, no "-0"
    }
    return ticks;
  }

  function yScale(values, includeZero) {
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (includeZero) {
      lo = Math.min(lo, 0);
      hi = Math.max(hi, 0);
    }
    if (hi - lo < 1e-9) {
      lo -= 1;
      hi += 1;
    }
    const pad = (hi - lo) * 0.08;
    lo -= includeZero && lo === 0 ? 0 : pad;
    hi += pad;
    const y0 = CHART.top;
    const y1 = CHART.h - CHART.bottom;
    const scale = (v) => y1 - ((v - lo) / (hi - lo)) * (y1 - y0);
    return { lo, hi, scale };
  }

  function hline(cls, py) {
    return svg("line", { class: cls, x1: CHART.left, x2: CHART.w - CHART.right, y1: py, y2: py });
  }

  function drawYAxis(root, y) {
    for (const t of niceTicks(y.lo, y.hi, 4)) {
      const py = y.scale(t);
      root.append(
        hline("grid-line", py),
        svg("text", { x: CHART.left - 6, y: py + 3, "text-anchor": "end" }, fmtCompact(t)),
      );
    }
  }

  function renderChart(cls) {
    const wrap = cls.el.chartWrap;
    const r = cls.latest;
    if (r && Array.isArray(r.groups)) {
      wrap.replaceChildren(barChart(r.groups));
      return;
    }
    if (cls.series.length === 0) {
      wrap.replaceChildren(el("div", "chart-empty", "The chart fills as windows are released."));
      return;
    }
    wrap.replaceChildren(seriesChart(cls.series));
  }

  function seriesChart(series) {
    const root = svg("svg", {
      class: "chart series",
      viewBox: `0 0 ${CHART.w} ${CHART.h}`,
      role: "img",
      "aria-label": "released values with 95% confidence band",
    });
    const shown = series.filter((r) => !r.suppressed && typeof r.value === "number");
    const ys = [];
    for (const r of shown) {
      ys.push(r.value);
      if (Array.isArray(r.ci95)) ys.push(r.ci95[0], r.ci95[1]);
    }
    const y = yScale(ys.length ? ys : [0, 1], false);
    drawYAxis(root, y);

    const times = series.map((r) => new Date(r.window.end).getTime());
    const t0 = Math.min(...times);
    const t1 = Math.max(...times);
    const x0 = CHART.left + 8;
    const x1 = CHART.w - CHART.right - 8;
    const px = (t) => (t1 === t0 ? (x0 + x1) / 2 : x0 + ((t - t0) / (t1 - t0)) * (x1 - x0));

    // Contiguous runs of shown points: each gets its own band and line, so a suppressed
    // window breaks the series instead of being interpolated over.
    const runs = [];
    let run = [];
    for (const r of series) {
      if (!r.suppressed && typeof r.value === "number") run.push(r);
      else if (run.length) {
        runs.push(run);
        run = [];
      }
    }
    if (run.length) runs.push(run);

    for (const part of runs) {
      const pts = part.map((r) => {
        const ci = Array.isArray(r.ci95) ? r.ci95 : [r.value, r.value];
        return {
          x: px(new Date(r.window.end).getTime()),
          y: y.scale(r.value),
          lo: y.scale(ci[0]),
          hi: y.scale(ci[1]),
        };
      });
      let band;
      if (pts.length === 1) {
        const p = pts[0];
        band = `M${p.x - 6},${p.hi}H${p.x + 6}V${p.lo}H${p.x - 6}Z`;
      } else {
        const upper = pts.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.hi.toFixed(1)}`);
        const lower = pts.slice().reverse().map((p) => `L${p.x.toFixed(1)},${p.lo.toFixed(1)}`);
        band = `${upper.join("")}${lower.join("")}Z`;
      }
      root.append(svg("path", { class: "ci-band", d: band }));
      if (pts.length > 1) {
        const line = pts.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`);
        root.append(svg("path", { class: "series-line", d: line.join("") }));
      }
    }

    const last = series[series.length - 1];
    for (const r of series) {
      const x = px(new Date(r.window.end).getTime());
      const label = `${utcTime(r.window.start)}–${utcTime(r.window.end)} UTC`;
      if (r.suppressed || typeof r.value !== "number") {
        const cy = CHART.h - CHART.bottom - 5;
        const mark = svg("circle", { class: "point-suppressed", cx: x, cy, r: 4 });
        mark.append(svg("title", {}, `${label}: suppressed`));
        root.append(mark);
        continue;
      }
      const ci = Array.isArray(r.ci95)
        ? ` (95% CI ${fmtBound(r.ci95[0], r.value, -1)} – ${fmtBound(r.ci95[1], r.value, 1)})`
        : "";
      const dot = svg("circle", {
        class: r === last ? "point latest" : "point",
        cx: x,
        cy: y.scale(r.value),
        r: r === last ? 4 : 2.5,
      });
      dot.append(svg("title", {}, `${label}: ${fmtNumber(r.value)}${ci}`));
      root.append(dot);
    }

    if (series.some((r) => r.suppressed || typeof r.value !== "number")) {
      const mid = (CHART.left + CHART.w - CHART.right) / 2; // between the two time labels
      root.append(
        svg("circle", { class: "point-suppressed legend", cx: mid - 44, cy: CHART.h - 9.5, r: 4 }),
        svg("text", { x: mid - 36, y: CHART.h - 6 }, "suppressed window"),
      );
    }
    const baseY = CHART.h - 6;
    const tick = (t, anchor) => {
      root.append(svg("text", { x: px(t), y: baseY, "text-anchor": anchor }, utcTime(new Date(t))));
    };
    if (t1 === t0) tick(t0, "middle");
    else {
      tick(t0, "start");
      tick(t1, "end");
    }
    return root;
  }

  function barChart(groups) {
    const root = svg("svg", {
      class: "chart bars",
      viewBox: `0 0 ${CHART.w} ${CHART.h}`,
      role: "img",
      "aria-label": "released group values with 95% intervals",
    });
    if (groups.length === 0) return root;
    const ys = [];
    for (const g of groups) {
      if (g.suppressed || typeof g.value !== "number") continue;
      ys.push(g.value);
      if (Array.isArray(g.ci95)) ys.push(g.ci95[0], g.ci95[1]);
    }
    const y = yScale(ys.length ? ys : [0, 1], true);
    drawYAxis(root, y);
    const zero = y.scale(0);
    root.append(hline("zero-line", zero));
    const slot = (CHART.w - CHART.left - CHART.right) / groups.length;
    const width = Math.min(36, slot * 0.6);
    groups.forEach((g, i) => {
      const cx = CHART.left + slot * (i + 0.5);
      const label = String(g.key);
      if (g.suppressed || typeof g.value !== "number") {
        const h = Math.min(24, zero - CHART.top);
        const x = cx - width / 2;
        const box = svg("rect", { class: "bar-suppressed", x, y: zero - h, width, height: h });
        box.append(svg("title", {}, `${label}: suppressed`));
        root.append(box, svg("text", { x: cx, y: zero - h - 3, "text-anchor": "middle" }, "supp."));
      } else {
        const top = Math.min(zero, y.scale(g.value));
        const height = Math.max(1, Math.abs(zero - y.scale(g.value)));
        const bar = svg("rect", { class: "bar", x: cx - width / 2, y: top, width, height });
        bar.append(svg("title", {}, `${label}: ${fmtNumber(g.value)}`));
        root.append(bar);
        if (Array.isArray(g.ci95)) {
          const lo = y.scale(g.ci95[0]);
          const hi = y.scale(g.ci95[1]);
          root.append(
            svg("line", { class: "whisker", x1: cx, x2: cx, y1: lo, y2: hi }),
            svg("line", { class: "whisker", x1: cx - 5, x2: cx + 5, y1: lo, y2: lo }),
            svg("line", { class: "whisker", x1: cx - 5, x2: cx + 5, y1: hi, y2: hi }),
          );
        }
      }
      const short = label.length > 10 ? `${label.slice(0, 9)}…` : label;
      root.append(svg("text", { x: cx, y: CHART.h - 6, "text-anchor": "middle" }, short));
    });
    return root;
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("api-key");
      const key = input.value.trim();
      if (!key) return;
      input.value = "";
      state.key = key;
      sessionStorage.setItem(KEY_STORAGE, key);
      start();
    });
    $("key-forget").addEventListener("click", () => {
      state.key = "";
      sessionStorage.removeItem(KEY_STORAGE);
      start();
    });
    // Relative times ("resets in 5 h") age: refresh them twice a minute.
    setInterval(() => {
      for (const cls of state.classes.values()) renderBudget(cls);
    }, 30000);
    start();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
