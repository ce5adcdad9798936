// The planner page: forecasts with their band, placement, KPIs. Every value from the service is
// written as text (textContent), never as HTML. The key is kept in sessionStorage only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "omni-key";

function key() { return sessionStorage.getItem(KEY) || ""; }

async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: { "Authorization": "Bearer " + key(), "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new Error("The service did not answer: is it running?");
  }
  let answer = {};
  try { answer = await response.json(); } catch (e) { /* not JSON: say the status */ }
  const reason = answer.error || ("The service answered " + response.status + ".");
  if (response.status === 401 && key()) {  // a refused key is forgotten, not sent again
    sessionStorage.removeItem(KEY);
    $("key-state").textContent = "Key refused (" + reason + "): enter another.";
  }
  if (!response.ok) throw new Error(reason);
  return answer;
}

// A form's work: its error line cleared first; on a refusal the reason is said and the last
// answer's chart, table and note are cleared, so nothing stale stands beside it. Answers may
// arrive in any order: ``work`` is given ``current()``, true while no later request was made,
// and a refusal of an earlier request is dropped.
function guarded(section, work) {
  const error = $(section + "-error");
  const results = error.closest("section").querySelectorAll("svg, table, .note");
  let requests = 0;
  const refuse = (message) => {
    results.forEach((node) => node.replaceChildren());
    error.textContent = message;
  };
  const run = async (event) => {
    if (event) event.preventDefault();
    const asked = ++requests;
    const current = () => asked === requests;
    error.textContent = "";
    try {
      if (!key()) throw new Error("Enter an API key first.");
      await work(current);
    } catch (e) {
      if (current()) refuse(e.message);
    }
  };
  run.refuse = (message) => { requests++; refuse(message); };
  return run;
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

const PERIOD_NOUNS = { D: "day", W: "week", M: "month" };

function drawForecast(actuals, forecast, freq) {
  const chart = $("fc-chart");
  chart.replaceChildren();
  const W = 640, H = 260, left = 44, right = 10, top = 24, bottom = 28;
  const dates = [...actuals.map((a) => a.period_end), ...forecast.map((f) => f.period_end)];
  const values = [...actuals.map((a) => a.units), ...forecast.map((f) => f.p90), ...forecast.map((f) => f.mean)];
  // Gridlines at round steps (1, 2 or 5 times a power of ten), labelled as precisely as needed.
  const raw = Math.max(...values, 0) / 4 || 0.25;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const high = 4 * step;
  const digits = Math.max(0, -Math.floor(Math.log10(step)));
  const x = (i) => left + (i * (W - left - right)) / Math.max(1, dates.length - 1);
  const y = (v) => top + (1 - v / high) * (H - top - bottom);
  for (let k = 0; k <= 4; k++) {
    const v = step * k;
    svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), stroke: "#e5e9ef" }, chart);
    svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6b7c" }, chart).textContent = v.toFixed(digits);
  }
  const first = actuals.length;
  // One period's band is a bar 12 px wide; more periods', the area between their P10 and P90.
  const edges = forecast.length === 1 ? [-6, 6] : [0];
  const at = forecast.flatMap((f, i) => edges.map((d) => ({ x: x(first + i) + d, f })));
  const band = at.map((p) => p.x + "," + y(p.f.p90)).concat(at.map((p) => p.x + "," + y(p.f.p10)).reverse());
  if (forecast.length) svg("polygon", { id: "band", points: band.join(" "), fill: "#9ec5ff", opacity: 0.7 }, chart);
  const line = (points, attributes) => points.length && svg("polyline", { points: points.join(" "), fill: "none", ...attributes }, chart);
  line(actuals.map((a, i) => x(i) + "," + y(a.units)), { id: "actuals", stroke: "#1d2733", "stroke-width": 2 });
  line(forecast.map((f, i) => x(first + i) + "," + y(f.mean)), { id: "mean", stroke: "#1f6feb", "stroke-width": 2 });
  forecast.forEach((f, i) => svg("circle", { class: "mean-point", cx: x(first + i), cy: y(f.mean), r: 3, fill: "#1f6feb" }, chart));
  [0, dates.length - 1].filter((i, k, all) => i >= 0 && all.indexOf(i) === k).forEach((i) => {
    const anchor = i === 0 ? "start" : "end";
    svg("text", { x: x(i), y: H - 8, "text-anchor": anchor, "font-size": 11, fill: "#5b6b7c" }, chart).textContent = dates[i];
  });
  // What the numbers count (above the plot, clear of the data), and that the dates are each
  // period's last day.
  svg("text", { id: "y-unit", x: left - 6, y: 12, "font-size": 11, fill: "#5b6b7c" }, chart).textContent =
    "units per " + (PERIOD_NOUNS[freq] || "period");
  svg("text", { x: W / 2, y: H - 8, "text-anchor": "middle", "font-size": 11, fill: "#5b6b7c" }, chart).textContent = "period ending";
}

const PERIODS = { D: "daily", W: "weekly", M: "monthly" };

