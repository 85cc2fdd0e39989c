/* qserver dashboard: one page, hash routes, polling the JSON API (api/...).
 *
 * No framework and no build step. Every piece of server data enters the DOM as
 * text (textContent, attribute values set through the DOM), never as HTML.
 * Only the visible view polls, one request round at a time, every POLL_MS.
 * Tables are updated in place, row by row (keyed by tube name or job id), so an
 * input being typed into or a button being clicked survives a refresh.
 */
"use strict";

(function () {
  const POLL_MS = 1500;
  const STATES = ["ready", "delayed", "reserved", "buried", "held", "completed", "dead", "all"];
  const POLICY_NAMES = ["max-attempts", "backoff", "dead-letter", "retain", "lock-limit"];
  const SERIES = [
    ["put", "put"], ["reserve", "reserve"], ["delete", "delete"], ["fail", "fail"],
  ];

  let node = null;          // the last node object seen ({read_only, ...})
  let view = null;          // the mounted view: {poll(), gen}
  let gen = 0;              // bumped at each navigation; late replies of older views are dropped
  let timer = null;
  let polling = false;      // a poll is running
  let pending = false;      // another was asked for meanwhile

  // ---------------------------------------------------------------- DOM helpers

  /** h("td", {class: "x", dataset: {job: 5}}, "text", child, ...) */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") el.className = v;
        else if (k === "dataset") Object.assign(el.dataset, v);
        else if (k === "text") el.textContent = v;
        else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
        else if (k in el && typeof v !== "string") el[k] = v;
        else el.setAttribute(k, v === true ? "" : String(v));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  function setText(el, text) {
    text = String(text);
    if (el.textContent !== text) el.textContent = text;
  }

  const $ = (sel, root) => (root || document).querySelector(sel);

  function main() { return document.getElementById("main"); }

  // ---------------------------------------------------------------- formatting

  function none(v) { return v === null || v === undefined; }

  function fmtDuration(s) {
    if (none(s)) return "–";
    s = Math.max(0, Math.floor(Number(s)));
    if (s < 60) return s + "s";
    const d = Math.floor(s / 86400), hr = Math.floor((s % 86400) / 3600),
      m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (d) return d + "d " + hr + "h";
    if (hr) return hr + "h " + m + "m";
    return m + "m " + sec + "s";
  }

  function fmtNum(n) {
    if (n === null || n === undefined) return "–";
    if (typeof n === "number" && !Number.isInteger(n)) return String(Number(n.toFixed(n < 10 ? 2 : 1)));
    return String(n);
  }

  function fmtValue(v) {
    if (v === null || v === undefined) return "~";
    if (Array.isArray(v)) return v.map(fmtValue).join(", ");
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function fmtTime(unix) {
    try {
      return new Date(unix * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
    } catch (e) {
      return String(unix);
    }
  }

  function tubeHref(name, state) {
    return "#/tube/" + encodeURIComponent(name) + (state ? "?state=" + encodeURIComponent(state) : "");
  }

  function jobHref(id) { return "#/job/" + encodeURIComponent(id); }

  // ---------------------------------------------------------------- status bar

  let statusTimer = null;

  function status(text, kind) {
    const el = document.getElementById("status");
    el.hidden = false;
    el.className = "status " + (kind || "info");
    setText(el, text);
    if (statusTimer) clearTimeout(statusTimer);
    if (kind !== "error") statusTimer = setTimeout(() => { el.hidden = true; }, 8000);
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function getJSON(path) {
    let res;
    try {
      res = await fetch("api/" + path, {headers: {"Accept": "application/json"}, cache: "no-store"});
    } catch (e) {
      throw new ApiError(0, "server unreachable");
    }
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) throw new ApiError(res.status, (body && body.error) || ("HTTP " + res.status));
    return body;
  }

  /** POST an action; the reply (or error) goes to the status bar, onOk(reply) runs
   * on success before the view refreshes. */
  async function post(path, payload, what, onOk) {
    if (readOnly()) { status(what + ": read-only dashboard", "error"); return null; }
    let res, body = null;
    try {
      res = await fetch("api/" + path, {
        method: "POST",
        headers: {"Content-Type": "application/json", "Accept": "application/json"},
        body: JSON.stringify(payload || {}),
        cache: "no-store",
      });
    } catch (e) {
      status(what + ": server unreachable", "error");
      return null;
    }
    try { body = await res.json(); } catch (e) { body = null; }
    if (res.ok && body && body.ok) {
      status(what + ": " + body.reply, "ok");
      if (onOk) onOk(body);
    } else {
      status(what + ": " + ((body && body.error) || ("HTTP " + res.status)), "error");
    }
    poll(true);
    return body;
  }

  function readOnly() { return !!(node && node.read_only); }

  // ---------------------------------------------------------------- header

  function renderNode(n) {
    if (!n) return;
    node = n;
    document.body.classList.toggle("read-only", !!n.read_only);
    const el = document.getElementById("node");
    const want = [
      ["hostname", n.hostname], ["pid", "pid " + n.pid], ["version", "v" + n.version],
      ["store", n.store + " store"], ["node-id", n.id],
    ];
    if (el.childElementCount !== want.length + 1) {
      clear(el);
      for (const [cls] of want) el.appendChild(h("span", {class: cls}));
      el.appendChild(h("span", {id: "ro-badge", class: "badge ro", text: "read-only", hidden: true}));
    }
    for (const [cls, text] of want) setText(el.querySelector("span." + cls), text);
    el.querySelector("span.node-id").title = "instance id";
    $("#ro-badge").hidden = !n.read_only;
  }

  function markNav(name) {
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", a.dataset.nav === name);
    }
  }

  // ---------------------------------------------------------------- keyed tables

  /** Make tbody's rows match items (in order), reusing rows by key. */
  function syncRows(tbody, items, key, build, update) {
    const old = new Map();
    for (const tr of Array.from(tbody.rows)) old.set(tr.dataset.key, tr);
    let i = 0;
    for (const item of items) {
      const k = String(key(item));
      let tr = old.get(k);
      if (tr) old.delete(k);
      else { tr = build(item); tr.dataset.key = k; }
      update(tr, item);
      if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
      i++;
    }
    for (const tr of old.values()) tr.remove();
  }

  function cells(tr, classes) {
    for (const c of classes) tr.appendChild(h("td", {class: c}));
  }

  function cell(tr, cls) { return tr.querySelector("td." + cls); }

  function kvTable(id, obj, keys) {
    const tbody = h("tbody");
    const t = h("table", {id: id, class: "kv"}, tbody);
    updateKv(t, obj, keys);
    return t;
  }

  function updateKv(table, obj, keys) {
    const tbody = table.tBodies[0];
    const entries = (keys || Object.keys(obj || {})).map((k) => [k, obj ? obj[k] : undefined]);
    syncRows(tbody, entries, (e) => e[0], (e) => {
      const tr = h("tr", {dataset: {field: e[0]}}, h("th", {text: e[0]}), h("td", {class: "v"}));
      return tr;
    }, (tr, e) => setText(cell(tr, "v"), fmtValue(e[1])));
  }

  function sectionTitle(text, extra) {
    return h("h2", null, text, extra || null);
  }

  // ---------------------------------------------------------------- charts

  function drawChart(canvas, values, interval, color) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(100, canvas.clientWidth), hgt = Math.max(60, canvas.clientHeight);
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(hgt * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(hgt * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    const padL = 38, padR = 6, padT = 8, padB = 16;
    const pw = w - padL - padR, ph = hgt - padT - padB;
    const span = 150;                 // samples shown: 5 minutes at 2 s
    let max = 0;
    for (const v of values) if (v > max) max = v;
    const top = niceMax(max);
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = "#7a8599";
    ctx.strokeStyle = "#e3e7ee";
    ctx.lineWidth = 1;
    for (let g = 0; g <= 2; g++) {
      const y = padT + ph - (ph * g) / 2;
      ctx.beginPath();
      ctx.moveTo(padL, Math.round(y) + 0.5);
      ctx.lineTo(padL + pw, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      ctx.fillText(fmtNum((top * g) / 2), padL - 4, y);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    const minutes = Math.round((span * (interval || 2)) / 60);
    ctx.fillText("−" + minutes + " min", padL, hgt - 3);
    ctx.textAlign = "right";
    ctx.fillText("now", padL + pw, hgt - 3);
    if (!values.length) {
      ctx.textAlign = "center";
      ctx.fillText("collecting…", padL + pw / 2, padT + ph / 2);
      return;
    }
    const n = values.length;
    const x = (i) => padL + pw - ((n - 1 - i) * pw) / (span - 1);
    const y = (v) => padT + ph - (top ? (v / top) * ph : 0);
    ctx.beginPath();
    ctx.moveTo(x(0), y(values[0]));
    for (let i = 1; i < n; i++) ctx.lineTo(x(i), y(values[i]));
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.stroke();
    ctx.lineTo(x(n - 1), padT + ph);
    ctx.lineTo(x(0), padT + ph);
    ctx.closePath();
    ctx.globalAlpha = 0.15;
    ctx.fillStyle = color;
    ctx.fill();
    ctx.globalAlpha = 1;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  // ---------------------------------------------------------------- overview

  const TUBE_COLS = [
    ["name", "tube"], ["ready", "ready"], ["urgent", "urgent"], ["reserved", "reserved"],
    ["delayed", "delayed"], ["buried", "buried"], ["held", "held"], ["paused", "paused"],
    ["head-age", "oldest ready"], ["total", "total jobs"], ["conns", "using / watching / waiting"],
  ];

  const CARDS = [
    ["current-jobs-ready", "ready", "stats"], ["current-jobs-urgent", "urgent", "stats"],
    ["current-jobs-reserved", "reserved", "stats"], ["current-jobs-delayed", "delayed", "stats"],
    ["current-jobs-buried", "buried", "stats"], ["current-connections", "connections", "stats"],
    ["uptime", "uptime", "stats"], ["job-failures", "failures", "ext"],
    ["current-retained", "retained", "ext"],
  ];

  const ALERT_CARDS = ["current-jobs-buried", "job-failures"];

  const COLORS = {put: "#2f6fdf", reserve: "#1a9c6b", delete: "#7a5cd6", fail: "#d64545"};

  function overviewView() {
    const cards = h("section", {id: "cards", class: "cards"},
      CARDS.map(([key, label]) => h("div", {class: "card", dataset: {stat: key}},
        h("div", {class: "card-value", text: "–"}), h("div", {class: "card-label", text: label}))));
    const charts = h("section", {id: "charts", class: "charts"},
      SERIES.map(([key, label]) => h("figure", {class: "chart", dataset: {series: key}},
        h("figcaption", null, label + " /s ", h("span", {class: "now", text: ""})),
        h("canvas", {id: "chart-" + key, width: 300, height: 90}))));
    const head = h("tr", null, TUBE_COLS.map(([cls, label]) => h("th", {class: cls, text: label})),
      h("th", {class: "actions", text: readOnly() ? "" : "actions"}));
    const tbody = h("tbody");
    const table = h("table", {id: "tubes", class: "grid"}, h("thead", null, head), tbody);
    const empty = h("p", {id: "no-tubes", class: "muted", text: "No tubes.", hidden: true});
    const more = h("p", {id: "more-tubes", class: "muted", hidden: true});
    append(clear(main()), [
      h("h1", null, "Overview"), cards,
      sectionTitle("Rates, last 5 minutes"), charts,
      sectionTitle("Tubes"), h("div", {class: "scroll"}, table), empty, more,
    ]);
    let lastRates = null;
    const redraw = () => { if (lastRates) drawRates(lastRates); };
    window.addEventListener("resize", redraw);

    function drawRates(r) {
      for (const [key] of SERIES) {
        const values = Array.isArray(r[key]) ? r[key] : [];
        drawChart(document.getElementById("chart-" + key), values, r.interval, COLORS[key]);
        const now = $('figure[data-series="' + key + '"] .now');
        setText(now, values.length ? fmtNum(values[values.length - 1]) : "");
      }
    }

    return {
      name: "overview",
      async poll(g) {
        const o = await getJSON("overview");
        if (g !== gen) return;
        renderNode(o.node);
        for (const [key, , src] of CARDS) {
          const v = (o[src] || {})[key];
          const el = $('.card[data-stat="' + key + '"] .card-value');
          setText(el, key === "uptime" ? fmtDuration(v) : fmtNum(v));
          el.parentNode.classList.toggle("alert", ALERT_CARDS.includes(key) && v > 0);
        }
        lastRates = o.rates || {};
        drawRates(lastRates);
        setText(head.lastChild, readOnly() ? "" : "actions");
        syncRows(tbody, o.tubes || [], (t) => t.name, buildTubeRow, updateTubeRow);
        const shown = (o.tubes || []).length, total = o["tubes-total"] || shown;
        empty.hidden = shown > 0;
        more.hidden = total <= shown;
        setText(more, "Showing the first " + shown + " of " + total +
          " tubes (by name); open any tube as #/tube/NAME.");
      },
      unmount() { window.removeEventListener("resize", redraw); },
    };
  }

  function buildTubeRow(t) {
    const tr = h("tr", {dataset: {tube: t.name}});
    tr.appendChild(h("td", {class: "name"}, h("a", {href: tubeHref(t.name), text: t.name})));
    cells(tr, TUBE_COLS.slice(1).map((c) => c[0]));
    tr.appendChild(h("td", {class: "actions"}));
    return tr;
  }

  function pauseText(t) {
    if (!t.pause) return "–";
    return fmtDuration(t["pause-time-left"]) + " left";
  }

  function updateTubeRow(tr, t) {
    const num = (k) => fmtNum(t[k]);
    setText(cell(tr, "ready"), num("current-jobs-ready"));
    setText(cell(tr, "urgent"), num("current-jobs-urgent"));
    setText(cell(tr, "reserved"), num("current-jobs-reserved"));
    setText(cell(tr, "delayed"), num("current-jobs-delayed"));
    setText(cell(tr, "buried"), num("current-jobs-buried"));
    setText(cell(tr, "held"), num("held"));
    setText(cell(tr, "paused"), pauseText(t));
    setText(cell(tr, "head-age"), none(t["head-age"]) ? "–" : fmtDuration(t["head-age"]));
    setText(cell(tr, "total"), num("total-jobs"));
    setText(cell(tr, "conns"),
      num("current-using") + " / " + num("current-watching") + " / " + num("current-waiting"));
    tr.classList.toggle("has-buried", t["current-jobs-buried"] > 0);
    tr.classList.toggle("is-paused", !!t.pause);
    tubeActions(cell(tr, "actions"), t);
  }

  /** kick N / pause / unpause / flush for a tube, built once per container and kept. */
  function tubeActions(td, t) {
    if (readOnly()) { clear(td); delete td.dataset.built; return; }
    const name = t.name;
    if (!td.dataset.built) {
      td.dataset.built = "1";
      const n = h("input", {type: "number", class: "kick-n", min: 1, max: 1000000, value: "1",
        "aria-label": "jobs to kick", title: "jobs to kick"});
      append(td, [
        h("span", {class: "kick-group"}, n,
          h("button", {type: "button", class: "kick", dataset: {action: "kick"}, text: "kick",
            onclick: () => kickTube(name, n.value)})),
        h("button", {type: "button", class: "pause", dataset: {action: "pause"}, text: "pause",
          onclick: () => pauseTube(name)}),
        h("button", {type: "button", class: "unpause", dataset: {action: "unpause"}, text: "unpause",
          onclick: () => unpauseTube(name)}),
        h("button", {type: "button", class: "flush danger", dataset: {action: "flush"}, text: "flush",
          onclick: () => flushTube(name)}),
      ]);
    }
    td.querySelector("button.pause").hidden = !!t.pause;
    td.querySelector("button.unpause").hidden = !t.pause;
  }

  function kickTube(name, value) {
    const bound = parseInt(value, 10);
    if (!(bound >= 1 && bound <= 1000000)) {
      status("kick: give a number from 1 to 1000000", "error");
      return;
    }
    if (!confirm("Kick up to " + bound + " job(s) in tube " + name + "?")) return;
    post("tubes/" + encodeURIComponent(name) + "/kick", {bound: bound}, "kick " + bound + " in " + name);
  }

  function pauseTube(name) {
    const answer = prompt("Pause tube " + name + " for how many seconds?", "60");
    if (answer === null) return;
    const delay = parseInt(answer, 10);
    if (!(delay >= 1 && delay <= 4294967295)) {
      status("pause: give a number of seconds", "error");
      return;
    }
    post("tubes/" + encodeURIComponent(name) + "/pause", {delay: delay}, "pause " + name);
  }

  function unpauseTube(name) {
    post("tubes/" + encodeURIComponent(name) + "/pause", {delay: 0}, "unpause " + name);
  }

  function flushTube(name) {
    if (!confirm("Flush tube " + name +
      "? Every ready, delayed, buried and held job in it is deleted.")) return;
    post("tubes/" + encodeURIComponent(name) + "/flush", {}, "flush " + name);
  }

  // ---------------------------------------------------------------- jobs tables

  const JOB_COLS = [
    ["id", "id"], ["state", "state"], ["pri", "pri"], ["age", "age"], ["delay", "delay"],
    ["time-left", "time left"], ["attempts", "attempts"], ["key", "key"], ["tags", "tags"],
    ["size", "size"], ["preview", "body"],
  ];

  function jobsTable(id) {
    const tbody = h("tbody");
    const table = h("table", {id: id, class: "grid jobs"},
      h("thead", null, h("tr", null, JOB_COLS.map(([c, l]) => h("th", {class: c, text: l})),
        h("th", {class: "actions", text: ""}))), tbody);
    return {table, tbody};
  }

  function buildJobRow(j) {
    const tr = h("tr", {dataset: {job: j.id}});
    tr.appendChild(h("td", {class: "id"}, h("a", {href: jobHref(j.id), text: String(j.id)})));
    cells(tr, JOB_COLS.slice(1).map((c) => c[0]));
    tr.appendChild(h("td", {class: "actions"}));
    return tr;
  }

  function previewNode(p, truncated) {
    const frag = [];
    if (!p) frag.push(h("span", {class: "muted", text: "–"}));
    else if (p.text !== undefined) frag.push(h("span", {class: "text", text: p.text}));
    else frag.push(h("span", {class: "hex", text: spacedHex(p.hex || "")}));
    if (truncated) frag.push(h("span", {class: "truncated", title: "truncated", text: "…"}));
    return frag;
  }

  function spacedHex(hex) {
    return hex.replace(/(..)(?!$)/g, "$1 ");
  }

  function updateJobRow(tr, j) {
    tr.dataset.state = j.state;
    setText(cell(tr, "state"), j.state);
    cell(tr, "state").className = "state st-" + j.state;
    setText(cell(tr, "pri"), fmtNum(j.pri));
    setText(cell(tr, "age"), fmtDuration(j.age));
    setText(cell(tr, "delay"), j.delay ? fmtDuration(j.delay) : "–");
    setText(cell(tr, "time-left"), j["time-left"] ? fmtDuration(j["time-left"]) : "–");
    setText(cell(tr, "attempts"), fmtNum(j.attempts));
    setText(cell(tr, "key"), j.key === null || j.key === undefined ? "–" : j.key);
    setText(cell(tr, "tags"), (j.tags || []).join(", "));
    setText(cell(tr, "size"), fmtNum(j.size));
    const pv = cell(tr, "preview");
    const sig = JSON.stringify([j.preview, j.truncated]);
    if (pv.dataset.sig !== sig) {
      pv.dataset.sig = sig;
      append(clear(pv), [h("div", {class: "pv"}, previewNode(j.preview, j.truncated))]);
    }
    const act = cell(tr, "actions");
    const want = readOnly() ? "" : j.state;
    if (act.dataset.for !== want) {
      act.dataset.for = want;
      append(clear(act), jobActions(j.id, j.state));
    }
  }

  /** Buttons for a job in `state`; `deleted` runs after a delete succeeded. */
  function jobActions(id, state, deleted) {
    if (readOnly()) return [];
    const out = [];
    if (state === "buried" || state === "delayed") {
      out.push(h("button", {type: "button", class: "kick", dataset: {action: "kick", job: id},
        text: "kick",
        onclick: () => post("jobs/" + encodeURIComponent(id) + "/kick", {}, "kick job " + id)}));
    }
    if (state === "buried") {
      out.push(h("button", {type: "button", class: "retry", dataset: {action: "retry", job: id},
        text: "retry",
        onclick: () => post("jobs/" + encodeURIComponent(id) + "/retry", {}, "retry job " + id)}));
    }
    if (["ready", "delayed", "buried", "held", "reserved"].includes(state)) {
      out.push(h("button", {type: "button", class: "delete danger",
        dataset: {action: "delete", job: id}, text: "delete",
        onclick: () => {
          if (!confirm("Delete job " + id + "?")) return;
          post("jobs/" + encodeURIComponent(id) + "/delete", {}, "delete job " + id, deleted);
        }}));
    }
    return out;
  }

  // ---------------------------------------------------------------- tube page

  const DEAD_PAGES = 30;

  const TUBE_CARDS = [
    ["current-jobs-ready", "ready"], ["current-jobs-urgent", "urgent"],
    ["current-jobs-reserved", "reserved"], ["current-jobs-delayed", "delayed"],
    ["current-jobs-buried", "buried"], ["held", "held"], ["total-jobs", "total jobs"],
    ["head-age", "oldest ready"], ["pause-time-left", "paused"],
  ];
  const TAB_COUNTS = {
    ready: "current-jobs-ready", delayed: "current-jobs-delayed", reserved: "current-jobs-reserved",
    buried: "current-jobs-buried", held: "held",
  };

  function tubeView(name, state) {
    if (!STATES.includes(state)) state = "ready";
    let cursors = ["0"];             // cursors of the pages up to the shown one
    let next = null;
    let limit = 20;
    const tabs = h("nav", {id: "state-tabs", class: "tabs"},
      STATES.map((s) => h("a", {href: tubeHref(name, s), class: "tab" + (s === state ? " active" : ""),
        dataset: {state: s}}, s, h("span", {class: "count"}))));
    const cards = h("section", {id: "tube-cards", class: "cards"},
      TUBE_CARDS.map(([key, label]) => h("div", {class: "card", dataset: {stat: key}},
        h("div", {class: "card-value", text: "–"}), h("div", {class: "card-label", text: label}))));
    const {table, tbody} = jobsTable("jobs");
    const pageNo = h("span", {id: "page-no", text: "1"});
    const first = h("button", {type: "button", id: "first-page", text: "First page", onclick: () => {
      cursors = ["0"]; refresh();
    }});
    const prev = h("button", {type: "button", id: "prev-page", text: "Previous page", onclick: () => {
      if (cursors.length > 1) cursors.pop();
      refresh();
    }});
    const nextBtn = h("button", {type: "button", id: "next-page", text: "Next page", onclick: () => {
      if (next) { cursors.push(next); refresh(); }
    }});
    const size = h("select", {id: "page-size", "aria-label": "jobs per page", onchange: () => {
      limit = parseInt(size.value, 10); cursors = ["0"]; refresh();
    }}, [20, 50, 100].map((n) => h("option", {value: String(n), text: n + " per page"})));
    const pager = h("div", {class: "pager"}, first, prev,
      h("span", {class: "page"}, "page ", pageNo), nextBtn, size);
    const empty = h("p", {id: "no-jobs", class: "muted", hidden: true, text: "No " + state + " jobs."});
    const statsTable = kvTable("tube-stats", null, []);
    const policyTable = kvTable("tube-policy", null, []);
    const missing = h("p", {id: "no-tube", class: "muted", hidden: true,
      text: "This tube does not exist (no jobs and no clients)."});
    const actions = h("div", {id: "tube-actions", class: "tube-actions"});
    const policyForm = readOnly() ? null : buildPolicyForm(name);

    append(clear(main()), [
      h("h1", null, h("span", {class: "muted", text: "tube "}),
        h("span", {id: "tube-name", text: name})),
      missing, actions, cards,
      sectionTitle("Jobs"), tabs, pager, h("div", {class: "scroll"}, table), empty,
      h("div", {class: "columns"},
        h("section", null, sectionTitle("Stats"), statsTable),
        h("section", null, sectionTitle("Policy"), policyTable, policyForm)),
    ]);

    function refresh() { poll(true); }

    return {
      name: "tube",
      async poll(g) {
        const cursor = cursors[cursors.length - 1];
        const asked = cursors.join("\n") + "\n" + limit;
        const q = "state=" + encodeURIComponent(state) + "&cursor=" + encodeURIComponent(cursor) +
          "&limit=" + limit;
        const [t, page] = await Promise.all([
          getJSON("tubes/" + encodeURIComponent(name)),
          getJSON("tubes/" + encodeURIComponent(name) + "/jobs?" + q),
        ]);
        if (g !== gen) return;
        // paged meanwhile: the poll that follows shows the page asked for now
        if (asked !== cursors.join("\n") + "\n" + limit) return;
        missing.hidden = !!t.stats;
        updateKv(statsTable, t.stats || {}, t.stats ? null : []);
        updateKv(policyTable, t.policy || {},
          t.policy ? Object.keys(t.policy).filter((k) => k !== "name") : []);
        const st = t.stats || {};
        for (const [key] of TUBE_CARDS) {
          const el = cards.querySelector('.card[data-stat="' + key + '"] .card-value');
          let v = st[key];
          if (key === "head-age") v = v === null || v === undefined ? "–" : fmtDuration(v);
          else if (key === "pause-time-left") v = st.pause ? fmtDuration(v) : "no";
          else v = fmtNum(v);
          setText(el, t.stats ? v : "–");
          el.parentNode.classList.toggle("alert", ALERT_CARDS.includes(key) && st[key] > 0);
        }
        for (const a of tabs.querySelectorAll("a.tab")) {
          const key = TAB_COUNTS[a.dataset.state];
          setText(a.querySelector(".count"), key && t.stats ? String(st[key]) : "");
        }
        if (t.stats) {
          const box = actions.querySelector(".actions") ||
            actions.appendChild(h("div", {class: "actions"}));
          tubeActions(box, t.stats);
        } else {
          clear(actions);
        }
        next = page.next;
        syncRows(tbody, page.jobs || [], (j) => j.id, buildJobRow, updateJobRow);
        setText(pageNo, String(cursors.length));
        nextBtn.disabled = !next;
        first.disabled = prev.disabled = cursors.length === 1;
        empty.hidden = (page.jobs || []).length > 0 || cursors.length > 1;
        table.dataset.page = String(cursors.length);
        table.dataset.cursor = cursor;
      },
    };
  }

  function buildPolicyForm(name) {
    const sel = h("select", {id: "policy-name", "aria-label": "policy"},
      POLICY_NAMES.map((p) => h("option", {value: p, text: p})));
    const val = h("input", {id: "policy-value", type: "text", placeholder: "value",
      "aria-label": "value", required: true});
    const form = h("form", {id: "policy-form", class: "policy-form", onsubmit: (e) => {
      e.preventDefault();
      const value = val.value.trim();
      if (!value) return;
      post("tubes/" + encodeURIComponent(name) + "/policy", {name: sel.value, value: value},
        "policy " + sel.value + " of " + name, () => { val.value = ""; });
    }}, sel, val, h("button", {type: "submit", dataset: {action: "policy"}, text: "set"}));
    return form;
  }

  // ---------------------------------------------------------------- job page

  function jobView(id) {
    const infoTable = kvTable("job-info", null, []);
    const failures = h("ol", {id: "failures", class: "failures"});
    const tags = h("div", {id: "tags", class: "tags"});
    const progress = h("pre", {id: "progress", class: "payload"});
    const body = h("div", {id: "body"});
    const result = h("div", {id: "result"});
    const actions = h("div", {id: "job-actions", class: "tube-actions"});
    const missing = h("p", {id: "no-job", class: "muted", hidden: true,
      text: "No such job (deleted, or its record expired)."});
    const tubeLink = h("a", {id: "job-tube"});
    append(clear(main()), [
      h("h1", null, h("span", {class: "muted", text: "job "}), h("span", {id: "job-id", text: id}),
        h("span", {class: "muted", text: " in "}), tubeLink),
      missing, actions,
      h("div", {class: "columns"},
        h("section", null, sectionTitle("Info"), infoTable),
        h("section", null,
          sectionTitle("Body"), body,
          sectionTitle("Result"), result,
          sectionTitle("Progress"), progress,
          sectionTitle("Tags"), tags,
          sectionTitle("Failures"), failures)),
    ]);
    let gone = false;

    function payload(el, p) {
      const sig = JSON.stringify(p);
      if (el.dataset.sig === sig) return;
      el.dataset.sig = sig;
      clear(el);
      if (!p) { el.appendChild(h("p", {class: "muted", text: "none"})); return; }
      const isText = p.text !== undefined;
      el.appendChild(h("p", {class: "muted", text: p.size + " bytes" + (isText ? ", text" : ", hex") +
        (p.truncated ? ", truncated" : "")}));
      el.appendChild(h("pre", {class: "payload" + (isText ? "" : " hex"),
        text: isText ? p.text : spacedHex(p.hex || "")}));
      if (p.truncated) el.appendChild(h("span", {class: "truncated", title: "truncated", text: "…"}));
    }

    return {
      name: "job",
      async poll(g) {
        if (gone) return;
        let j;
        try {
          j = await getJSON("jobs/" + encodeURIComponent(id));
        } catch (e) {
          if (g === gen && e.status === 404) {
            gone = true;
            missing.hidden = false;
            clear(actions);
            return;
          }
          throw e;
        }
        if (g !== gen) return;
        const info = j.info || {};
        missing.hidden = true;
        tubeLink.href = tubeHref(info.tube || "");
        setText(tubeLink, info.tube || "");
        const keys = Object.keys(info).filter((k) => k !== "failures" && k !== "tags");
        updateKv(infoTable, info, keys);
        const tsig = JSON.stringify(info.tags || []);
        if (tags.dataset.sig !== tsig) {
          tags.dataset.sig = tsig;
          clear(tags);
          if (!(info.tags || []).length) tags.appendChild(h("span", {class: "muted", text: "none"}));
          for (const t of info.tags || []) tags.appendChild(h("span", {class: "tag", text: t}));
        }
        setText(progress, none(info.progress) ? "none" : info.progress);
        progress.classList.toggle("muted", none(info.progress));
        const fsig = JSON.stringify(info.failures || []);
        if (failures.dataset.sig !== fsig) {
          failures.dataset.sig = fsig;
          clear(failures);
          failures.classList.toggle("empty", !(info.failures || []).length);
          if (!(info.failures || []).length) {
            failures.appendChild(h("li", {class: "muted", text: "none"}));
          }
          for (const f of info.failures || []) {
            failures.appendChild(h("li", null, h("time", {text: fmtTime(f.time)}), " ",
              h("span", {class: "reason", text: f.reason})));
          }
        }
        payload(body, j.body);
        payload(result, j.result);
        const want = readOnly() ? "" : info.state;
        if (actions.dataset.for !== want) {
          actions.dataset.for = want;
          append(clear(actions), jobActions(id, info.state, () => {
            gone = true;                    // nothing left to show: back to its tube
            location.hash = tubeHref(info.tube || "");
          }));
        }
      },
    };
  }

  // ---------------------------------------------------------------- dead letters

  function deadView() {
    const box = h("div", {id: "dead-sections"});
    const empty = h("p", {id: "no-dead", class: "muted", hidden: true,
      text: "No buried jobs and no retained records."});
    const capped = h("p", {id: "dead-capped", class: "muted", hidden: true});
    append(clear(main()), [h("h1", null, "Dead letters and retained results"), empty, capped, box]);

    return {
      name: "dead",
      async poll(g) {
        const o = await getJSON("overview");
        if (g !== gen) return;
        renderNode(o.node);
        const retained = ((o.ext || {})["current-retained"] || 0) > 0;
        let wanted = [];
        for (const t of o.tubes || []) {
          if (t["current-jobs-buried"] > 0) wanted.push([t.name, "buried"]);
          if (retained) { wanted.push([t.name, "dead"]); wanted.push([t.name, "completed"]); }
        }
        // bounded work per refresh: the first DEAD_PAGES pages (tubes by name)
        capped.hidden = wanted.length <= DEAD_PAGES;
        setText(capped, "Showing the first " + DEAD_PAGES + " of " + wanted.length +
          " lists; the tube pages have the rest.");
        wanted = wanted.slice(0, DEAD_PAGES);
        const pages = await Promise.all(wanted.map(([name, state]) =>
          getJSON("tubes/" + encodeURIComponent(name) + "/jobs?state=" + state + "&cursor=0&limit=20")
            .then((p) => [name, state, p])));
        if (g !== gen) return;
        const shown = pages.filter(([, , p]) => (p.jobs || []).length > 0);
        const keep = new Set();
        for (const [name, state, p] of shown) {
          const key = name + "\u0000" + state;
          keep.add(key);
          let sec = Array.from(box.children).find((s) => s.dataset.key === key);
          if (!sec) {
            const {table, tbody} = jobsTable("");
            table.removeAttribute("id");
            sec = h("section", {class: "dead-section", dataset: {key: key, tube: name, state: state}},
              h("h2", null, h("a", {href: tubeHref(name, state), text: name}), " ",
                h("span", {class: "state st-" + state, text: state}), " ",
                h("span", {class: "more muted"})),
              h("div", {class: "scroll"}, table));
            sec._tbody = tbody;
          }
          setText(sec.querySelector(".more"), p.next ? "(first 20; more on the tube page)" : "");
          syncRows(sec._tbody, p.jobs, (j) => j.id, buildJobRow, updateJobRow);
          box.appendChild(sec);          // keeps the order of `shown`
        }
        for (const s of Array.from(box.children)) if (!keep.has(s.dataset.key)) s.remove();
        empty.hidden = shown.length > 0;
      },
    };
  }

  // ---------------------------------------------------------------- server page

  function serverView() {
    const nodeTable = kvTable("server-node", null, []);
    const statsTable = kvTable("server-stats", null, []);
    const extTable = kvTable("server-ext", null, []);
    const CONN = [["peer", "peer"], ["age", "age"], ["use", "using"], ["watch", "watching"],
      ["reserved", "reserved"], ["waiting", "waiting"], ["role", "role"]];
    const tbody = h("tbody");
    const conns = h("table", {id: "connections", class: "grid"},
      h("thead", null, h("tr", null, CONN.map(([c, l]) => h("th", {class: c, text: l})))), tbody);
    const noConns = h("p", {id: "no-connections", class: "muted", hidden: true,
      text: "No client connections."});
    append(clear(main()), [
      h("h1", null, "Server"),
      sectionTitle("Node"), nodeTable,
      sectionTitle("Connections"), h("div", {class: "scroll"}, conns), noConns,
      h("div", {class: "columns"},
        h("section", null, sectionTitle("stats"), statsTable),
        h("section", null, sectionTitle("stats-ext"), extTable)),
    ]);
    return {
      name: "server",
      async poll(g) {
        const s = await getJSON("server");
        if (g !== gen) return;
        renderNode(s.node);
        const n = Object.assign({}, s.node || {});
        if (typeof n.time === "number") n.time = fmtTime(n.time);
        updateKv(nodeTable, n);
        updateKv(statsTable, s.stats || {});
        updateKv(extTable, s.ext || {});
        const list = (s.connections || []).map((c, i) => Object.assign({_i: i}, c));
        noConns.hidden = list.length > 0;
        syncRows(tbody, list, (c) => c.peer + "#" + c._i, (c) => {
          const tr = h("tr", {dataset: {peer: c.peer}});
          cells(tr, CONN.map((x) => x[0]));
          return tr;
        }, (tr, c) => {
          setText(cell(tr, "peer"), c.peer);
          setText(cell(tr, "age"), fmtDuration(c.age));
          setText(cell(tr, "use"), c.use);
          setText(cell(tr, "watch"), (c.watch || []).join(", "));
          setText(cell(tr, "reserved"), none(c.reserved) ? "?" : c.reserved);   // ? with --store
          setText(cell(tr, "waiting"), c.waiting ? "yes" : "no");
          const roles = [];
          if (c.producer) roles.push("producer");
          if (c.worker) roles.push("worker");
          setText(cell(tr, "role"), roles.join(", ") || "–");
        });
      },
    };
  }

  // ---------------------------------------------------------------- router and polling

  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/";
    const [path, query] = raw.split("?");
    const params = new URLSearchParams(query || "");
    const parts = path.split("/").filter(Boolean).map((p) => {
      try { return decodeURIComponent(p); } catch (e) { return p; }
    });
    return {parts, params};
  }

  function route() {
    if (view && view.unmount) view.unmount();
    gen++;
    const {parts, params} = parseHash();
    document.body.dataset.view = "";
    if (parts[0] === "tube" && parts.length === 2) {
      markNav("");
      view = tubeView(parts[1], params.get("state") || "ready");
      document.title = parts[1] + " · qserver";
    } else if (parts[0] === "job" && parts.length === 2) {
      markNav("");
      view = jobView(parts[1]);
      document.title = "job " + parts[1] + " · qserver";
    } else if (parts[0] === "dead") {
      markNav("dead");
      view = deadView();
      document.title = "dead letters · qserver";
    } else if (parts[0] === "server") {
      markNav("server");
      view = serverView();
      document.title = "server · qserver";
    } else {
      markNav("overview");
      view = overviewView();
      document.title = "qserver";
    }
    document.body.dataset.view = view.name;
    document.body.dataset.hash = location.hash;
    document.body.dataset.loaded = "0";
    poll(true);
  }

  /** Poll the mounted view (now: even if the tab is hidden), then again every POLL_MS. */
  async function poll(now) {
    if (timer) { clearTimeout(timer); timer = null; }
    if (polling) { pending = true; return; }   // once the running poll ends
    if (!now && document.hidden) { schedule(); return; }
    polling = true;
    const g = gen;
    const v = view;
    try {
      await v.poll(g);
      if (g === gen) {
        document.body.classList.remove("offline");
        document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
        const st = document.getElementById("status");
        if (st.dataset.offline) { delete st.dataset.offline; st.hidden = true; }
      }
    } catch (e) {
      if (g === gen) {
        document.body.classList.add("offline");
        status("Cannot refresh: " + e.message, "error");
        document.getElementById("status").dataset.offline = "1";
      }
    } finally {
      polling = false;
    }
    if (pending) { pending = false; poll(true); return; }
    schedule();
  }

  function schedule() {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => poll(false), POLL_MS);
  }

  async function boot() {
    window.addEventListener("hashchange", route);
    const bar = document.getElementById("status");
    bar.title = "click to hide";
    bar.addEventListener("click", () => { bar.hidden = true; });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(true); });
    try {
      const o = await getJSON("overview");       // learn the node (read-only?) before drawing actions
      renderNode(o.node);
    } catch (e) {
      status("Cannot reach the server: " + e.message, "error");
    }
    route();
  }

  boot();
})();
