// The audience builder: conditions over the policy's attributes, a live count on the current
// snapshot, save, push to a channel, past pushes. Every call carries the key typed in.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  key: sessionStorage.getItem("cdp-key") || "", catalogue: null, segment: null, pushMessage: null,
};
const PUSHES_PER_PAGE = 10;
let previewTimer = null;
let pushTimer = null;

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "X-API-Key": state.key, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    // every error is {"detail": "...", "field": ...}; the detail names the field already
    const message = data && typeof data.detail === "string" ? data.detail : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return data;
}

function option(value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label === undefined ? value : label;
  return o;
}

function element(tag, attrs, text) {
  const e = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
  if (text !== undefined) e.textContent = text;
  return e;
}

// ------------------------------------------------------------------ conditions

const OP_LABELS = {
  "=": "equals", "!=": "is not", "<": "below", "<=": "at most", ">": "above", ">=": "at least",
  in: "is one of", not_in: "is none of", between: "between", is_null: "is empty",
  is_not_null: "is set", contains: "contains", older_than: "older than (days)",
  within: "within the last (days)",
};

function attribute(name) {
  return state.catalogue.attributes.find((a) => a.name === name);
}

function addCondition(initial) {
  const index = $("conditions").children.length + 1;
  const li = element("li", { class: "condition" });
  const attr = element("select", { "aria-label": `Condition ${index} attribute`, class: "attr" });
  state.catalogue.attributes.forEach((a) => attr.appendChild(option(a.name)));
  const op = element("select", { "aria-label": `Condition ${index} operator`, class: "op" });
  const values = element("span", { class: "values" });
  const negate = element("input", { type: "checkbox", "aria-label": `Condition ${index}: exclude matches`, class: "not" });
  const notLabel = element("label", {}, "exclude");
  notLabel.prepend(negate);
  const remove = element("button", { type: "button", class: "secondary", "aria-label": `Remove condition ${index}` }, "Remove");

  function fillOps() {
    const a = attribute(attr.value);
    const previous = op.value;
    op.replaceChildren(...a.ops.map((o) => option(o, OP_LABELS[o] || o)));
    if (a.ops.includes(previous)) op.value = previous;
    fillValues();
  }
  function fillValues() {
    const a = attribute(attr.value);
    const o = op.value;
    const input = (cls, label) => {
      const type = a.kind === "number" || o === "older_than" || o === "within" ? "number"
        : "text";
      const i = element("input", { type, class: cls, "aria-label": `Condition ${index} ${label}` });
      if (type === "number") i.step = "any";
      if (a.kind === "time" && type === "text") i.placeholder = "2026-01-31T00:00:00Z";
      return i;
    };
    let parts = [];
    if (o === "is_null" || o === "is_not_null") parts = [];
    else if (o === "between") parts = [input("low", "from"), element("span", {}, "and"), input("high", "to")];
    else if (o === "older_than" || o === "within") parts = [input("days", "days")];
    else if (o === "in" || o === "not_in") {
      const i = input("list", "values, comma separated");
      i.type = "text";
      i.placeholder = "a, b, c";
      parts = [i];
    } else if (a.kind === "bool") {
      const s = element("select", { class: "value", "aria-label": `Condition ${index} value` });
      s.append(option("true"), option("false"));
      parts = [s];
    } else parts = [input("value", "value")];
    values.replaceChildren(...parts);
  }
  attr.addEventListener("change", () => { fillOps(); changed(); });
  op.addEventListener("change", () => { fillValues(); changed(); });
  // Typing in a value; a select's own change handler refills the values first, then asks.
  li.addEventListener("input", (e) => { if (e.target.tagName !== "SELECT") changed(); });
  negate.addEventListener("change", changed);
  remove.addEventListener("click", () => { li.remove(); changed(); });
  li.append(attr, op, values, notLabel, remove);
  $("conditions").appendChild(li);

  if (initial) {
    attr.value = initial.attr;
    fillOps();
    op.value = initial.op;
    fillValues();
    negate.checked = !!initial.not;
    const set = (cls, v) => { const i = li.querySelector(`.${cls}`); if (i && v !== undefined) i.value = v; };
    set("value", initial.value === undefined ? undefined : String(initial.value));
    set("low", initial.low);
    set("high", initial.high);
    set("days", initial.days);
    if (initial.values) set("list", initial.values.join(", "));
  } else {
    fillOps();
  }
  return li;
}

function typed(kind, text) {
  if (kind === "number") return text === "" ? text : Number(text);
  if (kind === "bool") return text === "true";
  return text;
}

function conditionRule(li) {
  const a = attribute(li.querySelector(".attr").value);
  const op = li.querySelector(".op").value;
  const get = (cls) => (li.querySelector(`.${cls}`)?.value ?? "").trim();
  const node = { attr: a.name, op };
  if (op === "between") { node.low = typed(a.kind, get("low")); node.high = typed(a.kind, get("high")); }
  else if (op === "older_than" || op === "within") node.days = Number(get("days"));
  else if (op === "in" || op === "not_in") node.values = get("list").split(",").map((v) => typed(a.kind, v.trim())).filter((v) => v !== "");
  else if (op !== "is_null" && op !== "is_not_null") node.value = typed(a.kind, get("value"));
  return li.querySelector(".not").checked ? { not: node } : node;
}

