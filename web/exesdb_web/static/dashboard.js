// exesdb dashboard: live over EventSource("/v1/stream"), figures from fetch("/v1/stats") every 2 s.
//
// Everything from the bus is put in the page as text (textContent, text nodes), never as markup.
// Everything the page keeps is bounded (LIMITS); what a bound sheds is counted and shown.
(() => {
  "use strict";

  const LIMITS = Object.freeze({
    tail: 200, // lines kept in the tail pane; older ones are removed
    pending: 200, // messages waiting for the next paint; beyond it the oldest are shed (counted)
    alerts: 50, // alerts kept; the oldest go first
    acks: 200, // acknowledgements remembered, for alerts that arrive after their ack
    nodes: 64, // nodes kept; the one heard of longest ago goes first
    stores: 32,
    subscriptions: 32, // per store
    spark: 90, // stats polls in a sparkline: 3 minutes at one every 2 s
    text: 160, // characters of any one string from the bus
    fields: 5, // key fields shown on a tail line
    reasons: 3, // reasons named in the banner
  });
  const STATS_EVERY_MS = 2000;
  const STATS_TIMEOUT_MS = 1800;
  const STALE_MS = 60000; // a node or subscription not heard of for this long is shown as stale
  const PAINT_MS = 200;
  const RECONNECT_MS = 3000;

  const INSTANCES = ["events", "system", "health", "metrics", "lifecycle", "alerts", "audit", "diagnostics", "security", "logging"];
  const SEVERITIES = ["critical", "error", "warning", "info"];
  // The CLI's colour categories (cli/exesdb_cli/render.py: category).
  const BAD = new Set(["unhealthy", "failed", "degraded", "down", "crashed", "error", "critical", "denied", "fail",
    "timeout", "stale", "login_failed", "non_compliant", "max_restarts_reached", "partitioned"]);
  const GOOD = new Set(["healthy", "started", "success", "pass", "allowed", "up", "joined", "closed", "compliant",
    "healed", "delivered"]);
  const KEYS = ["status", "event", "severity", "title", "node", "component", "store", "subscription", "metric_name",
    "value", "level", "message", "principal", "action", "result"];
  const BREAKER = { circuit_breaker_opened: "open", circuit_breaker_half_open: "half_open", circuit_breaker_closed: "closed" };
  const SVG = "http://www.w3.org/2000/svg";

  // ------------------------------------------------------------------ bounded state

  /** A Map that keeps at most `limit` entries; setting a key makes it the newest. */
  class Bounded {
    constructor(limit) { this.limit = limit; this.map = new Map(); this.evicted = 0; }
    get(key) { return this.map.get(key); }
    touch(key, make) {
      let value = this.map.get(key);
      if (value === undefined) value = make();
      else this.map.delete(key);
      this.map.set(key, value);
      while (this.map.size > this.limit) {
        this.map.delete(this.map.keys().next().value);
        this.evicted += 1;
      }
      return value;
    }
    values() { return Array.from(this.map.values()); }
    get size() { return this.map.size; }
  }

  const state = {
    stats: null, statsError: "waiting for the broker's first figures", statsAt: 0,
    previous: null, // { at, messages: {instance: n} } of the last poll, for rates
    rates: new Map(), // instance -> recent msg/s, at most LIMITS.spark each
    nodes: new Bounded(LIMITS.nodes),
    brokers: new Bounded(LIMITS.nodes), // every broker heard of: its BrokerMetrics cross a federation too
    cluster: null,
    membership: null,
    stores: new Bounded(LIMITS.stores),
    alerts: [], // newest first, at most LIMITS.alerts
    acks: new Bounded(LIMITS.acks),
    stream: "connecting",
    counts: { events: 0, gaps: 0, missed: 0, unreadable: 0, shed: 0, alertsDropped: 0 },
  };

  // ------------------------------------------------------------------ helpers

  const $ = (id) => document.getElementById(id);

  /** An element with a class and children (strings become text nodes: never markup). */
  function el(tag, cls, ...children) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  /** Any value from the bus as a bounded string. */
  function text(value) {
    let s;
    if (typeof value === "string") s = value;
    else if (value === null || value === undefined) s = "";
    else {
      try { s = JSON.stringify(value); } catch (_) { s = String(value); }
      if (s === undefined) s = String(value);
    }
    return s.length > LIMITS.text ? s.slice(0, LIMITS.text - 1) + "…" : s;
  }

  const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
  const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
  const alias = (instance) => text(instance).replace(/^ex_esdb_/, "");
  const category = (name) => (["success", "failure", "action", "health", "info", "warning", "error", "critical"]
    .includes(name) ? `cat-${name}` : "cat-none");

  /** The colour category of a status word. */
  function statusCategory(status) {
    const word = text(status).toLowerCase();
    if (BAD.has(word)) return word === "degraded" || word === "stale" ? "action" : "failure";
    if (GOOD.has(word)) return "success";
    return "health";
  }

  function badge(word, cat) { return el("span", `badge ${category(cat || statusCategory(word))}`, text(word)); }

  function num(value) {
    if (!isNumber(value)) return "–";
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    return value.toFixed(Math.abs(value) < 10 ? 2 : 1);
  }

  function size(value) {
    if (!isNumber(value)) return "–";
    let n = value;
    if (Math.abs(n) < 1024) return `${n} B`;
    for (const unit of ["KiB", "MiB", "GiB", "TiB"]) {
      n /= 1024;
      if (Math.abs(n) < 1024 || unit === "TiB") return `${n.toFixed(1)} ${unit}`;
    }
    return `${n} B`;
  }

  function duration(seconds) {
    if (!isNumber(seconds)) return "–";
    if (seconds < 60) return `${seconds.toFixed(0)}s`;
    const m = Math.floor(seconds / 60);
    if (m < 60) return `${m}m${String(Math.floor(seconds % 60)).padStart(2, "0")}s`;
    const h = Math.floor(m / 60);
    if (h < 24) return `${h}h${String(m % 60).padStart(2, "0")}m`;
    return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, "0")}h`;
  }

  const percent = (v) => (isNumber(v) ? `${Math.round(v * 100)}%` : null);
  const ago = (at) => (at ? `${duration((Date.now() - at) / 1000)} ago` : "");
  const clock = (iso) => { const m = /T(\d\d:\d\d:\d\d(\.\d{1,3})?)/.exec(text(iso)); return m ? m[1] : "--:--:--"; };

  /** The colour category of a message, as the CLI colours its tail lines. */
  function messageCategory(m, d) {
    const inst = alias(m.instance);
    if (inst === "alerts" && SEVERITIES.includes(d.severity)) return d.severity;
    const words = ["status", "event", "result", "level"].map((k) => String(d[k]).toLowerCase());
    if (words.some((w) => BAD.has(w)) || ["AccessViolation", "SecurityAlert", "ErrorAnalysis"].includes(m.type)) return "failure";
    if (d.success === false || d.paused === true) return "failure";
    if (words.some((w) => GOOD.has(w))) return "success";
    if (inst === "health" || inst === "lifecycle") return "health";
    if (inst === "metrics" || inst === "events") return "action";
    return "none";
  }

  function keyFields(d, type) {
    if (type === "Events" && Array.isArray(d.events)) { // as the CLI: 1 event (OrderPlaced order-7 v7)
      const first = isObject(d.events[0]) ? d.events[0] : {};
      const what = ["event_type", "stream_id"].filter((k) => first[k] !== undefined && first[k] !== null).map((k) => text(first[k]));
      if (first.version !== undefined && first.version !== null) what.push(`v${text(first.version)}`);
      const count = `${d.events.length} event${d.events.length === 1 ? "" : "s"}`;
      return `store=${text(d.store)} ${count}${what.length ? ` (${d.events.length > 1 ? "first " : ""}${what.join(" ")})` : ""}`;
    }
    let chosen = KEYS.filter((k) => d[k] !== null && d[k] !== undefined);
    if (!chosen.length) chosen = Object.keys(d).filter((k) => d[k] !== null && d[k] !== undefined);
    return chosen.slice(0, LIMITS.fields).map((k) => `${text(k)}=${text(d[k])}`).join(" ");
  }

  // ------------------------------------------------------------------ what the bus says

  function onMessage(m) {
    const d = isObject(m.data) ? m.data : {};
    const now = Date.now();
    switch (m.type) {
      case "NodeHealth": {
        if (d.node === undefined) break;
        const node = nodeOf(d.node);
        Object.assign(node, { status: text(d.status), load: d.load_avg, mem: d.memory_usage, disk: d.disk_usage, seen: now });
        break;
      }
      case "NodeLifecycle": {
        if (d.node === undefined) break;
        const node = nodeOf(d.node);
        Object.assign(node, { lifecycle: text(d.event), reason: text(d.reason), seen: now });
        break;
      }
      case "ClusterHealth":
        state.cluster = { status: text(d.status), healthy: d.healthy_nodes, total: d.total_nodes,
          degraded: Array.isArray(d.degraded_nodes) ? d.degraded_nodes.slice(0, 16).map(text) : [],
          unhealthy: Array.isArray(d.unhealthy_nodes) ? d.unhealthy_nodes.slice(0, 16).map(text) : [],
          quorum: text(d.quorum_status || "available"), seen: now };
        break;
      case "ClusterMembership":
        state.membership = { event: text(d.event), node: text(d.node), size: d.cluster_size,
          members: Array.isArray(d.members) ? d.members.slice(0, 32).map(text) : null, seen: now };
        if (d.node !== undefined) Object.assign(nodeOf(d.node), { membership: text(d.event), seen: now });
        break;
      case "SubscriptionHealth": {
        if (d.event === "heartbeat" && d.store !== undefined) { subscriptionOf(d.store, d.subscription).seen = now; break; }
        if (d.store === undefined) break;
        const sub = subscriptionOf(d.store, d.subscription);
        Object.assign(sub, { status: text(d.status), event: text(d.event), errors: d.error_count, seen: now,
          lastError: text(d.last_error) });
        if (BREAKER[d.event]) sub.breaker = BREAKER[d.event];
        break;
      }
      case "EmitterMetrics": {
        if (d.store === undefined) break;
        const sub = subscriptionOf(d.store, d.subscription);
        Object.assign(sub, { breaker: text(d.breaker), paused: d.paused === true, dropped: d.dropped_events,
          missed: d.missed_events, buffered: d.buffered, eps: d.events_per_second, seen: now });
        break;
      }
      case "HealthSummary":
        if (d.store === undefined) break;
        storeOf(d.store).summary = { total: d.total, healthy: d.healthy, degraded: d.degraded, failed: d.failed,
          registering: d.registering, stale: d.stale, unknown: d.unknown, seen: now };
        break;
      case "MetricsSummary":
        if (d.store === undefined) break;
        Object.assign(storeOf(d.store), { eps: d.events_per_second, dropped: d.dropped_events, missed: d.missed_events });
        break;
      case "BrokerMetrics": {
        if (d.node === undefined) break;
        const key = text(d.node);
        Object.assign(state.brokers.touch(key, () => ({ name: key })), { rate: d.rate, messages: d.messages,
          subscribers: d.subscribers, publishers: d.publishers, uptime: d.uptime, seen: now });
        break;
      }
      case "SystemAlert": onAlert(m, d); break;
      case "AlertAck": onAck(d); break;
      case "AlertEscalation": {
        const alert = state.alerts.find((a) => a.id === text(d.alert_id));
        if (alert) alert.escalation = `escalated to ${text(d.escalated_to)} (level ${text(d.level)})`;
        break;
      }
      default: break;
    }
  }

  function nodeOf(name) { const key = text(name); return state.nodes.touch(key, () => ({ name: key })); }

  function storeOf(name) {
    const key = text(name);
    return state.stores.touch(key, () => ({ name: key, summary: null, subs: new Bounded(LIMITS.subscriptions) }));
  }

  function subscriptionOf(store, name) {
    const key = text(name);
    return storeOf(store).subs.touch(key, () => ({ name: key, breaker: "closed", paused: false }));
  }

  function onAlert(m, d) {
    const id = text(d.alert_id);
    const known = state.alerts.findIndex((a) => a.id === id && id !== "");
    if (known >= 0) state.alerts.splice(known, 1);
    state.alerts.unshift({
      id, severity: SEVERITIES.includes(d.severity) ? d.severity : "info", title: text(d.title),
      description: text(d.description), source: text(d.source || m.src), node: text(d.node),
      requiresAck: d.requires_ack !== false, ts: clock(m.ts), ack: state.acks.get(id) || null, escalation: "",
    });
    if (state.alerts.length > LIMITS.alerts) {
      state.counts.alertsDropped += state.alerts.length - LIMITS.alerts;
      state.alerts.length = LIMITS.alerts;
    }
  }

  function onAck(d) {
    const id = text(d.alert_id);
    const ack = { by: text(d.acknowledged_by), note: text(d.note), at: Date.now() };
    state.acks.touch(id, () => ack);
    for (const alert of state.alerts) if (alert.id === id) alert.ack = ack;
  }

  // ------------------------------------------------------------------ the stream

  const pending = []; // messages waiting for the next paint (at most LIMITS.pending)
  let source = null;

  function connect() {
    source = new EventSource("/v1/stream");
    source.onopen = () => { state.stream = "live"; schedule(); };
    source.onmessage = (event) => {
      let m;
      try { m = JSON.parse(event.data); } catch (_) { m = null; }
      if (!isObject(m)) { state.counts.unreadable += 1; schedule(); return; }
      state.counts.events += 1;
      try { onMessage(m); } catch (err) { state.counts.unreadable += 1; }
      pending.push({ m });
      if (pending.length > LIMITS.pending) state.counts.shed += pending.splice(0, pending.length - LIMITS.pending).length;
      schedule();
    };
    // The server marks what it could not send (a slow page, a gap in the journal): {"missed": n}.
    source.addEventListener("gap", (event) => {
      let missed = null;
      try { const g = JSON.parse(event.data); missed = isObject(g) && isNumber(g.missed) ? g.missed : null; } catch (_) { /* shown as unknown */ }
      state.counts.gaps += 1;
      if (missed !== null) state.counts.missed += missed;
      pending.push({ gap: missed });
      if (pending.length > LIMITS.pending) state.counts.shed += pending.splice(0, pending.length - LIMITS.pending).length;
      schedule();
    });
    // Any other event name is a later server's news: EventSource delivers it to no listener.
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) { // refused (not 200 / not an event stream): retry ourselves
        state.stream = "down";
        setTimeout(connect, RECONNECT_MS);
      } else {
        state.stream = "reconnecting";
      }
      schedule();
    };
  }

  // ------------------------------------------------------------------ the stats poll

  async function poll() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), STATS_TIMEOUT_MS);
    try {
      const response = await fetch("/v1/stats", { cache: "no-store", signal: abort.signal, headers: { Accept: "application/json" } });
      const body = await response.json().catch(() => null);
      if (!response.ok || !isObject(body)) {
        const why = isObject(body) && isObject(body.error) ? text(body.error.message) : `HTTP ${response.status}`;
        throw new Error(why);
      }
      onStats(body);
    } catch (err) {
      state.statsError = err && err.name === "AbortError" ? "the broker did not answer within 2 s" : text(err && err.message);
    } finally {
      clearTimeout(timer);
      schedule();
      setTimeout(poll, STATS_EVERY_MS);
    }
  }

  function onStats(stats) {
    const at = Date.now();
    const instances = isObject(stats.instances) ? stats.instances : {};
    const messages = {};
    for (const [name, figures] of Object.entries(instances).slice(0, 32)) {
      if (!isObject(figures)) continue;
      messages[name] = figures.messages;
      let rate = isNumber(figures.rate) ? figures.rate : 0;
      const before = state.previous && state.previous.messages[name];
      if (state.previous && isNumber(before) && isNumber(figures.messages) && at > state.previous.at) {
        rate = Math.max(0, (figures.messages - before) * 1000 / (at - state.previous.at));
      }
      const history = state.rates.get(name) || [];
      history.push(rate);
      if (history.length > LIMITS.spark) history.splice(0, history.length - LIMITS.spark);
      state.rates.set(name, history);
    }
    state.previous = { at, messages };
    state.stats = stats;
    state.statsError = "";
    state.statsAt = at;
  }

  // ------------------------------------------------------------------ painting

  let scheduled = false;
  function schedule() {
    if (scheduled) return;
    scheduled = true;
    setTimeout(() => { scheduled = false; paint(); }, PAINT_MS);
  }

  function paint() {
    paintTail();
    paintInstances();
    paintCluster();
    paintStores();
    paintAlerts();
    paintInternals();
    paintBanner();
  }

  function paintTail() {
    const tail = $("tail");
    const follow = tail.scrollTop + tail.clientHeight >= tail.scrollHeight - 20;
    const batch = pending.splice(0, pending.length);
    const fragment = document.createDocumentFragment();
    for (const item of batch) fragment.append(item.gap !== undefined ? gapLine(item.gap) : tailLine(item.m));
    tail.append(fragment);
    while (tail.childElementCount > LIMITS.tail) tail.firstElementChild.remove();
    if (follow) tail.scrollTop = tail.scrollHeight;
    const shown = Array.from(tail.children).filter((line) => !line.classList.contains("hidden")).length;
    $("tail-info").textContent = `${shown} of the last ${tail.childElementCount} lines shown (at most ${LIMITS.tail} kept)` +
      (state.counts.shed ? `; ${state.counts.shed} not drawn (arrived faster than the page paints)` : "");
  }

  function tailLine(m) {
    const d = isObject(m.data) ? m.data : {};
    const topic = text(m.topic);
    const line = el("div", `line ${category(messageCategory(m, d))}`,
      el("span", "t", clock(m.ts)), " ", el("span", "i", alias(m.instance).padEnd(11)), " ",
      topic.slice(topic.indexOf("/") + 1), " ", el("span", "ty", text(m.type)), " ", keyFields(d, m.type));
    line.dataset.instance = alias(m.instance);
    line.dataset.topic = topic.toLowerCase();
    applyFilter(line);
    return line;
  }

  function gapLine(missed) {
    const line = el("div", "line gap",
      `⚠ stream gap: ${missed === null ? "an unknown number of" : num(missed)} message(s) missed here`);
    line.dataset.instance = "";
    line.dataset.topic = "";
    return line;
  }

  function applyFilter(line) {
    const instance = $("tail-instance").value;
    const topic = $("tail-topic").value.trim().toLowerCase();
    const gap = line.classList.contains("gap");
    const visible = gap || ((!instance || line.dataset.instance === instance) && (!topic || line.dataset.topic.includes(topic)));
    line.classList.toggle("hidden", !visible);
  }

  function sparkline(values) {
    const width = 160, height = 26;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", String(width));
    svg.setAttribute("height", String(height));
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const top = Math.max(1, ...values);
    const step = width / Math.max(1, LIMITS.spark - 1);
    const offset = (LIMITS.spark - values.length) * step;
    const points = values.map((v, i) => `${(offset + i * step).toFixed(1)},${(height - 1 - (v / top) * (height - 3)).toFixed(1)}`);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.append(line);
    const title = document.createElementNS(SVG, "title");
    title.textContent = `peak ${num(top)} msg/s`;
    svg.append(title);
    return svg;
  }

  function paintInstances() {
    const body = $("instances");
    const stats = state.stats;
    if (!stats || !isObject(stats.instances)) { body.replaceChildren(el("tr", "", el("td", "muted", "no figures yet"))); return; }
    // Per-instance subscriber counts where the broker gives them; else the column goes and the
    // connection totals are named above the table.
    const entries = Object.entries(stats.instances).slice(0, 32);
    const perInstance = entries.some(([, f]) => isObject(f) && isNumber(f.subscribers));
    $("panel-instances").classList.toggle("no-subscribers", !perInstance);
    $("connections").textContent = `${num(stats.subscribers)} subscriber(s) and ${num(stats.publishers)} publisher(s) connected`;
    const rows = [];
    for (const [name, f] of entries) {
      if (!isObject(f)) continue;
      const history = state.rates.get(name) || [];
      const row = el("tr", "",
        el("td", "", alias(name)),
        el("td", "", sparkline(history)),
        el("td", "num", num(history.length ? Math.round(history[history.length - 1] * 10) / 10 : null)),
        el("td", "num", num(f.messages)),
        el("td", "num", size(f.bytes)),
        el("td", "num subscribers", num(isNumber(f.subscribers) ? f.subscribers : null)));
      row.dataset.instance = alias(name);
      rows.push(row);
    }
    body.replaceChildren(...rows);
  }

  function paintCluster() {
    const parts = [];
    const c = state.cluster;
    if (c) {
      parts.push(el("span", "", "cluster "), badge(c.status));
      if (isNumber(c.healthy) && isNumber(c.total)) parts.push(el("span", "", `${c.healthy}/${c.total} nodes healthy`));
      if (c.quorum !== "available") parts.push(badge(`quorum ${c.quorum}`, c.quorum === "lost" ? "failure" : "action"));
      if (c.degraded.length) parts.push(el("span", "muted", `degraded: ${c.degraded.join(", ")}`));
      if (c.unhealthy.length) parts.push(el("span", "muted", `unhealthy: ${c.unhealthy.join(", ")}`));
      parts.push(el("span", "muted", ago(c.seen)));
    } else {
      parts.push(el("span", "muted", "no ClusterHealth yet"));
    }
    const mb = state.membership;
    if (mb) {
      parts.push(el("span", "", `membership: ${mb.node} ${mb.event}`), badge(mb.event));
      if (isNumber(mb.size)) parts.push(el("span", "muted", `${mb.size} members`));
    }
    $("cluster").replaceChildren(...parts);

    const now = Date.now();
    const cards = state.nodes.values().sort((a, b) => a.name.localeCompare(b.name)).map((n) => {
      const stale = n.seen && now - n.seen > STALE_MS;
      const word = n.status || n.lifecycle || n.membership || "unknown";
      const detail = [
        isNumber(n.load) ? `load ${num(n.load)}` : null,
        percent(n.mem) ? `mem ${percent(n.mem)}` : null,
        percent(n.disk) ? `disk ${percent(n.disk)}` : null,
      ].filter(Boolean).join(" · ");
      const life = [n.lifecycle ? `lifecycle ${n.lifecycle}${n.reason ? ` (${n.reason})` : ""}` : null,
        n.membership ? `cluster ${n.membership}` : null].filter(Boolean).join(" · ");
      const card = el("div", `card ${category(statusCategory(word))}${stale ? " stale" : ""}`,
        el("div", "name", n.name), badge(word), stale ? el("span", "muted", " stale") : null,
        detail ? el("div", "detail", detail) : null, life ? el("div", "detail", life) : null,
        el("div", "detail", ago(n.seen)));
      card.dataset.node = n.name;
      return card;
    });
    const nodes = $("nodes");
    if (!cards.length) nodes.replaceChildren(el("div", "muted", "no node heard of yet"));
    else nodes.replaceChildren(...cards);
  }

  function paintStores() {
    const now = Date.now();
    const blocks = state.stores.values().sort((a, b) => a.name.localeCompare(b.name)).map((s) => {
      const head = el("div", "store-head", el("span", "name", s.name));
      const sum = s.summary;
      if (sum) {
        head.append(el("span", "", `${num(sum.healthy)}/${num(sum.total)} healthy`));
        for (const key of ["degraded", "failed", "stale", "registering", "unknown"]) {
          if (isNumber(sum[key]) && sum[key] > 0) head.append(badge(`${sum[key]} ${key}`, key === "failed" ? "failure" : key === "degraded" || key === "stale" ? "action" : "health"));
        }
      }
      if (isNumber(s.eps)) head.append(el("span", "muted", `${num(s.eps)} events/s`));
      if (isNumber(s.dropped)) head.append(el("span", s.dropped ? "last-error" : "muted", `${num(s.dropped)} dropped`));
      if (isNumber(s.missed)) head.append(el("span", s.missed ? "last-error" : "muted", `${num(s.missed)} missed`));
      const rows = s.subs.values().map((sub) => {
        const stale = sub.seen && now - sub.seen > STALE_MS;
        const status = stale ? "stale" : sub.status || "unknown";
        const row = el("tr", "",
          el("td", "", sub.name),
          el("td", "", badge(status)),
          el("td", "", badge(`breaker ${sub.breaker || "closed"}`, sub.breaker === "open" ? "failure" : sub.breaker === "half_open" ? "action" : "success")),
          el("td", "", badge(sub.paused ? "paused" : "flowing", sub.paused ? "failure" : "success")),
          el("td", "num", num(sub.errors)), el("td", "num", num(sub.missed)), el("td", "num", num(sub.dropped)),
          el("td", "num", num(sub.buffered)),
          el("td", "", el("span", "muted", sub.event || ""),
            sub.lastError && (sub.status === "failed" || sub.status === "degraded") ? el("span", "last-error", `: ${sub.lastError}`) : null));
        row.dataset.subscription = sub.name;
        return row;
      });
      const table = el("table", "table",
        el("thead", "", el("tr", "", ...["subscription", "status", "circuit breaker", "emission", "errors", "missed", "dropped", "buffered", "last event"]
          .map((h, i) => el("th", i >= 4 && i <= 7 ? "num" : "", h)))),
        el("tbody", "", ...rows));
      const block = el("div", "store", head, rows.length ? table : null);
      block.dataset.store = s.name;
      return block;
    });
    const stores = $("stores");
    if (!blocks.length) stores.replaceChildren(el("div", "muted", "no store heard of yet"));
    else stores.replaceChildren(...blocks);
  }

  function paintAlerts() {
    const counts = SEVERITIES.map((sev) => {
      const open = state.alerts.filter((a) => a.severity === sev && !a.ack).length;
      return badge(`${open} ${sev}`, open ? sev : "none");
    });
    if (state.counts.alertsDropped) counts.push(el("span", "muted", `${state.counts.alertsDropped} older not kept`));
    $("alert-counts").replaceChildren(...counts);
    const rank = (a) => SEVERITIES.indexOf(a.severity);
    const sorted = state.alerts.map((a, i) => [a, i]).sort((x, y) => rank(x[0]) - rank(y[0]) || x[1] - y[1]).map((x) => x[0]);
    const items = sorted.map((a) => {
      const sub = [a.description, a.source ? `from ${a.source}` : "", a.node ? `on ${a.node}` : "", a.escalation]
        .filter(Boolean).join(" · ");
      const item = el("li", a.ack ? "acked" : "",
        badge(a.severity, a.severity), el("span", "title", a.title), el("span", "muted mono", a.ts),
        el("span", "sub", sub || null, a.ack ? el("span", "ack", ` ✔ acknowledged by ${a.ack.by}${a.ack.note ? `: ${a.ack.note}` : ""}`) : null));
      item.dataset.alert = a.id;
      item.dataset.severity = a.severity;
      return item;
    });
    const list = $("alerts");
    if (!items.length) list.replaceChildren(el("li", "muted", "no alert yet"));
    else list.replaceChildren(...items);
  }

  function kv(title, pairs) {
    const dl = el("dl", "");
    for (const [key, value, mood] of pairs) dl.append(el("dt", "", key), el("dd", mood || "", value));
    return el("div", "kv", el("h3", "", title), dl);
  }

  function paintInternals() {
    const s = state.stats;
    const groups = [];
    if (s) {
      const t = isObject(s.totals) ? s.totals : {};
      groups.push(kv("broker", [["node", text(s.node)], ["version", text(s.version)], ["uptime", duration(s.uptime)],
        ["messages", num(t.messages)], ["subscribers", num(s.subscribers)], ["publishers", num(s.publishers)],
        ["malformed", num(s.malformed), s.malformed ? "bad" : ""]]));
      const j = isObject(s.journal) ? s.journal : null;
      if (j) {
        const jstate = text(j.state || "unknown");
        groups.push(kv("journal", [["state", jstate + (j.reason ? ` (${text(j.reason)})` : ""), jstate === "ok" ? "good" : jstate === "disabled" ? "" : "bad"],
          ["backlog", num(j.backlog), j.backlog ? "bad" : ""], ["committed", num(j.committed)],
          ["dropped", num(j.dropped), j.dropped ? "bad" : ""], ["gaps", num(j.gaps), j.gaps ? "bad" : ""],
          ["failed", num(j.failed), j.failed ? "bad" : ""], ["buffer", `${size(j.buffer_bytes)} of ${size(j.buffer_limit)}`],
          ...(j.last_error ? [["last error", text(j.last_error), "bad"]] : [])]));
      } else {
        groups.push(kv("journal", [["state", "disabled"]]));
      }
      const sec = isObject(s.security) ? s.security : {};
      groups.push(kv("security", [["CURVE", sec.enabled ? "on" : "off", sec.enabled ? "good" : ""],
        ["handshake failures", num(sec.handshake_failures), sec.handshake_failures ? "bad" : ""],
        ["forbidden ops", num(sec.forbidden_ops), sec.forbidden_ops ? "bad" : ""],
        ["violations", num(sec.violations_published), sec.violations_published ? "bad" : ""]]));
      const r = isObject(s.restarts) ? s.restarts : {};
      const byThread = isObject(r.by_thread) ? Object.entries(r.by_thread).slice(0, 8) : [];
      groups.push(kv("thread restarts", [["total", num(r.total), r.total ? "bad" : "good"],
        ...byThread.map(([name, n]) => [text(name), num(n), "bad"]),
        ["limit", isNumber(r.max_restarts) ? `${r.max_restarts} in ${duration(r.period)}` : "–"]]));
      const f = isObject(s.federation) ? s.federation : null;
      if (f && f.state !== "off") {
        const dropped = isObject(f.dropped) ? Object.values(f.dropped).reduce((a, b) => a + (isNumber(b) ? b : 0), 0) : 0;
        groups.push(kv("federation", [["state", text(f.state), f.state === "connected" ? "good" : "bad"],
          ["NATS", text(f.server || "–")], ["exported", num(f.exported)], ["imported", num(f.imported)],
          ["gaps", num(f.gaps), f.gaps ? "bad" : ""], ["dropped", num(dropped), dropped ? "bad" : ""],
          ["reconnects", num(f.reconnects)]]));
        const js = isObject(f.jetstream) ? f.jetstream : null;
        if (js && js.state !== "off") {
          groups.push(kv("journaled (JetStream)", [["state", text(js.state), js.state === "ok" ? "good" : "bad"],
            ["exported", num(js.exported)], ["imported", num(js.imported)],
            ["lag", num(js.lag), js.lag ? "bad" : ""], ["lost", num(js.lost), js.lost ? "bad" : ""],
            ["error", text(js.last_error || "–"), js.last_error ? "bad" : ""]]));
        }
      }
      const brokers = state.brokers.values().sort((a, b) => (a.name < b.name ? -1 : 1));
      if (brokers.length) {
        const now = Date.now();
        groups.push(kv("brokers", brokers.map((b) => [b.name,
          `${isNumber(b.rate) ? b.rate.toFixed(1) : "–"} msg/s · ${num(b.subscribers)} sub · ${num(b.publishers)} pub`,
          now - b.seen > STALE_MS ? "bad" : "good"])));
      }
      if (isObject(s.http)) {
        groups.push(kv("http", Object.entries(s.http).slice(0, 10).map(([k, v]) => [text(k), isNumber(v) ? num(v) : text(v)])));
      }
    }
    const c = state.counts;
    groups.push(kv("this page", [["stream events", num(c.events)], ["stream gaps", num(c.gaps), c.gaps ? "bad" : ""],
      ["missed in gaps", num(c.missed), c.missed ? "bad" : ""], ["unreadable", num(c.unreadable), c.unreadable ? "bad" : ""],
      ["not drawn", num(c.shed)], ["nodes forgotten", num(state.nodes.evicted)], ["stores forgotten", num(state.stores.evicted)]]));
    $("internals").replaceChildren(...groups);
  }

  /** The overall state: the worst of what the panels show, with its first few reasons. */
  function assess() {
    const fail = [], warn = [];
    if (state.statsError) fail.push(`stats: ${state.statsError}`);
    if (state.stream === "down") fail.push("live stream refused");
    else if (state.stream !== "live") warn.push(`live stream ${state.stream}`);
    const s = state.stats;
    if (s && !state.statsError) {
      const j = isObject(s.journal) ? s.journal : null;
      // "disabled" is on purpose (--journal none); "unavailable": durable publishes and replays fail
      if (j && j.state && j.state !== "ok" && j.state !== "disabled") {
        (j.state === "unavailable" || j.state === "failed" ? fail : warn).push(`journal ${text(j.state)}${j.reason ? `: ${text(j.reason)}` : ""}`);
      }
      if (j && j.dropped) warn.push(`journal dropped ${num(j.dropped)}`);
      const f = isObject(s.federation) ? s.federation : null;
      if (f && f.state && f.state !== "off" && f.state !== "connected") warn.push(`federation ${text(f.state)}`);
      const fjs = f && isObject(f.jetstream) ? f.jetstream : null;
      if (fjs && fjs.state && fjs.state !== "off" && fjs.state !== "ok") warn.push(`federation jetstream ${text(fjs.state)}`);
    }
    const c = state.cluster;
    if (c && c.status === "unhealthy") fail.push("cluster unhealthy");
    else if (c && c.status === "degraded") warn.push("cluster degraded");
    if (c && c.quorum === "lost") fail.push("quorum lost");
    const nodes = state.nodes.values();
    const sick = nodes.filter((n) => n.status === "unhealthy" || n.lifecycle === "down" || n.membership === "partitioned");
    if (sick.length) fail.push(`${sick.length} node(s) down or unhealthy: ${sick.slice(0, 3).map((n) => n.name).join(", ")}`);
    const tired = nodes.filter((n) => n.status === "degraded");
    if (tired.length) warn.push(`${tired.length} node(s) degraded`);
    const subs = state.stores.values().flatMap((st) => st.subs.values().map((sub) => [st.name, sub]));
    const failed = subs.filter(([, sub]) => sub.status === "failed" || sub.breaker === "open");
    if (failed.length) fail.push(`${failed.length} subscription(s) failed: ${failed.slice(0, 2).map(([, sub]) => sub.name).join(", ")}`);
    const shaky = subs.filter(([, sub]) => !failed.some(([, f]) => f === sub) && (sub.status === "degraded" || sub.paused || sub.breaker === "half_open"));
    if (shaky.length) warn.push(`${shaky.length} subscription(s) degraded or paused`);
    const open = state.alerts.filter((a) => !a.ack && a.requiresAck);
    const grave = open.filter((a) => a.severity === "critical" || a.severity === "error");
    if (grave.length) fail.push(`${grave.length} unacknowledged ${grave.some((a) => a.severity === "critical") ? "critical " : ""}alert(s): ${grave[0].title}`);
    if (state.counts.gaps) warn.push(`${state.counts.gaps} stream gap(s)`);
    if (fail.length) return ["fail", "FAILING", fail.concat(warn)];
    if (warn.length) return ["warn", "DEGRADED", warn];
    if (!s) return ["waiting", "CONNECTING", ["waiting for the broker's first figures"]];
    return ["ok", "HEALTHY", ["every instance, node and subscription heard of is well"]];
  }

  function paintBanner() {
    const [mood, word, reasons] = assess();
    const banner = $("banner");
    banner.className = `banner state-${mood}`;
    banner.dataset.state = mood;
    $("state").textContent = word;
    const extra = reasons.length > LIMITS.reasons ? ` (+${reasons.length - LIMITS.reasons} more)` : "";
    $("reasons").textContent = reasons.slice(0, LIMITS.reasons).join(" · ") + extra;
    $("reasons").title = reasons.join("\n");
    const s = state.stats;
    $("broker-id").textContent = s ? `broker ${text(s.node)} · v${text(s.version)} · up ${duration(s.uptime)}` : "";
    const statsConn = $("conn-stats");
    statsConn.dataset.state = state.statsError ? "down" : state.stats ? "live" : "waiting";
    statsConn.textContent = state.statsError ? "stats: unreachable" : state.statsAt ? `stats: ${ago(state.statsAt)}` : "stats: waiting";
    const streamConn = $("conn-stream");
    streamConn.dataset.state = state.stream === "live" ? "live" : state.stream === "down" ? "down" : "waiting";
    streamConn.textContent = `stream: ${state.stream}`;
    document.body.dataset.stream = state.stream;
  }

  // ------------------------------------------------------------------ start

  function start() {
    const select = $("tail-instance");
    for (const name of INSTANCES) select.append(el("option", "", name));
    const refilter = () => { for (const line of $("tail").children) applyFilter(line); paintTail(); };
    select.addEventListener("change", refilter);
    $("tail-topic").addEventListener("input", refilter);
    connect();
    poll();
    setInterval(schedule, 1000); // "12s ago" and staleness move on without news
    paint();
  }

  start();
})();
