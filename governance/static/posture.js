// privmesh privacy posture: one call to /v1/posture, drawn as tables. The key is sent in an
// Authorization header (kept in this tab's session storage, shared with the catalog page).
"use strict";
(() => {
  const KEY_STORAGE = "privmesh.apiKey";
  const state = { key: sessionStorage.getItem(KEY_STORAGE) || "" };
  const $ = (id) => document.getElementById(id);
  const REFRESH_MS = 10000;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function table(headers, rows, numeric = []) {
    const t = el("table");
    const head = el("tr");
    headers.forEach((h, i) => head.append(el("th", numeric.includes(i) ? "num" : "", h)));
    const thead = el("thead");
    thead.append(head);
    t.append(thead);
    const body = el("tbody");
    for (const row of rows) {
      const tr = el("tr");
      row.forEach((cell, i) => {
        const td = el("td", numeric.includes(i) ? "num" : "");
        if (cell instanceof Node) td.append(cell); else td.textContent = cell ?? "—";
        tr.append(td);
      });
      body.append(tr);
    }
    t.append(body);
    return t;
  }

  function fill(id, node) { $(id).replaceChildren(node); }
  const num = (x, digits = 3) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));

  function bar(spent, budget) {
    const wrap = el("div", "bar");
    const fraction = budget > 0 ? Math.min(1, spent / budget) : 0;
    if (fraction > 0.8) wrap.classList.add(fraction >= 1 ? "over" : "warn");
    const i = el("i");
    i.style.width = `${(fraction * 100).toFixed(1)}%`;
    wrap.append(i);
    wrap.title = `${num(spent)} of ${num(budget)} epsilon`;
    wrap.setAttribute("role", "img");
    wrap.setAttribute("aria-label", wrap.title);
    return wrap;
  }

  function showProblem(text) {
    $("problem").textContent = text || "";
    $("problem").hidden = !text;
  }

  async function load() {
    const headers = { Accept: "application/json" };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    const response = await fetch("/v1/posture", { headers, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = body.detail || response.statusText;
      if (response.status === 401 || response.status === 403) {
        showProblem(`${response.status === 403 ? "Forbidden" : "API key needed"}: ${detail}`);
      } else {
        showProblem(`${body.code || response.status}: ${detail}`);
      }
      return;
    }
    showProblem("");
    draw(body);
  }

  // Per product: the user-level guarantee (its daily total, per person per UTC day), what is
  // spent and left of it today, then each class's allocation and its own spend.
  function budgetView(budgets) {
    const box = el("div");
    const byProduct = new Map();
    for (const c of budgets.classes) {
      if (!byProduct.has(c.product)) byProduct.set(c.product, []);
      byProduct.get(c.product).push(c);
    }
    for (const prod of budgets.products) {
      const section = el("div", "product-budget");
      section.dataset.product = prod.product;
      const head = el("p", "guarantee");
      head.append(el("strong", "", prod.product), document.createTextNode(": "),
        el("span", "statement", prod.statement));
      head.append(el("span", "muted", ` — privacy unit: ${prod.privacy_unit}`));
      section.append(head);
      const today = el("p", "today");
      today.append(el("span", "left", `${num(prod.remaining)} ε left today`),
        el("span", "muted", ` (${num(prod.spent)} of ${num(prod.budget)} spent; `
          + `allocations sum to ${prod.allocated}; ${prod.reserve} reserved for planning)`),
        bar(prod.spent, prod.budget));
      section.append(today);
      if (prod.narrower_classes.length) {
        section.append(el("p", "bad", `Not covered by the daily guarantee (subject within one `
          + `window): ${prod.narrower_classes.join(", ")}`));
      }
      const share = new Map(prod.allocation.map((a) => [a.class_id, a.share]));
      section.append(table(["class", "allocation ε / day", "share", "spent", "left", "use"],
        (byProduct.get(prod.product) || []).map((c) => [c.class_id, c.allocation,
          `${Math.round((share.get(c.class_id) || 0) * 100)}%`, num(c.spent), num(c.remaining),
          bar(c.spent, c.budget)]), [1, 2, 3, 4]));
      box.append(section);
      byProduct.delete(prod.product);
    }
    for (const [product, rows] of byProduct) {  // products without a daily total
      box.append(el("p", "bad", `${product}: no daily total, its classes are refused`));
      box.append(table(["class", "allocation ε / day", "spent", "left", "use"], rows.map((c) =>
        [c.class_id, c.allocation, num(c.spent), num(c.remaining), bar(c.spent, c.budget)]), [1, 2, 3]));
    }
    return box;
  }

  function draw(p) {
    const streams = Object.entries(p.streams);
    const stats = [
      ["findings", p.findings.length],
      ["workers up", `${streams.filter(([, s]) => s.reachable).length}/${streams.length}`],
      ["consent drops", streams.reduce((n, [, s]) => n + (s.consent_dropped || 0), 0)],
      ["erasures", Object.values(p.erasures).reduce((n, e) => n + e.requests + e.withdrawals, 0)],
      ["subject requests", p.subject_requests.access + p.subject_requests.erase],
      ["retention passes", p.retention.runs],
      ["models", p.models.length],
    ];
    $("summary").replaceChildren(...stats.map(([label, value]) => {
      const box = el("div", "stat");
      box.dataset.stat = label;
      box.append(el("strong", "", value), el("span", "muted", ` ${label}`));
      return box;
    }));
    fill("findings", p.findings.length
      ? table(["severity", "code", "subject", "what"], p.findings.map((f) =>
        [el("span", `sev ${f.severity}`, f.severity), f.code, f.subject, f.message]))
      : el("p", "ok", "Nothing needs a look."));
    const comps = p.components || [];
    fill("components", comps.length
      ? table(["component", "state", "restarts", "last exit code"], comps.map((c) =>
        [c.name, el("span", c.state === "running" ? "ok" : "bad", c.state), c.restarts, c.last_exit_code]), [2, 3])
      : el("p", "muted", "No `privmesh up` launcher here: the orchestrator supervises the processes."));
    fill("streams", table(
      ["domain", "worker", "consumed", "published", "dead letters", "consent drops", "index"],
      streams.map(([d, s]) => [d, el("span", s.reachable ? "ok" : "bad", s.reachable ? "up" : "unreachable"),
        s.consumed, s.published, s.dead_lettered, s.consent_dropped,
        s.reachable ? (s.consent_ready ? "ready" : "catching up") : null]), [2, 3, 4, 5]));
    const subjects = {};
    for (const [, s] of streams) Object.assign(subjects, s.consent_subjects || {});
    fill("consent", table(["product", "purpose", "consent", "granted", "withdrawn"],
      Object.entries(p.consent).map(([product, c]) => [product, c.purpose, c.consent.replace("_", "-"),
        subjects[c.purpose]?.granted, subjects[c.purpose]?.withdrawn]), [3, 4]));
    fill("keys", table(["domain", "active version", "versions"], Object.entries(p.keys).map(
      ([d, k]) => [d, `k${k.active}`, k.versions.map((v) => `k${v.version} from ${v.effective_from.slice(0, 19)}`).join(", ")])));
    $("period").textContent = `UTC day ${p.budgets.period}`;
    fill("budgets", budgetView(p.budgets));
    const ops = el("div");
    ops.append(table(["domain", "erasure requests", "withdrawals", "online rows", "offline rows"],
      Object.entries(p.erasures).map(([d, e]) => [d, e.requests, e.withdrawals, e.online_rows, e.offline_rows]), [1, 2, 3, 4]));
    const r = p.subject_requests;
    ops.append(el("p", "muted", `Subject requests: ${r.access} access, ${r.erase} erase; slowest ${num(r.max_seconds, 2)} s; ${r.over_deadline} over deadline.`));
    ops.append(el("p", "muted", `Retention: ${p.retention.runs} pass(es), last ${p.retention.last_at || "never"}.`));
    ops.append(table(["product", "events", "history", "windows", "online"],
      Object.entries(p.retention.purged).map(([prod, c]) => [prod, c.events, c.subject_history, c.window_stats, c.online]), [1, 2, 3, 4]));
    fill("ops", ops);
    fill("models", table(["version", "rounds", "lost", "dropouts", "SecAgg+", "DP ε", "MIA advantage"],
      p.models.map((m) => [m.version, m.rounds_completed, m.rounds_lost, m.dropouts,
        m.secure_aggregation ? "yes" : "no", m.dp ? num(m.epsilon_total, 2) : "off",
        m.mia_attack ? `${num(m.mia_advantage)} (${m.mia_attack})` : num(m.mia_advantage)]), [1, 2, 3, 5, 6]));
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.key);
    $("api-key").value = "";
    load();
  });
  $("key-forget").addEventListener("click", () => {
    state.key = "";
    sessionStorage.removeItem(KEY_STORAGE);
    load();
  });
  load();
  setInterval(load, REFRESH_MS);
})();
