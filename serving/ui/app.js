// The planner page: forecasts with their band, placement, KPIs. Every value from the service is
// written as text (textContent), never as HTML. The key is kept in sessionStorage only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "omni-key";

function key() { return sessionStorage.getItem(KEY) || ""; }

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + key(), "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let answer = {};
  try { answer = await response.json(); } catch (e) { /* not JSON: say the status */ }
  if (!response.ok) throw new Error(answer.error || ("The service answered " + response.status + "."));
  return answer;
}

function guarded(errorId, work) {
  return async (event) => {
    if (event) event.preventDefault();
    $(errorId).textContent = "";
    if (!key()) { $(errorId).textContent = "Enter an API key first."; return; }
    try { await work(); } catch (e) { $(errorId).textContent = e.message; }
  };
}

function cell(row, text, cls) {
  const td = document.createElement(row.parentElement && row.parentElement.tagName === "THEAD" ? "th" : "td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function fillTable(table, headers, rows) {
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  headers.forEach((h) => cell(head, h));
  const body = table.createTBody();
  rows.forEach((values) => {
    const row = body.insertRow();
    values.forEach((v, i) => cell(row, v, i === 0 ? "text" : ""));
  });
}

const number = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const percent = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%");

// -- forecast -----------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes, parent) {
  const node = document.createElementNS(SVG, tag);
  Object.entries(attributes).forEach(([k, v]) => node.setAttribute(k, v));
  parent.appendChild(node);
  return node;
}

function drawForecast(actuals, forecast) {
  const chart = $("fc-chart");
  chart.replaceChildren();
  const W = 640, H = 260, left = 44, right = 10, top = 10, bottom = 28;
  const dates = [...actuals.map((a) => a.period_end), ...forecast.map((f) => f.period_end)];
  const values = [...actuals.map((a) => a.units), ...forecast.map((f) => f.p90), ...forecast.map((f) => f.mean)];
  const high = Math.max(1, ...values) * 1.1;
  const x = (i) => left + (i * (W - left - right)) / Math.max(1, dates.length - 1);
  const y = (v) => top + (1 - v / high) * (H - top - bottom);
  for (let k = 0; k <= 4; k++) {
    const v = (high * k) / 4;
    svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), stroke: "#e5e9ef" }, chart);
    svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6b7c" }, chart).textContent = v.toFixed(0);
  }
  const first = actuals.length;
  const band = forecast.map((f, i) => x(first + i) + "," + y(f.p90))
    .concat(forecast.map((f, i) => x(first + i) + "," + y(f.p10)).reverse());
  if (forecast.length) svg("polygon", { id: "band", points: band.join(" "), fill: "#9ec5ff", opacity: 0.7 }, chart);
  const line = (points, attributes) => points.length && svg("polyline", { points: points.join(" "), fill: "none", ...attributes }, chart);
  line(actuals.map((a, i) => x(i) + "," + y(a.units)), { id: "actuals", stroke: "#1d2733", "stroke-width": 2 });
  line(forecast.map((f, i) => x(first + i) + "," + y(f.mean)), { id: "mean", stroke: "#1f6feb", "stroke-width": 2 });
  [0, dates.length - 1].filter((i, k, all) => i >= 0 && all.indexOf(i) === k).forEach((i) => {
    const anchor = i === 0 ? "start" : "end";
    svg("text", { x: x(i), y: H - 8, "text-anchor": anchor, "font-size": 11, fill: "#5b6b7c" }, chart).textContent = dates[i];
  });
}

const showForecast = guarded("fc-error", async () => {
  const item = $("fc-item").value.trim();
  const answer = await call("POST", "/forecast", {
    store_id: $("fc-store").value.trim(), item_ids: [item],
    horizon: Number($("fc-horizon").value), history: 26,
  });
  const actuals = (answer.actuals || []).filter((a) => a.item_id === item);
  const forecast = answer.forecast.filter((f) => f.item_id === item);
  drawForecast(actuals, forecast);
  $("fc-note").textContent = "Model " + answer.model_version + "; band: " + answer.interval + ".";
});

// -- placement ----------------------------------------------------------------------------------

const showPlacement = guarded("pl-error", async () => {
  const answer = await call("POST", "/placement", {
    item_id: $("pl-item").value.trim(), units_available: Number($("pl-units").value),
    horizon: Number($("pl-horizon").value),
  });
  fillTable($("pl-table"), ["store", "on hand", "send", "final stock", "expected demand", "fill rate"],
    answer.stores.map((s) => [s.store_id, number(s.on_hand, 0), number(s.send, 0), number(s.final_stock, 0),
      number(s.expected_demand), percent(s.expected_fill_rate)]));
  $("pl-note").textContent = answer.units_sent + " units sent, " + answer.units_kept_at_dc + " kept at the DC.";
});

// -- KPIs ---------------------------------------------------------------------------------------

const showKpis = guarded("kpi-error", async () => {
  const since = $("kpi-since").value, until = $("kpi-until").value;
  const query = new URLSearchParams({ since: since + "T00:00:00", until: until + "T23:59:59", window_days: $("kpi-window").value });
  const answer = await call("GET", "/kpis?" + query.toString());
  const uplift = (r) => (r.uplift === null ? "no control" : number(r.uplift * 100, 1) + " pt (" + number(r.uplift_low * 100, 1) + ", " + number(r.uplift_high * 100, 1) + ")");
  const anytime = (r) => (r.uplift === null ? "-" : "(" + number(r.uplift_anytime_low * 100, 1) + ", " + number(r.uplift_anytime_high * 100, 1) + ")");
  fillTable($("kpi-table"), ["route / channel", "exposures", "customers", "view-through", "conversion", "revenue", "cross-channel", "uplift (95%, one look)", "any time 95%"],
    answer.rows.map((r) => [r.route + " / " + r.channel, String(r.exposures), String(r.customers), percent(r.view_through),
      percent(r.conversion), number(r.revenue, 2), percent(r.cross_channel_share), uplift(r), anytime(r)]));
  $("kpi-note").textContent = answer.rows.length
    ? "Control share " + percent(answer.control_share) + " (experiment " + answer.experiment + ")."
    : "No recommendations or offers were shown in that period.";
});

// -- start --------------------------------------------------------------------------------------

function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  $("key-state").textContent = "Key set for this tab.";
  showForecast(); showPlacement(); showKpis();
}

const today = new Date();
$("kpi-until").value = today.toISOString().slice(0, 10);
$("kpi-since").value = new Date(today - 30 * 86400e3).toISOString().slice(0, 10);
$("key-form").addEventListener("submit", useKey);
$("forecast-form").addEventListener("submit", showForecast);
$("placement-form").addEventListener("submit", showPlacement);
$("pl-units").addEventListener("change", showPlacement);
$("kpi-form").addEventListener("submit", showKpis);
if (key()) { $("key-state").textContent = "Key set for this tab."; showForecast(); showPlacement(); showKpis(); }
