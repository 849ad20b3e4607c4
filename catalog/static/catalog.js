// privmesh governance catalog: products and fields with their privacy tags and protections,
// budget use per product and query class, and a column-level lineage view. Every call sends
// the key in an Authorization header (kept in this tab's session storage), never in a URL.
"use strict";
(() => {
  const KEY_STORAGE = "privmesh.apiKey";
  // gen: the latest view asked for; a slower, older request must not draw over it.
  const state = { key: sessionStorage.getItem(KEY_STORAGE) || "", product: null, gen: 0 };
  const $ = (id) => document.getElementById(id);
  const TAG_LABEL = {
    direct_identifier: "direct identifier", quasi_identifier: "quasi-identifier",
    sensitive: "sensitive", non_personal: "non-personal", aggregate: "aggregate",
  };

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function tagBadge(tag) {
    const badge = el("span", `tag ${tag}`, TAG_LABEL[tag] || tag);
    badge.dataset.tag = tag;
    return badge;
  }

  function budgetBar(budget) {
    const wrap = el("div", "bar");
    const fraction = budget ? Math.min(1, budget.fraction_spent) : 0;
    if (fraction > 0.8) wrap.classList.add(fraction >= 1 ? "over" : "warn");
    const fill = el("i");
    fill.style.width = `${(fraction * 100).toFixed(1)}%`;
    wrap.append(fill);
    wrap.title = budget ? `${budget.spent} of ${budget.per_day} epsilon today` : "no budget";
    wrap.setAttribute("role", "img");
    wrap.setAttribute("aria-label", wrap.title);
    return wrap;
  }

  function showProblem(text) {
    const banner = $("problem");
    banner.textContent = text || "";
    banner.hidden = !text;
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    const response = await fetch(path, { headers, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = body.detail || response.statusText;
      if (response.status === 401 || response.status === 403) {
        showProblem(`${response.status === 403 ? "Forbidden" : "API key needed"}: ${detail}`);
      } else {
        showProblem(`${body.code || response.status}: ${detail}`);
      }
      throw new Error(detail);
    }
    return body;
  }

  // ------------------------------------------------------------------ summary
  async function loadSummary() {
    const summary = await api("/v1/catalog");
    const box = $("summary");
    box.replaceChildren();
    const stats = [
      ["products", summary.entities.product],
      ["fields", summary.entities.field],
      ["direct identifiers", summary.fields_by_tag.direct_identifier || 0],
      ["quasi-identifiers", summary.fields_by_tag.quasi_identifier || 0],
      ["sensitive", summary.fields_by_tag.sensitive || 0],
      ["feature views", summary.entities.feature_view],
      ["query classes", summary.entities.query_class],
      ["models", summary.entities.model],
      ["lineage edges", summary.lineage_edges],
      ["classes > 80% budget", summary.classes_above_80_percent.length],
    ];
    for (const [label, value] of stats) {
      const tile = el("div", "stat");
      tile.dataset.stat = label;
      tile.append(el("b", "", value), el("span", "", label));
      box.append(tile);
    }
  }

  // ------------------------------------------------------------------ products
  async function loadProducts() {
    const { entities } = await api("/v1/catalog/entities?kind=product");
    const list = $("product-list");
    list.replaceChildren();
    for (const product of entities) {
      const item = el("li");
      const button = el("button");
      button.type = "button";
      button.dataset.id = product.id;
      button.append(el("span", "name", product.name), el("span", "muted", product.purpose));
      const tags = el("div", "tags");
      for (const [tag, count] of Object.entries(product.tag_counts)) {
        if (count > 0 && tag !== "non_personal") {
          const badge = tagBadge(tag);
          badge.textContent = `${count} ${TAG_LABEL[tag]}`;
          tags.append(badge);
        }
      }
      button.append(tags);
      if (product.budget) button.append(budgetBar(product.budget));
      button.addEventListener("click", () => showProduct(product.id));
      item.append(button);
      list.append(item);
    }
    if (!state.product && entities.length) showProduct(entities[0].id);
  }

  const UNIT_LABEL = {
    subject_day: "subject-day", subject: "subject", subject_window: "subject within a window",
  };

  function guaranteeText(level) {
    if (!level) return "no daily total: this product's classes are refused";
    const source = level.total_source === "declared"
      ? "declared total" : "governance policy's default total";
    const node = el("span", "guarantee", level.statement);
    node.append(el("small", "muted", ` — ${source}, the ledger's cap over all classes together`));
    return node;
  }

  function boundsText(bounds) {
    if (!bounds) return null;
    const period = bounds.privacy_period === "day" ? "UTC day" : bounds.privacy_period;
    const clamps = Object.entries(bounds.clamp)
      .map(([name, [lo, hi]]) => `${name} clamped to [${lo}, ${hi}]`);
    return [`at most ${bounds.max_records_per_period} records per subject per ${period}`,
      `in at most ${bounds.max_windows_per_period} windows`, ...clamps].join("; ");
  }

  function facts(pairs) {
    const dl = el("dl", "facts");
    for (const [term, value] of pairs) {
      dl.append(el("dt", "", term));
      const dd = el("dd");
      if (value instanceof Node) dd.append(value); else dd.textContent = value ?? "—";
      dl.append(dd);
    }
    return dl;
  }

  function fieldTable(fields, withProduct) {
    const table = el("table");
    table.id = "fields";
    const head = el("tr");
    const cols = ["Field", "Type", "Tag", "Protection", "In the product topic", "Reaches"];
    if (withProduct) cols.splice(1, 0, "Product");
    for (const c of cols) head.append(el("th", "", c));
    table.append(head);
    for (const f of fields) {
      const row = el("tr");
      row.dataset.field = f.id;
      const name = el("td", "linkish");
      const link = el("button", "", f.name);
      link.type = "button";
      link.title = f.description;
      link.addEventListener("click", () => loadLineage(f.id));
      name.append(link);
      row.append(name);
      if (withProduct) row.append(el("td", "", f.product.replace("product:", "")));
      row.append(el("td", "", f.type));
      const tag = el("td");
      tag.append(tagBadge(f.tag));
      row.append(tag);
      const protection = el("td", "", f.protection);
      protection.dataset.protection = f.protection;
      protection.append(el("small", "muted", ` — ${f.protection_detail}`));
      row.append(protection);
      row.append(el("td", "", f.published_as || "(dropped)"));
      row.append(el("td", "", f.downstream.map((d) => d.split(":")[1]).join(", ") || "—"));
      table.append(row);
    }
    return table;
  }

  async function showProduct(id) {
    state.product = id;
    const gen = ++state.gen;
    for (const b of document.querySelectorAll(".products button")) {
      b.setAttribute("aria-current", String(b.dataset.id === id));
    }
    const product = await api(`/v1/catalog/entities/${encodeURIComponent(id)}`);
    const domain = product.domain.replace("domain:", "");
    const [fields, classes] = await Promise.all([
      api(`/v1/catalog/entities?kind=field&domain=${domain}`),
      api(`/v1/catalog/entities?kind=query_class&domain=${domain}`),
    ]);
    if (gen !== state.gen) return;
    const detail = $("detail");
    detail.replaceChildren();
    detail.append(el("h2", "", product.name), el("p", "muted", product.description));
    detail.append(facts([
      ["Owner", product.owner.replace("owner:", "")],
      ["Purpose", product.purpose],
      ["Retention", `${product.retention_days} days`],
      ["Privacy unit", product.user_level
        ? product.user_level.privacy_unit : product.privacy_unit.split(".").pop()],
      ["User-level privacy", guaranteeText(product.user_level)],
      ["Contribution bounds", boundsText(product.contribution)],
      ["Topics", product.topics.map((t) => t.replace("topic:", "")).join(", ")],
      ["Feature views", product.feature_views.map((v) => v.replace("feature_view:", "")).join(", ")],
      ["Models", product.models.map((m) => m.replace("model:", "")).join(", ") || "none"],
      ["Budget today", product.budget
        ? `${product.budget.spent} of ${product.budget.per_day} ε spent, `
          + `${product.budget.remaining} ε left` : "no product budget"],
    ]));
    const allocation = new Map((product.user_level?.allocation || []).map((a) => [a.query_class, a]));
    detail.append(el("h3", "", "Fields"));
    detail.append(fieldTable(fields.entities.filter((f) => f.product === id), false));
    const own = classes.entities.filter((c) => c.product === id);
    detail.append(el("h3", "", "Query classes and budget use"));
    if (!own.length) {
      detail.append(el("p", "muted", "No DP query classes read this product."));
    } else {
      const table = el("table");
      table.id = "classes";
      const head = el("tr");
      for (const c of ["Class", "Aggregate", "Privacy unit", "ε / release", "Allocation (ε / day)",
        "Spent today", "Budget"]) {
        head.append(el("th", "", c));
      }
      table.append(head);
      for (const c of own) {
        const row = el("tr");
        row.dataset.class = c.id;
        const share = allocation.get(c.id);
        const allocated = el("td", "allocation", c.budget.per_day);
        if (share) allocated.append(el("small", "muted", ` (${(share.share * 100).toFixed(0)}%)`));
        row.append(el("td", "", c.name), el("td", "", c.aggregate),
          el("td", "", UNIT_LABEL[c.privacy_unit] || c.privacy_unit),
          el("td", "", c.epsilon_per_release), allocated,
          el("td", "", `${c.budget.spent} / ${c.budget.per_day}`));
        const bar = el("td");
        bar.append(budgetBar(c.budget));
        row.append(bar);
        table.append(row);
      }
      detail.append(table);
    }
    loadLineage(id, gen);
  }

  async function searchFields(event) {
    event.preventDefault();
    const gen = ++state.gen;
    const params = new URLSearchParams();
    const tag = $("f-tag").value, protection = $("f-protection").value, text = $("f-text").value;
    if ($("f-budget").checked) {
      params.set("budget_above", "0.8");
      const found = await api(`/v1/catalog/entities?${params}`);
      if (gen !== state.gen) return;
      const detail = $("detail");
      detail.replaceChildren(el("h2", "", `Above 80% of today's budget (${found.count})`));
      const list = el("ul");
      list.id = "over-budget";
      for (const e of found.entities) {
        list.append(el("li", "", `${e.name}: ${e.budget.spent} of ${e.budget.per_day} epsilon`));
      }
      detail.append(list);
      return;
    }
    params.set("kind", "field");
    if (tag) params.set("tag", tag);
    if (protection) params.set("protection", protection);
    if (text) params.set("q", text);
    const found = await api(`/v1/catalog/entities?${params}`);
    if (gen !== state.gen) return;
    const detail = $("detail");
    detail.replaceChildren(el("h2", "", `${found.count} fields`));
    detail.append(fieldTable(found.entities, true));
  }

  // ------------------------------------------------------------------ lineage
  async function loadLineage(root, gen) {
    const asked = gen === undefined ? ++state.gen : gen;
    const graph = await api(`/v1/catalog/lineage?root=${encodeURIComponent(root)}`);
    if (asked !== state.gen) return;
    $("lineage-root").textContent = `of ${root}`;
    $("lineage-hint").hidden = true;
    drawLineage(graph, root);
  }

  function drawLineage(graph, root) {
    const canvas = $("lineage");
    canvas.replaceChildren();
    const preds = new Map(graph.nodes.map((n) => [n.id, []]));
    for (const e of graph.edges) preds.get(e.target)?.push(e.source);
    const depth = new Map();
    const visit = (id, seen) => {
      if (depth.has(id)) return depth.get(id);
      if (seen.has(id)) return 0;
      seen.add(id);
      const d = Math.max(-1, ...preds.get(id).map((p) => visit(p, seen))) + 1;
      depth.set(id, d);
      return d;
    };
    for (const n of graph.nodes) visit(n.id, new Set());
    const connected = new Set(graph.edges.flatMap((e) => [e.source, e.target]));
    const columns = [];
    for (const n of graph.nodes) {
      if (!connected.has(n.id) && n.id !== root) continue;
      const d = depth.get(n.id);
      (columns[d] ||= []).push(n);
    }
    const wrap = el("div", "lcols");
    const boxes = new Map();
    columns.forEach((nodes, index) => {
      const col = el("div", "lcol");
      col.append(el("h3", "", index === 0 ? "sources" : `step ${index}`));
      for (const n of nodes || []) {
        const box = el("div", `lnode${n.id === root || n.id.startsWith(`${root}#`) ? " root" : ""}`);
        box.dataset.node = n.id;
        box.append(el("span", "", n.label));
        const where = n.entity ? n.entity : n.id;
        box.append(el("small", "", `${n.kind === "column" ? "column of " : ""}${where}`));
        if (n.tag) box.append(tagBadge(n.tag));
        col.append(box);
        boxes.set(n.id, box);
      }
      wrap.append(col);
    });
    canvas.append(wrap);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", String(wrap.scrollWidth));
    svg.setAttribute("height", String(wrap.scrollHeight));
    const origin = wrap.getBoundingClientRect();
    for (const e of graph.edges) {
      const a = boxes.get(e.source), b = boxes.get(e.target);
      if (!a || !b) continue;
      const ra = a.getBoundingClientRect(), rb = b.getBoundingClientRect();
      const x1 = ra.right - origin.left, y1 = ra.top + ra.height / 2 - origin.top;
      const x2 = rb.left - origin.left, y2 = rb.top + rb.height / 2 - origin.top;
      const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
      const mid = (x1 + x2) / 2;
      path.setAttribute("d", `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`);
      path.setAttribute("fill", "none");
      path.setAttribute("stroke", e.level === "column" ? "#98a2b3" : "#2f5bd3");
      path.setAttribute("stroke-width", "1.3");
      path.dataset.edge = `${e.source}->${e.target}`;
      const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      title.textContent = e.transform || e.level;
      path.append(title);
      svg.append(path);
    }
    canvas.prepend(svg);
  }

  // ------------------------------------------------------------------ start
  async function start() {
    showProblem("");
    $("api-key").placeholder = state.key ? "key set for this tab" : "paste a governance key";
    $("key-forget").hidden = !state.key;
    try {
      await loadSummary();
      await loadProducts();
    } catch (error) {
      // the banner already says what went wrong
    }
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    $("api-key").value = "";
    if (state.key) sessionStorage.setItem(KEY_STORAGE, state.key);
    start();
  });
  $("key-forget").addEventListener("click", () => {
    state.key = "";
    sessionStorage.removeItem(KEY_STORAGE);
    start();
  });
  $("filters").addEventListener("submit", (event) => searchFields(event).catch(() => {}));
  $("f-clear").addEventListener("click", () => {
    $("filters").reset();
    if (state.product) showProduct(state.product);
  });
  start();
})();