const showForecast = guarded("fc", async (current) => {
  const item = $("fc-item").value.trim();
  const answer = await call("POST", "/forecast", {
    store_id: $("fc-store").value.trim(), item_ids: [item],
    horizon: Number($("fc-horizon").value), history: 26,
  });
  const actuals = (answer.actuals || []).filter((a) => a.item_id === item);
  const forecast = answer.forecast.filter((f) => f.item_id === item);
  if (!current()) return;
  drawForecast(actuals, forecast, answer.freq);
  fillTable($("fc-table"), ["period ending", "mean", "P10", "P50", "P90"],
    forecast.map((f) => [f.period_end, number(f.mean, 2), number(f.p10, 2), number(f.p50, 2), number(f.p90, 2)]));
  const notes = ["Model " + answer.model_version + ", trained on " + (PERIODS[answer.freq] || answer.freq) +
    " sales to " + answer.history_end + " (the forecast follows it); band: " + answer.interval + "."];
  if (forecast.some((f) => f.method === "category prior")) {
    notes.push("This store has not sold this item: the forecast is its category's usual demand at the store, not the model's.");
  } else if (forecast.some((f) => f.method !== forecast[0].method || f.method.startsWith("moving_average"))) {
    notes.push("Too short a history for the model: a moving average of its sales.");
  }
  if (!actuals.length) notes.push("No sales of it here in the last 26 periods.");
  if (forecast.some((f) => f.mean > f.p90)) {
    notes.push("Where most periods sell nothing, the mean can lie above P90: it counts the odd sale that P90 leaves out.");
  }
  $("fc-note").textContent = notes.join(" ");
});

// -- placement ----------------------------------------------------------------------------------

const showPlacement = guarded("pl", async (current) => {
  const typed = $("pl-units").value.trim();  // left empty: the DC's stock available now
  const answer = await call("POST", "/placement", {
    item_id: $("pl-item").value.trim(), horizon: Number($("pl-horizon").value),
    ...(typed === "" ? {} : { units_available: Number(typed) }),
  });
  if (!current()) return;
  fillTable($("pl-table"), ["store", "on hand", "send", "final stock", "demand", "sales", "lost", "leftover",
    "fill rate"],
    answer.stores.map((s) => [s.store_id, number(s.on_hand, 0), number(s.send, 0), number(s.final_stock, 0),
      number(s.expected_demand), number(s.expected_sales), number(s.expected_lost), number(s.expected_leftover),
      percent(s.expected_fill_rate)]));
  $("pl-note").textContent = answer.units_sent + " units sent, " + answer.units_kept_at_dc + " kept at " +
    (answer.dc_id || "the DC") + (typed === "" ? " (its stock available to promise now)." : ".");
  const left = answer.stores_without_sales || [];
  $("pl-why").textContent = "No store is sent a unit it is expected to lose money on: a unit left over costs " +
    "a quarter of a sale's margin. Demand, sales, lost and leftover units are expected values over the " +
    "periods covered." + (left.length ? " Stores that have not sold this item take no part: " + left.join(", ") + "." : "");
});

// -- KPIs ---------------------------------------------------------------------------------------

const showKpis = guarded("kpi", async (current) => {
  const since = $("kpi-since").value, until = $("kpi-until").value;
  const query = new URLSearchParams({ since: since + "T00:00:00", until: until + "T23:59:59", window_days: $("kpi-window").value });
  const answer = await call("GET", "/kpis?" + query.toString());
  if (!current()) return;
  const uplift = (r) => (r.uplift === null ? (r.control_customers ? "no treated customer" : "no control arm")
    : percent(r.treated_conversion) + " - " + percent(r.control_conversion) + " = " + number(r.uplift * 100, 1) + " pt (" + number(r.uplift_low * 100, 1) + ", " + number(r.uplift_high * 100, 1) + ")");
  const anytime = (r) => (r.uplift === null ? "–" : "(" + number(r.uplift_anytime_low * 100, 1) + ", " + number(r.uplift_anytime_high * 100, 1) + ")");
  fillTable($("kpi-table"), ["route / channel", "exposures", "customers", "view-through", "conversion", "revenue", "cross-channel", "customers converted: treated - control = uplift (95%, one look)", "any time 95%"],
    answer.rows.map((r) => [r.route + " / " + r.channel, String(r.exposures), String(r.customers), percent(r.view_through),
      percent(r.conversion), number(r.revenue, 2), percent(r.cross_channel_share), uplift(r), anytime(r)]));
  $("kpi-note").textContent = answer.rows.length
    ? "Control share " + percent(answer.control_share) + " (experiment " + answer.experiment + ")."
    : "No recommendations or offers were shown in that period.";
});

// -- start --------------------------------------------------------------------------------------

function useKey(event) {
  event.preventDefault();
  const typed = $("key").value.trim().replace(/^Bearer\s+/i, "");
  $("key").value = "";
  if (!/^[\x21-\x7e]+$/.test(typed)) {  // a header carries nothing else
    $("key-state").textContent = "An API key is ASCII letters, digits and signs without spaces: check for a pasted space or a non-Latin letter.";
    return;
  }
  sessionStorage.setItem(KEY, typed);
  $("key-state").textContent = "Key set for this tab.";
  showForecast(); showPlacement(); showKpis();
}

const today = new Date();
$("kpi-until").value = today.toISOString().slice(0, 10);
$("kpi-since").value = new Date(today - 30 * 86400e3).toISOString().slice(0, 10);
$("key-form").addEventListener("submit", useKey);
$("forecast-form").addEventListener("submit", showForecast);
$("placement-form").addEventListener("submit", showPlacement);
// The placement follows the units as they are typed, once the typing pauses.
let typing;
$("pl-units").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(() => {
    const invalid = $("placement-form").querySelector(":invalid");  // any field, not only the units
    if (!invalid) showPlacement();
    else showPlacement.refuse(invalid.validationMessage);  // not the last answer's
  }, 400);
});
// A value the browser refuses on submit: its message (also shown beside the field) replaces the
// last answer, which no longer matches the form.
const RUNS = { "forecast-form": showForecast, "placement-form": showPlacement, "kpi-form": showKpis };
Object.entries(RUNS).forEach(([form, run]) => $(form).addEventListener("invalid", (event) => {
  run.refuse(event.target.validationMessage);
}, true));
$("kpi-form").addEventListener("submit", showKpis);
if (key()) { $("key-state").textContent = "Key set for this tab."; showForecast(); showPlacement(); showKpis(); }
