// Refreshes the status page from /api/v1/status every second, in place.
//
// The server renders the first view (templates/status.html); this script
// fills the same elements, cloning the page's <template> rows for symbols,
// servers and actors that appear later. A 401 means reads need the API
// token: a small form asks for it, and it is kept in sessionStorage (this
// tab only) and sent as a Bearer token. If TradeGuard stops answering, the
// page says so and how old its data is, rather than showing old data as live.
"use strict";

(function () {
  const TOKEN_KEY = "tradeguard.api-token";
  const REFRESH_MS = 1000;
  const FETCH_TIMEOUT_MS = 4000;
  const NEAR_LEVEL_PCT = 1.0; // as pages.NEAR_LEVEL_PCT
  const LIVE_STATES = ["open", "closing", "close_failed"];

  const body = document.body;
  const statusUrl = body.dataset.statusUrl;
  let lastSuccess = body.dataset.loaded === "server" ? Date.now() : null;
  let refreshes = 0;
  let lastAlerts = "";

  // Formatting: the same as the Jinja filters in pages.py ---------------------

  function duration(seconds) { // as tradeguard.alerts.duration
    if (seconds < 10) return seconds.toFixed(1) + "s";
    const whole = Math.round(seconds);
    if (whole < 60) return whole + "s";
    const pad = (n) => String(n).padStart(2, "0");
    if (whole < 3600) return Math.floor(whole / 60) + "m " + pad(whole % 60) + "s";
    return Math.floor(whole / 3600) + "h " + pad(Math.floor((whole % 3600) / 60)) + "m";
  }
  const age = (s) => (s === null || s === undefined ? "never" : duration(s));
  function money(value, cur, signed) {
    if (value === null || value === undefined) return "—";
    const sign = value < 0 ? "-" : signed ? "+" : "";
    const digits = Math.abs(value).toLocaleString("en-US",
      { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    return sign + cur + digits;
  }
  const pct = (v) => (v === null || v === undefined ? "—"
    : (v < 0 ? "-" : "+") + Math.abs(v).toFixed(2) + "%");
  const near = (v) => v !== null && v !== undefined && Math.abs(v) < NEAR_LEVEL_PCT;
  const words = (s) => (s ? String(s).replace(/_/g, " ") : "");
  const orDash = (s) => (s === null || s === undefined || s === "" ? "—" : String(s));

  // DOM helpers ----------------------------------------------------------------

  function setText(el, text) {
    if (el && el.textContent !== text) el.textContent = text;
  }
  function setClasses(el, base, extra) {
    const value = [base].concat(extra).filter(Boolean).join(" ");
    if (el && el.className !== value) el.className = value;
  }
  function field(row, selector, text, base, extra) {
    const el = row.querySelector(selector);
    setText(el, text);
    // base "" (an element with no class of its own) still gets its state classes.
    if (base !== undefined) setClasses(el, base, extra || []);
    return el;
  }
  function clone(templateId) {
    return document.getElementById(templateId).content.firstElementChild.cloneNode(true);
  }

  // Makes `tbody` hold one row per item, in order, reusing rows by key so that
  // an element a reader (or a test) holds stays the same element.
  function syncRows(container, items, keyAttr, keyOf, templateId, fill) {
    const old = new Map();
    for (const row of Array.from(container.children)) {
      const key = row.getAttribute(keyAttr);
      if (key === null || old.has(key)) row.remove();
      else old.set(key, row);
    }
    items.forEach((item, i) => {
      const key = keyOf(item);
      let row = old.get(key);
      if (row) old.delete(key);
      else { row = clone(templateId); row.setAttribute(keyAttr, key); }
      fill(row, item);
      if (container.children[i] !== row) container.insertBefore(row, container.children[i] || null);
    });
    old.forEach((row) => row.remove());
  }
  function showEmpty(section, empty) {
    const note = document.querySelector(section + " > .empty");
    if (note) note.hidden = !empty;
  }

  // Sections ---------------------------------------------------------------------

  const PAPER = "Paper broker: closes are simulated, no order reaches a real broker";

  function summary(view) { // as pages.summary
    const bad = [];
    if (!view.feed.connected) bad.push(["bad", "Feed disconnected"]);
    const live = view.positions.filter((p) => LIVE_STATES.includes(p.state));
    const listed = (pred) => live.filter(pred).map((p) => p.symbol).join(", ");
    for (const [state, level, text] of [["close_failed", "bad", "Close failed"],
                                        ["closing", "warn", "Closing"]]) {
      const symbols = listed((p) => p.state === state);
      if (symbols) bad.push([level, text + ": " + symbols]);
    }
    for (const [fresh, level, text] of [["blind", "bad", "BLIND (no usable price)"],
                                        ["stale", "warn", "Stale price"]]) {
      const symbols = listed((p) => p.freshness === fresh);
      if (symbols) bad.push([level, text + ": " + symbols]);
    }
    const down = Object.keys(view.actors).filter((name) => !view.actors[name].alive);
    if (down.length) bad.push(["bad", "Actor down: " + down.join(", ")]);
    if (!view.dns.system_ok) bad.push(["warn", "System DNS failing"]);
    if (view.broker && view.broker.paper) bad.push(["warn", PAPER]);
    bad.sort((a, b) => (a[0] !== "bad") - (b[0] !== "bad"));
    return (bad.length ? bad : [["ok", "All systems normal"]]).concat(marketClosed(live));
  }

  function marketClosed(live) { // as pages.market_closed
    const waiting = live.filter((p) => p.market_open === false).map((p) => p.symbol);
    if (!waiting.length) return [];
    return [["closed", "Market closed: " + waiting.join(", ") + " wait for the open (no " +
      "orders, no stale or blind alerts until then)"]];
  }

  function renderSummary(view) {
    const list = document.getElementById("summary");
    const lines = summary(view);
    while (list.children.length > lines.length) list.lastElementChild.remove();
    lines.forEach(([level, text], i) => {
      const li = list.children[i] || list.appendChild(document.createElement("li"));
      setClasses(li, level, []);
      setText(li, text);
    });
  }

  function fillPosition(cur) {
    return (row, p) => {
      row.dataset.state = p.state;
      const noPrice = p.price === null || p.price === undefined;
      field(row, ".symbol", p.symbol);
      field(row, ".side", p.side);
      field(row, ".quantity", String(p.quantity));
      field(row, ".entry", money(p.entry_price, cur));
      field(row, ".price", money(p.price, cur), "num price", [p.freshness]);
      setClasses(row.querySelector(".freshness"), "freshness", [p.freshness]);
      field(row, ".freshness .label", words(p.freshness));
      field(row, ".freshness .age", noPrice ? "no price" : age(p.price_age_seconds));
      field(row, ".stop-loss", money(p.stop_loss, cur));
      field(row, ".distance-stop", pct(p.distance_to_stop_pct), "num distance-stop",
        [near(p.distance_to_stop_pct) && "near"]);
      field(row, ".take-profit", money(p.take_profit, cur));
      field(row, ".distance-target", pct(p.distance_to_target_pct), "num distance-target",
        [near(p.distance_to_target_pct) && "near"]);
      field(row, ".unrealized-pnl", money(p.unrealized_pnl, cur, true));
      field(row, ".state", words(p.state), "state", [p.state]);
    };
  }

  function fillClosed(cur, now) {
    return (row, p) => {
      field(row, ".symbol", p.symbol);
      field(row, ".side", p.side);
      field(row, ".quantity", String(p.quantity));
      field(row, ".entry", money(p.entry_price, cur));
      field(row, ".exit-price", money(p.exit_price, cur));
      field(row, ".pnl", money(p.pnl, cur, true));
      field(row, ".reason", words(p.reason));
      field(row, ".closed-ago", p.closed_at ? age(now - p.closed_at) + " ago" : "—");
    };
  }

  // As in the template: a closed position's client order id is its own.
  const closedKey = (p) => p.client_order_id || p.symbol + "|" + p.closed_at;

  function renderPositions(view) {
    const live = view.positions.filter((p) => LIVE_STATES.includes(p.state));
    const closed = view.positions.filter((p) => !LIVE_STATES.includes(p.state))
      .sort((a, b) => b.closed_at - a.closed_at); // newest first
    // One live position per symbol (the store enforces it), so the symbol is its key.
    syncRows(document.getElementById("open-positions"), live, "data-symbol",
      (p) => p.symbol, "tpl-position", fillPosition(view.currency));
    syncRows(document.getElementById("closed-positions"), closed, "data-key",
      closedKey, "tpl-closed", (row, p) => {
        row.dataset.symbol = p.symbol;
        fillClosed(view.currency, view.now)(row, p);
      });
    showEmpty("#positions", live.length === 0);
    showEmpty("#closed", closed.length === 0);
  }

  function renderFeed(view) {
    const f = view.feed;
    field(document, "#feed-connected", f.connected ? "connected" : "DISCONNECTED", "",
      [f.connected ? "up" : "down"]);
    field(document, "#feed-host", orDash(f.host));
    field(document, "#feed-ip", orDash(f.connected_ip));
    field(document, "#feed-resolved-via", orDash(f.resolved_via));
    const last = f.last_message_age_seconds;
    const silent = last === null || last === undefined || last > view.thresholds.stale;
    field(document, "#feed-last-message-age", silent && last == null ? "never" : age(last) + " ago",
      "", [silent && "stale"]);
    field(document, "#feed-reconnect-attempts", String(f.reconnect_attempts));
    field(document, "#feed-network-errors", String(f.network_errors));
    field(document, "#feed-subscribed", String(f.subscribed_symbols));
    field(document, "#feed-last-error", orDash(f.last_error));
  }

  function renderDns(view) {
    const dns = view.dns;
    field(document, "#dns-system", dns.system_ok ? "ok" : "FAILING", "",
      [dns.system_ok ? "up" : "down"]);
    field(document, "#dns-failures", String(dns.failures));
    const servers = Object.entries(dns.servers);
    syncRows(document.getElementById("dns-servers"), servers, "data-dns-server",
      ([name]) => name, "tpl-server", (row, [name, s]) => {
        field(row, ".name", name);
        field(row, ".ok", s.ok ? "ok" : "failing", "ok", [s.ok ? "up" : "down"]);
        field(row, ".latency", s.latency_ms == null ? "—" : s.latency_ms.toFixed(1) + " ms");
        field(row, ".error", s.error || "");
      });
  }

  function renderActors(view) {
    syncRows(document.getElementById("actor-rows"), Object.entries(view.actors), "data-actor",
      ([name]) => name, "tpl-actor", (row, [name, a]) => {
        field(row, ".name", name);
        field(row, ".alive", a.alive ? "up" : "DOWN", "alive", [a.alive ? "up" : "down"]);
        field(row, ".restarts", String(a.restarts));
        field(row, ".last-failure", a.last_failure || "");
      });
  }

  function renderAlerts(view) {
    const list = document.getElementById("alert-list");
    const key = JSON.stringify(view.alerts);
    // Ages move every second; the list itself only when an alert comes or is sent.
    if (key !== lastAlerts) {
      lastAlerts = key;
      list.replaceChildren(...view.alerts.map(() => clone("tpl-alert")));
    }
    view.alerts.forEach((a, i) => {
      const li = list.children[i];
      setClasses(li, "alert", [a.severity]);
      field(li, ".when", age(view.now - a.created_at) + " ago");
      li.querySelector(".when").title = new Date(a.created_at * 1000).toLocaleString();
      field(li, ".severity", a.severity);
      field(li, ".delivery", a.sent ? "sent" : "queued");
      field(li, ".text", a.text);
    });
    showEmpty("#alerts", view.alerts.length === 0);
  }

  function render(view) {
    document.querySelector("main").hidden = false;
    renderSummary(view);
    renderPositions(view);
    renderFeed(view);
    renderDns(view);
    renderActors(view);
    renderAlerts(view);
    lastSuccess = Date.now();
    refreshes += 1;
    body.dataset.refreshes = String(refreshes); // lets a browser test wait for a refresh
    setClasses(document.getElementById("link"), "", ["ok"]);
    setText(document.getElementById("link-state"), "Live");
    setText(document.getElementById("updated"), new Date(lastSuccess).toLocaleTimeString());
  }

  // The link to TradeGuard and the token -------------------------------------------

  function linkLost(why) {
    setClasses(document.getElementById("link"), "", ["bad"]);
    const since = lastSuccess === null ? "no data yet"
      : "the data below is " + duration((Date.now() - lastSuccess) / 1000) + " old";
    setText(document.getElementById("link-state"),
      "No answer from TradeGuard (" + why + "): " + since);
  }

  function askForToken(refused) {
    document.getElementById("token-form").hidden = false;
    // Kept until the next submit: the refreshes after this one send no token.
    if (refused) setText(document.getElementById("token-error"), "That token was refused.");
  }

  async function refresh() {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    let response;
    try {
      // A hung server must show as lost, not leave the last answer looking live.
      response = await fetch(statusUrl,
        { headers, cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
    } catch (err) {
      linkLost(err.name === "TimeoutError" ? "no answer in " + FETCH_TIMEOUT_MS / 1000 + "s"
        : "network error");
      return;
    }
    if (response.status === 401) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      setText(document.getElementById("link-state"), "Waiting for the API token");
      askForToken(Boolean(token));
      return;
    }
    if (!response.ok) {
      linkLost("HTTP " + response.status);
      return;
    }
    document.getElementById("token-form").hidden = true;
    render(await response.json());
  }

  async function loop() {
    try {
      await refresh();
    } catch (err) { // a body that is not the expected JSON: say so, keep polling
      linkLost(String(err));
    }
    setTimeout(loop, REFRESH_MS);
  }

  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token-input");
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    setText(document.getElementById("token-error"), "");
    event.target.hidden = true; // the next refresh, within a second, uses it
  });

  loop();
})();