function rule() {
  const nodes = [...$("conditions").children].map(conditionRule);
  if (nodes.length === 0) return null;
  if (nodes.length === 1) return nodes[0];
  return { [$("combine").value]: nodes };
}

function loadRule(r) {
  $("conditions").replaceChildren();
  let combine = "and";
  let nodes = [r];
  if (r.and || r.or) { combine = r.and ? "and" : "or"; nodes = r.and || r.or; }
  $("combine").value = combine;
  nodes.forEach((n) => addCondition(n.not ? { ...n.not, not: true } : n));
}

// ------------------------------------------------------------------ preview and chart

function changed() {
  const r = rule();
  $("rule-json").textContent = JSON.stringify(r, null, 2);
  clearTimeout(previewTimer);
  previewTimer = setTimeout(refreshPreview, 250);
}

async function refreshPreview() {
  const r = rule();
  if (!r) { $("count").textContent = "Add a condition to see the audience."; drawChart(null); return; }
  try {
    const p = await api("POST", "/v1/segments/preview", { purpose: $("purpose").value, rule: r });
    $("error").hidden = true;
    $("count").innerHTML = "";
    $("count").append(
      element("strong", { id: "reachable" }, p.reachable.toLocaleString("en")),
      ` reachable for ${p.purpose} of `,
      element("strong", { id: "members" }, p.members.toLocaleString("en")),
      ` matching profiles (snapshot v${p.snapshot_version})`,
    );
    drawChart(p);
  } catch (err) {
    $("error").textContent = err.message;
    $("error").hidden = false;
  }
}

function drawChart(p) {
  const svg = $("chart");
  svg.replaceChildren();
  $("segments-by-value").replaceChildren();
  if (!p) return;
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(1, ...p.churn_risk);
  p.churn_risk.forEach((n, i) => {
    const h = Math.round((n / max) * 110);
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", 10 + i * 30);
    bar.setAttribute("y", 120 - h);
    bar.setAttribute("width", 24);
    bar.setAttribute("height", h);
    const title = document.createElementNS(ns, "title");
    title.textContent = `churn risk ${(i / 10).toFixed(1)}-${((i + 1) / 10).toFixed(1)}: ${n}`;
    bar.appendChild(title);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 12 + i * 30);
    label.setAttribute("y", 135);
    label.textContent = (i / 10).toFixed(1);
    svg.append(bar, label);
  });
  const unknown = p.churn_risk_unknown || 0;
  $("chart-unknown").textContent = unknown
    ? `${unknown.toLocaleString("en")} reachable without a usable churn risk (no profiling consent, or none computed)`
    : "";
  Object.entries(p.value_segment).forEach(([segment, n]) => {
    $("segments-by-value").appendChild(element("li", {}, `${segment}: ${n.toLocaleString("en")}`));
  });
}

// ------------------------------------------------------------------ save, push, history

function showSegment(seg) {
  state.segment = seg;
  $("current").textContent = seg
    ? `Saved as ${seg.segment_id}, version ${seg.version} (purpose ${seg.purpose}).`
    : "Not saved yet.";
  $("push").disabled = !seg;
  $("export").disabled = !seg;
  state.pushPage = 0;
  $("purpose").disabled = !!seg;
  $("name").disabled = !!seg;
  fillChannels();
  refreshPushes();
}

function fillChannels() {
  const purpose = $("purpose").value;
  const channels = Object.entries(state.catalogue.channels).filter(([, ps]) => ps.includes(purpose));
  $("channel").replaceChildren(...channels.map(([c]) => option(c)));
}

async function save() {
  const r = rule();
  if (!r) { $("error").textContent = "Add at least one condition."; $("error").hidden = false; return; }
  try {
    const seg = state.segment
      ? await api("PUT", `/v1/segments/${state.segment.segment_id}`, { rule: r })
      : await api("POST", "/v1/segments", { name: $("name").value || "Untitled", purpose: $("purpose").value, rule: r });
    $("error").hidden = true;
    showSegment(seg);
    listSaved();
  } catch (err) {
    $("error").textContent = err.message;
    $("error").hidden = false;
  }
}

async function push() {
  const channel = $("channel").value;
  try {
    const p = await api("POST", `/v1/segments/${state.segment.segment_id}/push`, { channel });
    state.pushMessage = { id: p.push_id, text: `Push ${p.push_id} to ${channel}: ${p.entered} entered, ${p.exited} exited` };
    $("push-state").textContent = `${state.pushMessage.text}; delivering.`;
    refreshPushes();
  } catch (err) {
    $("push-state").textContent = `Push refused: ${err.message}`;
  }
}

