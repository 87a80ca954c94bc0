// The p2pserve status page: fetch /p2pserve/status every few seconds and draw it.
//
// Everything shown comes from that JSON; credit and stake over time are samples this page
// keeps itself (a ring of SAMPLES), so the node keeps no history for it. Peers' strings
// (model names, IDs) are written with textContent only, never as markup. The API key, when
// the node needs one, comes from the form or from "#key=..." in the URL (removed from the
// address bar at once) and lives in sessionStorage for this tab only.
"use strict";

(() => {
  const REFRESH_S = 3;
  const SAMPLES = 240;
  const TIMEOUT_MS = 10000;
  const KEY_ITEM = "p2pserve-api-key";
  const samples = []; // {t, free, staked}
  let key = takeKey();

  function takeKey() {
    // not URLSearchParams: it reads "+" as a space, and keys may hold "+"
    const m = /(?:^|&)key=([^&]*)/.exec(location.hash.slice(1));
    let fromUrl = null;
    if (m) {
      try { fromUrl = decodeURIComponent(m[1]); } catch (_) { fromUrl = m[1]; }
    }
    if (fromUrl !== null) {
      sessionStorage.setItem(KEY_ITEM, fromUrl);
      history.replaceState(null, "", location.pathname + location.search);
      return fromUrl;
    }
    return sessionStorage.getItem(KEY_ITEM) || "";
  }

  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  // The CLI's short form of a peer ID: its last 12 characters (every Ed25519 ID starts alike).
  const shortId = (id) => (id ? id.slice(-12) : "");
  const credits = (x) => (x === null || x === undefined ? "–" : Number(x).toLocaleString(undefined, { maximumFractionDigits: 3 }));
  const seconds = (x) => (x === null || x === undefined ? "–" : x < 1 ? `${Math.round(x * 1000)} ms` : `${x.toFixed(2)} s`);
  const yesNo = (b) => el("td", { class: b ? "yes" : "no" }, b ? "yes" : "no");

  function idCell(id) {
    return el("td", { class: "id", title: id, "data-peer-id": id }, shortId(id));
  }

  function duration(s) {
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }

  function fill(tableId, rows, columns, empty) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren();
    if (!rows.length) {
      body.append(el("tr", {}, el("td", { class: "empty", colSpan: columns }, empty)));
      return;
    }
    for (const cells of rows) body.append(el("tr", {}, ...cells));
  }

  function card(label, value, title) {
    return el("div", { class: "card", title: title || "" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
  }

  function num(value) {
    return el("td", { class: "num" }, value);
  }

  function setState(text, kind) {
    const s = $("state");
    s.textContent = text;
    s.className = `pill pill-${kind}`;
  }

  function showError(message) {
    const e = $("error");
    e.hidden = !message;
    e.textContent = message || "";
  }

  function render(st) {
    $("node-id").textContent = shortId(st.peer_id);
    $("node-id").title = st.peer_id;
    $("network").textContent = `network ${st.network_id} · up ${duration(st.uptime_s)}`;
    const led = st.ledger || {};
    const served = st.served || {};
    $("cards").replaceChildren(
      card("free credit", credits(led.free)),
      card("staked", credits(led.staked), "credit staked by this node"),
      card("stake weight", credits(led.stake_weight), "stake after duel verdicts: what routing uses"),
      card("peers", `${st.peers.length} / ${st.connected_peers.length}`, "known / connected"),
      card("own requests", served.requests ?? 0, `local ${served.local ?? 0}, offloaded ${served.offloaded ?? 0}, failed ${served.failures ?? 0}`),
      card("served for peers", served.served_for_peers ?? 0, `offers rejected: ${served.offers_rejected ?? 0}`),
      card("ledger", `${led.blocks ?? 0} blocks`, `our chain height ${led.height ?? "–"}, fingerprint ${st.ledger_fingerprint}`),
      card("offloading", st.offloading && st.offloading.possible ? "possible" : "not now", (st.offloading && st.offloading.reason) || ""),
    );

    const ratings = st.ratings || {};
    const peers = [...st.peers].sort((a, b) => b.stake - a.stake || a.peer_id.localeCompare(b.peer_id));
    $("peer-count").textContent = `(${peers.length})`;
    fill("peers", peers.map((p) => {
      const r = ratings[p.peer_id];
      return [
        idCell(p.peer_id),
        el("td", {}, p.models.length ? p.models.join(", ") : "gateway"),
        num(`${p.load.running} / ${p.load.queued}`),
        yesNo(p.accepting),
        num(credits(p.stake)),
        num(r ? Math.round(r.rating) : "–"),
        num(`${p.last_seen_s.toFixed(1)} s ago`),
        yesNo(p.connected),
      ];
    }), 8, "no peer known yet");

    fill("models", st.models.map((m) => [
      el("td", {}, m.name),
      el("td", { class: m.up === false ? "no" : "yes" }, m.up === false ? "down" : "up"),
      num(m.running), num(m.queued), num(m.token_usage === null ? "–" : `${Math.round(m.token_usage * 100)} %`),
      yesNo(m.accepting), num(credits(m.price_per_1k)),
    ]), 7, "none: this node is a gateway (it offloads every request)");

    fill("requests", (st.recent_requests || []).map((q) => [
      el("td", {}, new Date(q.created * 1000).toLocaleTimeString()),
      el("td", {}, q.model),
      el("td", { class: q.outcome === "completed" ? "yes" : "no" }, q.outcome),
      el("td", {}, q.where),
      q.executor ? idCell(q.executor) : el("td", {}, "–"),
      num(seconds(q.duration_s)),
      num(seconds(q.ttft_s)),
      num(`${q.prompt_tokens} / ${q.completion_tokens}`),
    ]), 8, "none yet");

    const d = st.duels || {};
    $("duels").replaceChildren(
      card("started", d.started ?? 0, "duels this node started as requester"),
      card("settled", d.settled ?? 0), card("abandoned", d.abandoned ?? 0),
      card("won / lost / tied", `${d.won ?? 0} / ${d.lost ?? 0} / ${d.tied ?? 0}`, "verdicts on this node as executor"),
      card("judged", d.judged ?? 0, "verdicts this node wrote as judge"),
    );
    fill("ratings", Object.entries(ratings).sort((a, b) => b[1].rating - a[1].rating).map(([id, r]) => [
      idCell(id), num(Math.round(r.rating)), num(`${Math.round(r.low)}–${Math.round(r.high)}`),
      num(`${r.wins} / ${r.losses} / ${r.ties}`),
    ]), 4, "no verdict yet");

    samples.push({ t: Date.now(), free: led.free ?? 0, staked: led.staked ?? 0 });
    if (samples.length > SAMPLES) samples.shift();
    drawChart();
    $("updated").textContent = new Date().toLocaleTimeString();
  }

  // Two stacked panels, free above and staked below, each on its own scale (free credit is
  // often a hundred times the stake: one shared scale would flatten the stake's line).
  function drawChart() {
    const svg = $("chart");
    const NS = "http://www.w3.org/2000/svg";
    const W = 800, H = 200, PAD = 10, PANEL = H / 2;
    svg.replaceChildren();
    if (!samples.length) return;
    const t0 = samples[0].t, t1 = Math.max(samples[samples.length - 1].t, t0 + 1);
    const x = (t) => PAD + ((t - t0) / (t1 - t0)) * (W - 2 * PAD);
    const ranges = [];
    [["free", "#2f7ed8"], ["staked", "#d9822b"]].forEach(([field, color], i) => {
      const values = samples.map((s) => s[field]);
      const lo = Math.min(...values), hi = Math.max(...values);
      const top = i * PANEL + PAD, bottom = (i + 1) * PANEL - PAD;
      const y = (v) => (hi - lo < 1e-9 ? (top + bottom) / 2 : bottom - ((v - lo) / (hi - lo)) * (bottom - top));
      if (i) {
        const rule = document.createElementNS(NS, "line");
        for (const [k, v] of [["x1", 0], ["x2", W], ["y1", PANEL], ["y2", PANEL], ["stroke", "#e4e4e0"], ["stroke-width", "1"]]) rule.setAttribute(k, v);
        svg.append(rule);
      }
      const line = document.createElementNS(NS, "polyline");
      const pts = samples.length === 1
        ? [`${PAD},${y(values[0])}`, `${W - PAD},${y(values[0])}`]
        : samples.map((s) => `${x(s.t).toFixed(1)},${y(s[field]).toFixed(1)}`);
      line.setAttribute("points", pts.join(" "));
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", color);
      line.setAttribute("stroke-width", "2.5");
      line.setAttribute("vector-effect", "non-scaling-stroke");
      svg.append(line);
      ranges.push(`${field} ${credits(values[values.length - 1])} (${credits(lo)} to ${credits(hi)})`);
    });
    const span = (samples[samples.length - 1].t - t0) / 1000;
    $("chart-range").textContent = `· ${ranges.join(" · ")} · ${samples.length} samples over ${duration(span)}`;
  }

  let next = null;
  let busy = false;

  async function refresh() {
    if (busy) return; // the next round uses whatever key is set by then
    busy = true;
    clearTimeout(next);
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const headers = key ? { Authorization: `Bearer ${key}` } : {};
      const r = await fetch("/p2pserve/status", { headers, cache: "no-store", signal: ctl.signal });
      if (r.status === 401) {
        setState("needs API key", "bad");
        showError(key ? "The API key was refused." : "This node needs an API key: enter it above (or open the page as /#key=...).");
        return;
      }
      if (!r.ok) {
        let message = `HTTP ${r.status}`;
        try { message += `: ${(await r.json()).error.message}`; } catch (_) { /* not JSON */ }
        throw new Error(message);
      }
      render(await r.json());
      setState("live", "ok");
      showError("");
    } catch (err) {
      setState("unreachable", "bad");
      showError(`Cannot read /p2pserve/status: ${err.name === "AbortError" ? "no answer in time" : err.message}`);
    } finally {
      clearTimeout(timer);
      busy = false;
      next = setTimeout(refresh, REFRESH_S * 1000);
    }
  }

  $("refresh").textContent = String(REFRESH_S);
  $("key").value = key;
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    key = $("key").value.trim();
    if (key) sessionStorage.setItem(KEY_ITEM, key);
    else sessionStorage.removeItem(KEY_ITEM);
    setState("connecting…", "wait");
    refresh();
  });
  refresh();
})();
