// privmesh DP dashboards: live tiles and charts over /v1/queries and /v1/live.
//
// A daily class ("release: daily") is paid once per UTC day and answers every resolution
// of its day's structure for free: its tile has a resolution selector (default auto: the
// API picks the finest that meets the class's accuracy), shows the span the value covers,
// says when a value is too noisy at its resolution (offering the coarser one), and when the
// class's budget lasts until. A banner per product states the user-level guarantee (ε per
// person per UTC day) and what is left of it today.
//
// Plain browser JavaScript, no build step, no external assets. The live stream is read
// with fetch() + ReadableStream (EventSource cannot send an Authorization header) and the
// SSE wire format is parsed here. Every value from the API is put in the page with
// textContent or SVG attributes, never as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "privmesh.apiKey";
  const RESOLUTION_STORAGE = "privmesh.resolution."; // + class id: the tile's choice
  const META_REFRESH_MS = 30000; // products' spend and class budgets (free to read)
  const META_AFTER_RELEASE_MS = 1500; // ...and again shortly after releases arrive
  const RESOLUTION_LABEL = {
    auto: "auto",
    window: "last window",
    "1m": "last minute",
    "1h": "last hour",
    today: "today so far",
    "24h": "last 24 h",
  };
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
    products: new Map(), // "domain.product" -> user-level facts and today's spend
    metaTimer: null,
    metaSoon: null, // a re-read of the class list after a batch of releases
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

  // "23:59 UTC" today, else the date too.
  function fmtUntil(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const today = new Date().toISOString().slice(0, 10);
    const hm = `${d.toISOString().slice(11, 16)} UTC`;
    return d.toISOString().slice(0, 10) === today ? hm : `${d.toISOString().slice(0, 10)} ${hm}`;
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

  // Epoch seconds or an ISO string, as a Date.
  function toDate(t) {
    return typeof t === "number" ? new Date(t * 1000) : new Date(t);
  }

  // The time span a release covers: a daily class's ``span`` or a window's.
  function spanOf(release) {
    const s = release && (release.span || release.window);
    if (!s || s.start === undefined || s.end === undefined) return null;
    const start = toDate(s.start);
    const end = toDate(s.end);
    return Number.isNaN(end.getTime()) ? null : { start, end };
  }

  function fmtSpan(span) {
    const sameDay = span.start.toISOString().slice(0, 10) === span.end.toISOString().slice(0, 10);
    const start = sameDay ? utcTime(span.start) : utcDateTime(span.start).replace(" UTC", "");
    return `${start} → ${utcTime(span.end)} UTC`;
  }

  function isDaily(meta) {
    return meta && meta.release === "daily";
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
    clearInterval(state.metaTimer);
    clearTimeout(state.metaSoon);
    state.metaSoon = null;
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
    syncProducts(res.body, classes);
    await Promise.all(classes.map((c) => loadHistory(gen, c.id)));
    if (gen !== state.generation) return;
    connect(gen);
    // A tile showing a chosen resolution asks for it now (auto tiles get the live push).
    for (const cls of state.classes.values()) {
      if (isDaily(cls.meta) && cls.selected !== "auto") fetchResolution(gen, cls);
    }
    clearInterval(state.metaTimer);
    state.metaTimer = setInterval(() => refreshMeta(gen), META_REFRESH_MS);
  }

  // Class budgets and products' spend, read again (free: no release is made).
  async function refreshMeta(gen) {
    let res;
    try {
      res = await getJson("/v1/queries");
    } catch (_err) {
      return;
    }
    if (gen !== state.generation || !res.ok) return;
    const classes = Array.isArray(res.body.classes) ? res.body.classes : [];
    syncTiles(classes);
    syncProducts(res.body, classes);
  }

  // The value of a daily class at the tile's chosen resolution (post-processing of the
  // day's paid structure: costs nothing once the day is paid). The newest request wins.
  async function fetchResolution(gen, cls) {
    const ticket = (cls.ticket = (cls.ticket || 0) + 1);
    const resolution = cls.selected || "auto";
    const path = `/v1/queries/${encodeURIComponent(cls.meta.id)}?resolution=${encodeURIComponent(resolution)}`;
    let res;
    try {
      res = await getJson(path);
    } catch (_err) {
      return; // the next live event asks again
    }
    if (gen !== state.generation || ticket !== cls.ticket) return;
    if (res.status === 401 || res.status === 403) {
      showAuthError(res.status, res.body);
      return;
    }
    if (!res.ok) {
      cls.problem = { ...res.body, status: res.body.status || res.status };
      if (res.body.budget) cls.budget = res.body.budget;
      renderTile(cls);
      return;
    }
    acceptRelease(cls, { class_id: cls.meta.id, ...res.body });
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
    // A daily class's history holds every resolution asked for: keep the tile's choice.
    const daily = isDaily(cls.meta);
    const wanted = `:${cls.selected}:`;
    for (const item of historyItems(res.body)) {
      if (!item || !(item.window || item.span)) continue;
      if (daily && !String(item.data_version || "").includes(wanted)) continue;
      addRelease(cls, { class_id: id, ...item });
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

  // Keyed by where a span ends: a running total's windows all start at its horizon.
  function windowKey(release) {
    const span = spanOf(release);
    return span ? span.end.getTime() : Number.NaN;
  }

  function addRelease(cls, release) {
    const key = windowKey(release);
    if (Number.isNaN(key)) return;
    // One chart shows one resolution: a daily value at another resolution starts afresh.
    const newestShown = cls.series[cls.series.length - 1];
    if (newestShown && (newestShown.resolution || null) !== (release.resolution || null)) {
      cls.series = [];
      cls.latest = null;
    }
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
    if (isDaily(cls.meta) && cls.selected !== "auto" && release.resolution !== cls.selected) {
      // A window closed: read the chosen resolution again (free once the day is paid).
      if (release.budget) cls.budget = release.budget;
      if (release.budget_lasts_until) cls.lastsUntil = release.budget_lasts_until;
      fetchResolution(state.generation, cls);
      return;
    }
    acceptRelease(cls, release);
  }

  // Releases spend the products' budgets (a daily class: its first value of the day): the
  // banner's "left today" is read again once a batch of them has arrived.
  function refreshMetaSoon() {
    if (state.metaSoon) return;
    const gen = state.generation;
    state.metaSoon = setTimeout(() => {
      state.metaSoon = null;
      if (gen === state.generation) refreshMeta(gen);
    }, META_AFTER_RELEASE_MS);
  }

  function acceptRelease(cls, release) {
    refreshMetaSoon();
    addRelease(cls, release);
    if (release.budget) cls.budget = release.budget;
    if (release.budget_lasts_until) cls.lastsUntil = release.budget_lasts_until;
    if (release.user_level) cls.userLevel = release.user_level;
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

  // ---------------------------------------------------------------- products

  // The list answer's per-product facts (``products``: a list or a map), else each class's
  // ``product_budget`` and ``user_level``.
  function syncProducts(body, classes) {
    const found = new Map();
    const listed = body && body.products;
    const items = Array.isArray(listed)
      ? listed
      : listed && typeof listed === "object"
        ? Object.entries(listed).map(([product, p]) => ({ product, ...p }))
        : [];
    for (const p of items) {
      const key = p.product || p.id || (p.domain && p.name ? `${p.domain}.${p.name}` : null);
      if (key) found.set(key, { ...p, product: key });
    }
    for (const meta of classes) {
      const key = `${meta.domain}.${meta.product}`;
      const fromClass = {
        product: key,
        ...(meta.product_budget || {}),
        ...(meta.user_level ? { user_level: meta.user_level } : {}),
      };
      const known = found.get(key) || {};
      const allocation = known.allocation || {};
      if (!Array.isArray(allocation) && meta.budget) {
        allocation[meta.id] = allocation[meta.id] || meta.budget.epsilon_budget;
      }
      found.set(key, { ...fromClass, ...known, allocation });
    }
    state.products = found;
    renderProducts();
  }

  function productEpsilon(p) {
    const level = p.user_level || {};
    return p.epsilon_per_subject_per_day ?? level.product_total ?? p.epsilon_budget;
  }

  function renderProducts() {
    const box = $("products");
    box.replaceChildren();
    for (const [key, p] of state.products) {
      const eps = productEpsilon(p);
      if (eps === undefined || eps === null) continue;
      const row = el("div", "product-level");
      row.dataset.product = key;
      row.append(el("strong", "product-name", key));
      const guarantee = el("span", "guarantee", `ε = ${eps} per person per UTC day (pure DP)`);
      guarantee.title =
        "the most all of this product's releases together can reveal about one " +
        "pseudonymous subject's whole UTC day";
      row.append(guarantee);
      const spent = p.epsilon_spent_today ?? p.epsilon_spent;
      const left = p.epsilon_left_today ?? p.epsilon_remaining;
      if (left !== undefined && left !== null) {
        const today = el("span", "product-left");
        today.append(
          el("span", "product-remaining", String(left)),
          document.createTextNode(" ε left today"),
        );
        if (spent !== undefined && spent !== null) {
          today.append(el("span", "muted", ` (${spent} spent)`));
        }
        row.append(today);
      }
      const shares = Array.isArray(p.allocation)
        ? p.allocation.map((a) => [a.class_id || a.query_class, a.epsilon_per_day])
        : Object.entries(p.allocation || {});
      if (shares.length) {
        const list = el("span", "allocation muted");
        list.append(document.createTextNode("allocation (ε / day): "));
        shares.forEach(([id, eps], i) => {
          const item = el("span", "share", `${String(id).replace(`${key}.`, "")} ${eps}`);
          item.dataset.classId = id;
          item.dataset.epsilon = eps;
          if (i) list.append(document.createTextNode(" · "));
          list.append(item);
        });
        row.append(list);
      }
      box.append(row);
    }
    box.hidden = box.childElementCount === 0;
  }

  // ---------------------------------------------------------------- tiles

  function clearTiles(message) {
    state.classes.clear();
    state.products = new Map();
    renderProducts();
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
      if (meta.budget_lasts_until) cls.lastsUntil = meta.budget_lasts_until;
      syncResolutions(cls);
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
    // Daily classes: the resolution (selector, default auto) and the span the value covers.
    const resRow = el("div", "res-row");
    const resLabel = el("label", "res-label", "resolution ");
    const resSelect = el("select", "res-select");
    resSelect.setAttribute("aria-label", "resolution");
    resLabel.append(resSelect);
    const resShown = el("span", "resolution");
    resRow.append(resLabel, resShown);
    resRow.hidden = true;
    const spanLine = el("div", "span muted");
    spanLine.hidden = true;
    const noisy = el("div", "too-noisy");
    noisy.setAttribute("role", "note");
    const noisyText = el("span", "too-noisy-text", "too noisy at this resolution");
    const coarser = el("button", "coarser ghost");
    coarser.type = "button";
    noisy.append(noisyText, coarser);
    noisy.hidden = true;
    valueBlock.append(resRow, valueLine, ci, noisy, spanLine, windowLine, eps);

    const budget = el("div", "budget-block");
    const gaugeLabel = el("div", "gauge-label");
    const spentLine = el("strong", "budget-used");
    const budgetSpent = el("span", "budget-spent", "—");
    const budgetTotal = el("span", "budget-total", "—");
    const text = (t) => document.createTextNode(t);
    spentLine.append(budgetSpent, text(" / "), budgetTotal, text(" ε"));
    const gaugeTitle = el("span", "gauge-title", "Budget spent");
    gaugeLabel.append(gaugeTitle, spentLine);
    const gauge = el("div", "gauge");
    gauge.setAttribute("role", "meter");
    gauge.setAttribute("aria-label", "privacy budget spent");
    const gaugeFill = el("div", "gauge-fill");
    gauge.append(gaugeFill);
    const gaugeFoot = el("div", "gauge-foot");
    const remaining = el("span", "budget-remaining", "—");
    const resets = el("time", "budget-resets");
    const remainingPart = el("span", "remaining-part");
    remainingPart.append(remaining, text(" ε remaining · "));
    // A daily class pays its whole day at its first value: what is left of it is nothing.
    const paidNote = el("span", "paid-note", "paid for this UTC day: every value is free · ");
    paidNote.hidden = true;
    gaugeFoot.append(remainingPart, paidNote, text("resets "), resets);
    const lasts = el("div", "lasts muted");
    const lastsUntil = el("time", "lasts-until");
    lasts.append(text("budget lasts until "), lastsUntil);
    lasts.hidden = true;
    const userLevel = el("div", "user-level muted");
    userLevel.hidden = true;
    budget.append(gaugeLabel, gauge, gaugeFoot, lasts, userLevel);
    budget.hidden = !meta.budget;
    body.append(valueBlock, budget);

    const chartWrap = el("div", "chart-wrap");
    const groups = el("table", "groups");
    groups.hidden = true;
    const foot = el("footer", "tile-foot");
    root.append(head, problem, body, chartWrap, groups, foot);

    const cls = {
      meta,
      budget: meta.budget || null,
      lastsUntil: meta.budget_lasts_until || null,
      userLevel: meta.user_level || null,
      selected: sessionStorage.getItem(RESOLUTION_STORAGE + meta.id) || "auto",
      ticket: 0,
      series: [],
      latest: null,
      problem: null,
      el: {
        root, title, chips, problem, problemTitle, problemDetail, problemCode, problemExtra,
        value, suppressed, ci, ciLo, ciHi, windowLine, eps, budget, budgetSpent, budgetTotal, gauge,
        gaugeFill, remaining, resets, chartWrap, groups, foot, resRow, resSelect, resShown,
        gaugeTitle, remainingPart, paidNote,
        spanLine, noisy, noisyText, coarser, lasts, lastsUntil, userLevel,
      },
    };
    resSelect.addEventListener("change", () => choose(cls, resSelect.value));
    coarser.addEventListener("click", () => {
      if (coarser.dataset.resolution) choose(cls, coarser.dataset.resolution);
    });
    return cls;
  }

  // The resolutions a daily class answers (the list's ``resolutions``), auto first.
  function syncResolutions(cls) {
    const { meta, el: e } = cls;
    e.resRow.hidden = !isDaily(meta);
    if (!isDaily(meta)) return;
    const offered = ["auto", ...(Array.isArray(meta.resolutions) ? meta.resolutions : [])];
    if (!offered.includes(cls.selected)) cls.selected = "auto";
    const current = Array.from(e.resSelect.options).map((o) => o.value);
    if (current.join() !== offered.join()) {
      e.resSelect.replaceChildren(
        ...offered.map((r) => {
          const option = el("option", "", RESOLUTION_LABEL[r] || r);
          option.value = r;
          return option;
        }),
      );
    }
    e.resSelect.value = cls.selected;
  }

  // The viewer picks a resolution (the selector or the "coarser" button): ask for it now.
  function choose(cls, resolution) {
    cls.selected = resolution;
    sessionStorage.setItem(RESOLUTION_STORAGE + cls.meta.id, resolution);
    cls.el.resSelect.value = resolution;
    cls.series = [];
    cls.latest = null;
    renderTile(cls);
    fetchResolution(state.generation, cls);
  }

  function renderTile(cls) {
    const { meta, el: e } = cls;
    e.title.textContent = meta.title || meta.id;
    e.title.title = meta.id;
    const chips = [meta.id];
    if (meta.aggregate) chips.push([meta.aggregate, meta.mechanism].filter(Boolean).join(" · "));
    if (isDaily(meta)) {
      if (meta.epsilon_per_release !== undefined) chips.push(`ε ${meta.epsilon_per_release} / day`);
    } else if (meta.epsilon_per_release) chips.push(`ε ${meta.epsilon_per_release} / release`);
    e.chips.replaceChildren(...chips.map((c) => el("span", "chip", c)));

    renderProblem(cls);
    renderValue(cls);
    renderResolution(cls);
    renderBudget(cls);
    renderChart(cls);
  }

  // Daily classes: the resolution shown, the span covered, and "too noisy" with the way out.
  function renderResolution(cls) {
    const { latest: r, el: e, meta } = cls;
    const daily = isDaily(meta) || Boolean(r && r.resolution);
    e.resRow.hidden = !daily;
    const shown = r && r.resolution;
    e.resShown.textContent = shown
      ? `${RESOLUTION_LABEL[shown] || shown}${cls.selected === "auto" ? " (auto)" : ""}`
      : "";
    e.resShown.dataset.resolution = shown || "";
    const span = r && r.span ? spanOf(r) : null;
    e.spanLine.hidden = !span;
    if (span) {
      e.spanLine.textContent = `covers ${fmtSpan(span)}`;
      e.spanLine.title = `${utcDateTime(span.start)} to ${utcDateTime(span.end)}`;
    }
    const noisy = Boolean(r && r.too_noisy);
    e.noisy.hidden = !noisy;
    e.root.dataset.tooNoisy = String(noisy);
    if (noisy) {
      e.noisyText.textContent = "too noisy at this resolution";
      e.coarser.hidden = !r.coarser;
      e.coarser.dataset.resolution = r.coarser || "";
      e.coarser.textContent = r.coarser ? `show ${RESOLUTION_LABEL[r.coarser] || r.coarser}` : "";
    }
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
    e.windowLine.hidden = !r.window || Boolean(r.span); // a daily value shows its span
    if (r.window && !r.span) {
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
    e.lasts.hidden = !cls.lastsUntil;
    if (cls.lastsUntil) {
      e.lastsUntil.dateTime = cls.lastsUntil;
      e.lastsUntil.textContent = fmtUntil(cls.lastsUntil);
      e.lastsUntil.title = `${utcDateTime(cls.lastsUntil)} (${fmtIn(cls.lastsUntil)}) at the current cadence`;
    }
    const level = cls.userLevel;
    e.userLevel.hidden = !level;
    if (level) {
      const mine = level.epsilon_per_subject_per_day;
      e.userLevel.textContent =
        mine === null || mine === undefined
          ? "protects a person within one window only (not per UTC day)"
          : `ε ${mine} of the product's ${level.product_total} ` +
            `per person per ${level.period || "UTC day"}`;
    }
    const spent = Number(b.epsilon_spent);
    const total = Number(b.epsilon_budget);
    const share = total > 0 ? Math.min(1, Math.max(0, spent / total)) : 0;
    e.budgetSpent.textContent = b.epsilon_spent;
    e.budgetTotal.textContent = b.epsilon_budget;
    e.remaining.textContent = b.epsilon_remaining;
    e.gaugeFill.style.width = `${(share * 100).toFixed(1)}%`;
    e.gaugeFill.dataset.level = share >= 1 ? "full" : share >= 0.8 ? "high" : "ok";
    // A daily class: spending its day is paying for it (not running out); one allotted
    // nothing (a mean of two paid classes) is post-processing.
    const daily = isDaily(cls.meta);
    const paid = daily && total > 0 && spent >= total;
    if (daily) e.gaugeFill.dataset.level = "paid";
    e.gaugeTitle.textContent = !daily
      ? "Budget spent"
      : total > 0
        ? "Paid per UTC day"
        : "Spends nothing (post-processing)";
    e.remainingPart.hidden = paid;
    e.paidNote.hidden = !paid;
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

    const times = series.map((r) => windowKey(r));
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
          x: px(windowKey(r)),
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
      const x = px(windowKey(r));
      const span = spanOf(r);
      const label = `${utcTime(span.start)}–${utcTime(span.end)} UTC`;
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