async function exportCsv() {
  const channel = $("channel").value;
  const seg = state.segment;
  const response = await fetch(
    `/v1/segments/${seg.segment_id}/export?channel=${encodeURIComponent(channel)}&format=csv`,
    { headers: { "X-API-Key": state.key } },
  );
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    $("push-state").textContent = `Export refused: ${data && data.detail ? data.detail : response.status}`;
    return;
  }
  const link = element("a", { download: `${seg.segment_id}-v${seg.version}-${channel}.csv` });
  link.href = URL.createObjectURL(await response.blob());
  document.body.appendChild(link);
  link.click();
  link.remove();
  $("push-state").textContent = `Exported ${response.headers.get("X-Members")} members for ${channel}.`;
}

async function refreshPushes() {
  clearTimeout(pushTimer);
  const body = $("pushes").querySelector("tbody");
  if (!state.segment) { body.replaceChildren(); $("pushes-page").textContent = ""; return; }
  const all = await api("GET", `/v1/segments/${state.segment.segment_id}/pushes`);
  const pages = Math.max(1, Math.ceil(all.length / PUSHES_PER_PAGE));
  state.pushPage = Math.min(state.pushPage || 0, pages - 1);
  const first = state.pushPage * PUSHES_PER_PAGE;
  const rows = all.slice(first, first + PUSHES_PER_PAGE);
  const count = `${all.length} push${all.length === 1 ? "" : "es"}`;
  $("pushes-page").textContent = `Page ${state.pushPage + 1} of ${pages} (${count})`;
  $("pushes-newer").disabled = state.pushPage === 0;
  $("pushes-older").disabled = state.pushPage >= pages - 1;
  body.replaceChildren(...rows.map((p) => {
    const tr = element("tr", { "data-push": p.push_id });
    [new Date(p.at).toLocaleString("en-GB"), p.channel, p.segment_version, p.members, p.entered,
      p.exited, p.delivery].forEach((v) => tr.appendChild(element("td", {}, String(v))));
    return tr;
  }));
  const latest = all[0];
  if (latest && state.pushMessage && state.pushMessage.id === latest.push_id) {
    $("push-state").textContent = `${state.pushMessage.text}; ${latest.delivery}.`;
  }
  if (all.some((p) => p.delivery === "pending")) pushTimer = setTimeout(refreshPushes, 1000);
}

async function listSaved() {
  const segments = await api("GET", "/v1/segments");
  $("saved").replaceChildren(...segments.map((s) => {
    const li = element("li");
    const open = element("button", { type: "button", class: "secondary" }, `Open ${s.name} (v${s.version})`);
    open.addEventListener("click", () => {
      $("name").value = s.name;
      $("purpose").value = s.purpose;
      loadRule(s.rule);
      showSegment(s);
      changed();
    });
    li.appendChild(open);
    return li;
  }));
}

// A rule as one line of text: `balance_total < 5000`, `a in [x, y]`, `and`/`or`/`not` nested.
function ruleText(r) {
  if (r.and || r.or) {
    const op = r.and ? " and " : " or ";
    return `(${(r.and || r.or).map(ruleText).join(op)})`;
  }
  if (r.not) return `not ${ruleText(r.not)}`;
  const operand = r.values ? `[${r.values.join(", ")}]`
    : r.days !== undefined ? `${r.days} days`
    : r.low !== undefined ? `${r.low} and ${r.high}`
    : r.value !== undefined ? String(r.value) : "";
  return `${r.attr} ${r.op.replaceAll("_", " ")} ${operand}`.trim();
}

async function listTriggers() {
  const triggers = await api("GET", "/v1/triggers");
  $("triggers").querySelector("tbody").replaceChildren(...triggers.map((t) => {
    const tr = element("tr");
    const name = element("td", {}, t.name);
    name.title = t.description;
    tr.append(name, element("td", {}, ruleText(t.when)), element("td", {}, t.purpose),
      element("td", {}, t.once_per), element("td", {}, String(t.fired_24h)),
      element("td", {}, String(t.fired_7d)), element("td", {}, t.last_fired || "never"));
    return tr;
  }));
}

// ------------------------------------------------------------------ start

async function start() {
  try {
    state.catalogue = await api("GET", "/v1/segments/catalogue");
  } catch (err) {
    $("key-state").textContent = `Key refused: ${err.message}`;
    $("app").hidden = true;
    return;
  }
  sessionStorage.setItem("cdp-key", state.key);
  $("key-state").textContent = "Key accepted.";
  $("app").hidden = false;
  $("purpose").replaceChildren(...Object.entries(state.catalogue.purposes).map(
    ([p, basis]) => option(p, `${p} (${basis})`)));
  $("purpose").value = "marketing";
  $("conditions").replaceChildren();
  showSegment(null);
  listSaved();
  listTriggers();
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("key").value.trim();
  start();
});
$("add").addEventListener("click", () => { addCondition(); changed(); });
$("combine").addEventListener("change", changed);
$("purpose").addEventListener("change", () => { fillChannels(); changed(); });
$("save").addEventListener("click", save);
$("push").addEventListener("click", push);
$("export").addEventListener("click", exportCsv);
$("pushes-newer").addEventListener("click", () => { state.pushPage -= 1; refreshPushes(); });
$("pushes-older").addEventListener("click", () => { state.pushPage += 1; refreshPushes(); });
if (state.key) { $("key").value = state.key; start(); }
