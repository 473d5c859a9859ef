// The teaching page of `npbert serve`: plain JavaScript, no libraries, no build step.
// Everything drawn here comes from POST /v1/explain (npbert/serve/explain.py documents the JSON), and the
// attributions from POST /v1/attributions (npbert/serve/attributions.py, npbert/attributions.py).
"use strict";

const page = {
  request: null,     // the body last sent: {input_data, parameters}
  data: null,        // the last /v1/explain response
  probs: null,       // its attention as a Float32Array [layers, H, S, S]
  answer: 0,         // the answer shown in the context
  layer: 0,
  head: "all",       // a head number, or "all" for small multiples of every head
  hover: null,       // the token whose attention is shown
  showProbs: false,
  busy: false,
  attr: {
    on: false,       // the reader asked for attributions: they follow the answer, window and method chosen
    method: "ig",
    side: "start",   // attribution to the answer's start or end token
    data: null,      // the last /v1/attributions response for page.request
    seq: 0,          // the request in flight; an older one's late response is dropped
    abort: null,     // aborts the request in flight (the server stops its work when the client goes away)
  },
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// --- talking to the server ----------------------------------------------------------------------------

class PageError extends Error {}

const REFUSALS = {
  400: "The server could not read the request",
  413: "Too long for this server",
  422: "The server refused this input",
};

async function postJSON(url, body, signal = null) {
  let resp;
  try {
    resp = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body), signal});
  } catch (e) {
    throw new PageError(`Could not reach the server (${e.message}). Is npbert serve still running?`);
  }
  const text = await resp.text();
  let payload = null;
  try { payload = JSON.parse(text); } catch (e) { /* reported below */ }
  if (!resp.ok) {
    const what = REFUSALS[resp.status] || (resp.status >= 500 ? "The server failed" : "The server refused the request");
    const problems = payload && Array.isArray(payload.problems) ? payload.problems : [text.slice(0, 300) || resp.statusText];
    throw new PageError(`${what} (HTTP ${resp.status}): ${problems.join("; ")}`);
  }
  if (payload === null) throw new PageError(`The server's answer is not JSON (HTTP ${resp.status}).`);
  return payload;
}

function setStatus(message, kind = "", id = "status") {
  const s = $(id);
  s.className = kind;
  s.textContent = message;
}

function decodeAttention(attention) {
  if (!attention) return null;
  const bin = atob(attention.data);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Float32Array(bytes.buffer);  // little-endian, as every platform browsers run on
}

async function explain(query = {}) {
  const params = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== null && v !== undefined));
  const t0 = performance.now();
  const search = params.toString();
  const data = await postJSON("/v1/explain" + (search ? "?" + search : ""), page.request);
  return [data, (performance.now() - t0) / 1000];
}

function readForm() {
  const parameters = {top_k: Number($("top-k").value)};
  for (const [id, name] of [["max-seq-len", "max_seq_len"], ["doc-stride", "doc_stride"]]) {
    const v = $(id).value.trim();
    if (v !== "") parameters[name] = Number(v);
  }
  return {input_data: {question: $("question").value, context: $("context").value}, parameters};
}

async function run(action, busyText, onError = () => {}) {
  if (page.busy) return;
  page.busy = true;
  $("ask").disabled = true;
  setStatus(busyText, "busy");
  try {
    await action();
  } catch (e) {
    setStatus(e instanceof PageError ? e.message : `Something went wrong in the page: ${e.message}`, "error");
    onError();
  } finally {
    page.busy = false;
    $("ask").disabled = false;
  }
}

async function ask(event) {
  event.preventDefault();
  page.request = readForm();
  await run(async () => {
    const [data, seconds] = await explain();
    page.answer = 0;
    page.hover = null;
    page.attr.data = null;  // they were of the previous question
    cancelAttribution();
    show(data);
    if (page.attr.on) attribute();
    setStatus(`Answered in ${seconds.toFixed(2)} s, ${data.server_seconds.toFixed(2)} s of it in the server (${data.windows.length} window${data.windows.length === 1 ? "" : "s"}, `
              + `${data.windows[data.window].tokens.length} tokens in the one shown).`, "ok");
  }, "Asking the model…", () => { $("results").hidden = true; });  // no stale results under a refusal
}

async function reload(query, busyText) {
  await run(async () => {
    const [data] = await explain(query);
    show(data);
    setStatus(`Showing window ${data.window + 1} of ${data.windows.length}, layer ${page.layer}.`, "ok");
  }, busyText);
}

// --- drawing ------------------------------------------------------------------------------------------

function show(data) {
  page.data = data;
  page.probs = decodeAttention(data.attention);
  page.layer = Math.min(page.layer, data.model.n_layers - 1);
  if (page.head !== "all") page.head = Math.min(page.head, data.model.n_heads - 1);
  $("results").hidden = false;
  drawAnswers();
  drawContext();
  drawTokens();
  drawControls();
  drawAttention();
  drawAttributions();
}

function drawAnswers() {
  const list = $("answers");
  list.replaceChildren();
  const {answers} = page.data;
  if (!answers.length) list.append(el("li", {text: "No answer."}));
  answers.forEach((a, i) => {
    const text = a.answer === "" ? "(no answer)" : a.answer;
    const li = el("li", {class: i === page.answer ? "chosen" : "", title: "show this answer in the context",
                         onclick: () => { page.answer = i; drawAnswers(); drawContext(); if (page.attr.on) attribute(); }},
      el("span", {class: "answer-text", text}),
      el("span", {class: "bar"}, el("span", {style: `width:${(100 * a.score).toFixed(1)}%`})),
      el("span", {class: "score", text: `${(100 * a.score).toFixed(1)}%`}),
      el("span", {class: "where", text: `chars ${a.start}–${a.end}, window ${a.window + 1}`}));
    list.append(li);
  });
}

function drawContext() {
  const {context, answers, windows} = page.data;
  const a = answers[page.answer];
  const view = $("context-view");
  view.replaceChildren();
  if (a && a.end > a.start) {
    view.append(context.slice(0, a.start), el("mark", {text: context.slice(a.start, a.end)}), context.slice(a.end));
  } else {
    view.append(context);
  }
  const ruler = $("window-ruler");
  ruler.replaceChildren();
  ruler.hidden = windows.length < 2;
  windows.forEach((w, i) => {
    const [c0, c1] = w.context_span;
    ruler.append(el("button", {
      type: "button", class: i === page.data.window ? "span chosen" : "span",
      style: `left:${100 * c0 / context.length}%;width:${100 * (c1 - c0) / context.length}%;top:${(i % 2) * 12}px`,
      title: `window ${i + 1}: context characters ${c0}–${c1}`, onclick: () => pickWindow(i)}));
  });
}

function tokenClass(seq, token) {
  if (seq === null) return token === "[PAD]" ? "tok pad" : "tok special";
  return seq === 0 ? "tok question" : "tok context";
}

function tokenChip(w, i, extra = {}) {
  const token = w.tokens[i];
  const chip = el("span", {class: tokenClass(w.sequence_ids[i], token), "data-index": i, ...extra});
  if (token.startsWith("##")) chip.append(el("span", {class: "hashes", text: "##"}), token.slice(2));
  else chip.append(token);
  return chip;
}

function overlaps(i) {
  // A context token also seen by the previous or the next window (the doc_stride overlap).
  const {windows, window} = page.data;
  const w = windows[window];
  if (w.sequence_ids[i] !== 1) return false;
  const [start] = w.offsets[i];
  const prev = windows[window - 1], next = windows[window + 1];
  return (prev && start < prev.context_span[1]) || (next && start >= next.context_span[0]);
}

function drawTokens() {
  const {windows, window: k} = page.data;
  const picker = $("window-picker");
  picker.replaceChildren();
  const [c0, c1] = windows[k].context_span;
  if (windows.length > 1) {
    picker.append(el("button", {type: "button", text: "◀", title: "previous window", disabled: k === 0 ? "" : null,
                                onclick: () => pickWindow(k - 1)}));
  }
  picker.append(el("span", {class: "window-label", text:
    `window ${k + 1} of ${windows.length} · context characters ${c0}–${c1} · ${windows[k].tokens.length} tokens`}));
  if (windows.length > 1) {
    picker.append(el("button", {type: "button", text: "▶", title: "next window",
                                disabled: k === windows.length - 1 ? "" : null, onclick: () => pickWindow(k + 1)}));
  }

  const w = windows[k];
  const {start_probs: ps, end_probs: pe} = page.data;
  const maxS = Math.max(...ps), maxE = Math.max(...pe);
  const box = $("tokens");
  box.replaceChildren();
  box.classList.toggle("with-probs", page.showProbs);
  w.tokens.forEach((t, i) => {
    const chip = tokenChip(w, i, {title: `token ${i}: ${t} (id ${w.input_ids[i]})\n`
      + `p(start) ${ps[i].toPrecision(3)}, p(end) ${pe[i].toPrecision(3)}\n`
      + `logits ${page.data.start_logits[i].toFixed(2)}, ${page.data.end_logits[i].toFixed(2)}`});
    if (overlaps(i)) chip.classList.add("overlap");
    if (page.showProbs) {
      chip.append(el("span", {class: "heat start", style: `opacity:${(ps[i] / maxS).toFixed(3)}`, "data-p": ps[i]}),
                  el("span", {class: "heat end", style: `opacity:${(pe[i] / maxE).toFixed(3)}`, "data-p": pe[i]}));
    }
    box.append(chip);
  });
  $("probs-legend").hidden = !page.showProbs;
  $("toggle-probs").textContent = page.showProbs ? "Hide start/end probabilities" : "Show start/end probabilities";
  $("toggle-probs").setAttribute("aria-pressed", String(page.showProbs));
}

function drawControls() {
  const {n_layers: L, n_heads: H} = page.data.model;
  const layer = $("layer"), head = $("head");
  layer.replaceChildren(...Array.from({length: L}, (_, i) => el("option", {value: i, text: `${i}`})));
  head.replaceChildren(el("option", {value: "all", text: `all ${H} heads`}),
                       ...Array.from({length: H}, (_, i) => el("option", {value: i, text: `${i}`})));
  layer.value = String(page.layer);
  head.value = String(page.head);
}

// attention[l][h][i][j] of the layers the server sent (null when it did not send layer l)
function weight(l, h, i, j) {
  const at = page.data.attention_layers.indexOf(l);
  if (at < 0 || !page.probs) return null;
  const S = page.data.windows[page.data.window].tokens.length, H = page.data.model.n_heads;
  return page.probs[((at * H + h) * S + i) * S + j];
}

function headsShown() {
  const H = page.data.model.n_heads;
  return page.head === "all" ? Array.from({length: H}, (_, h) => h) : [page.head];
}

function drawAttention() {
  const view = $("attention-view");
  const w = page.data.windows[page.data.window];
  view.dataset.layer = page.layer;
  view.dataset.head = page.head;
  $("attention-note").textContent = page.data.attention_note || "";
  const available = page.data.attention_layers.includes(page.layer);
  const matrices = $("attn-matrices");
  matrices.replaceChildren();
  matrices.className = page.head === "all" ? "multiples" : "single";
  const tokens = $("attn-tokens");
  tokens.replaceChildren(...w.tokens.map((_, i) => tokenChip(w, i, {
    onmouseenter: () => setHover(i), onfocus: () => setHover(i), tabindex: 0})));
  if (!available) {
    matrices.append(el("p", {class: "hint", text: `Layer ${page.layer} was not sent; loading it…`}));
    return;
  }
  for (const h of headsShown()) matrices.append(matrixFigure(h, w));
  colorTokens();
}

function setHover(i) {
  page.hover = i;
  colorTokens();
  for (const fig of $("attn-matrices").querySelectorAll("figure")) paintMatrix(fig);
}

function colorTokens() {
  // Chips coloured by where the hovered token attends: one head, or the mean of all heads.
  const chips = $("attn-tokens").children;
  const i = page.hover;
  const heads = headsShown();
  const w = page.data.windows[page.data.window];
  for (let j = 0; j < chips.length; j++) {
    const chip = chips[j];
    chip.classList.toggle("hovered", j === i);
    if (i === null || !page.data.attention_layers.includes(page.layer)) {
      chip.style.background = "";
      delete chip.dataset.weight;
      continue;
    }
    let p = 0;
    for (const h of heads) p += weight(page.layer, h, i, j);
    p /= heads.length;
    chip.dataset.weight = String(p);
    chip.style.background = heat(p);
    chip.style.color = p > 0.5 ? "#fff" : "";
  }
  const what = page.head === "all" ? `mean of ${heads.length} heads` : `head ${page.head}`;
  $("attn-readout").textContent = i === null ? "Hover a token to see where it attends."
    : `“${w.tokens[i]}” (token ${i}) attends, in layer ${page.layer}, ${what}: darker = more.`;
}

function heatRGB(p) {
  // White to deep blue; sqrt so that small weights stay visible.
  const t = Math.sqrt(Math.max(0, Math.min(1, p)));
  return [Math.round(255 - t * (255 - 24)), Math.round(255 - t * (255 - 64)), Math.round(255 - t * (255 - 160))];
}

function heat(p) {
  return `rgb(${heatRGB(p).join(",")})`;
}

function matrixFigure(h, w) {
  const S = w.tokens.length;
  const single = page.head !== "all";
  const labels = single && S <= 64;
  const cell = single ? Math.max(2, Math.min(22, Math.floor(520 / S))) : Math.max(1, Math.floor(150 / S));
  const margin = labels ? 72 : 0;
  const canvas = el("canvas", {width: margin + S * cell, height: margin + S * cell, "data-head": h});
  const fig = el("figure", {"data-head": h}, canvas, el("figcaption", {text: single ? `layer ${page.layer}, head ${h}` : `head ${h}`}));
  fig.matrix = {h, S, cell, margin, labels, image: matrixImage(h, S)};
  canvas.addEventListener("mousemove", (ev) => {
    const r = canvas.getBoundingClientRect();
    const scale = canvas.width / r.width;
    const x = Math.floor(((ev.clientX - r.left) * scale - margin) / cell), y = Math.floor(((ev.clientY - r.top) * scale - margin) / cell);
    if (x < 0 || y < 0 || x >= S || y >= S) return;
    if (page.hover !== y) setHover(y);
    $("attn-readout").textContent = `head ${h}: “${w.tokens[y]}” (${y}) → “${w.tokens[x]}” (${x}): ${weight(page.layer, h, y, x).toFixed(4)}`;
  });
  paintMatrix(fig);
  return fig;
}

function matrixImage(h, S) {
  const img = new ImageData(S, S);
  for (let i = 0; i < S; i++) {
    for (let j = 0; j < S; j++) {
      const o = 4 * (i * S + j);
      img.data.set(heatRGB(weight(page.layer, h, i, j)), o);
      img.data[o + 3] = 255;
    }
  }
  const off = el("canvas", {width: S, height: S});
  off.getContext("2d").putImageData(img, 0, 0);
  return off;
}

function paintMatrix(fig) {
  const {S, cell, margin, labels, image} = fig.matrix;
  const canvas = fig.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, margin, margin, S * cell, S * cell);
  if (labels) {
    const tokens = page.data.windows[page.data.window].tokens;
    ctx.fillStyle = "#333";
    ctx.font = `${Math.min(12, cell - 2)}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    tokens.forEach((t, i) => {
      const label = t.length > 9 ? t.slice(0, 8) + "…" : t;
      ctx.textAlign = "right";
      ctx.fillText(label, margin - 4, margin + (i + 0.5) * cell);
      ctx.save();
      ctx.translate(margin + (i + 0.5) * cell, margin - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(label, 0, 0);
      ctx.restore();
    });
  }
  if (page.hover !== null) {
    ctx.strokeStyle = "#e8590c";
    ctx.lineWidth = Math.max(1, Math.min(2, cell / 4));
    ctx.strokeRect(margin, margin + page.hover * cell, S * cell, cell);
  }
}

// --- attributions ------------------------------------------------------------------------------------

const METHODS = {
  "ig": "integrated gradients",
  "grad-x-input": "Grad × Input",
  "smoothgrad": "SmoothGrad",
  "rollout": "attention rollout",
};

function attributionBody() {
  // The page's question, context and window settings; the chosen answer's characters (the empty answer
  // has none: then the server explains its best answer, which the response names).
  const {top_k, ...parameters} = page.request.parameters;  // one answer is explained, whatever top_k
  const a = page.data.answers[page.answer];
  const attribution = {method: page.attr.method};
  if (a && a.end > a.start) attribution.span = [a.start, a.end];
  return {input_data: page.request.input_data, parameters, attribution};
}

function cancelAttribution() {
  page.attr.seq++;
  if (page.attr.abort) page.attr.abort.abort();
  page.attr.abort = null;
}

async function attribute() {
  if (!page.data) return;
  page.attr.on = true;
  cancelAttribution();
  const seq = page.attr.seq;
  const abort = page.attr.abort = new AbortController();
  const a = page.data.answers[page.answer];
  const what = a && a.answer ? `“${a.answer}”` : "the best answer";
  const method = page.attr.method;
  $("attr-run").disabled = true;
  $("attr-view").classList.add("stale");
  const cost = {ig: " (a forward and a backward pass per step, for the start and for the end)",
                smoothgrad: " (a forward and a backward pass per noisy copy)"}[method] || "";
  setStatus(`Computing ${METHODS[method]} for ${what}${cost}…`, "busy", "attr-status");
  try {
    const t0 = performance.now();
    const data = await postJSON("/v1/attributions", attributionBody(), abort.signal);
    if (seq !== page.attr.seq) return;  // the reader asked for something else meanwhile
    page.attr.data = data;
    drawAttributions();
    const name = METHODS[data.method];
    setStatus(`${name[0].toUpperCase() + name.slice(1)}: ${((performance.now() - t0) / 1000).toFixed(2)} s, `
              + `${data.server_seconds.toFixed(2)} s of it in the server.`, "ok", "attr-status");
  } catch (e) {
    if (seq !== page.attr.seq) return;
    page.attr.data = null;  // no stale colours under a refusal
    drawAttributions();
    setStatus(e instanceof PageError ? e.message : `Something went wrong in the page: ${e.message}`, "error", "attr-status");
  } finally {
    if (seq === page.attr.seq) {
      page.attr.abort = null;
      $("attr-run").disabled = false;
      $("attr-view").classList.remove("stale");
    }
  }
}

function attributionWindow(data, k) {
  // One window's attributions: the response itself for a one-window context, else its `windows` entry.
  if (!data.windows) return k === (data.window || 0) ? data : null;
  return data.windows.find((w) => w.window === k) || null;
}

function divergingRGB(t) {
  // t in [-1, 1]: purple (negative) - white - green (positive), linear, so that the largest |score| is the
  // most saturated.
  const [r, g, b] = t >= 0 ? [27, 120, 55] : [118, 42, 131];
  const u = Math.min(1, Math.abs(t));
  return [Math.round(255 - u * (255 - r)), Math.round(255 - u * (255 - g)), Math.round(255 - u * (255 - b))];
}

const signed = (v, digits = 3) => (v > 0 ? "+" : v < 0 ? "−" : "") + Math.abs(v).toFixed(digits);
const signedExp = (v) => (v < 0 ? "−" : "+") + Math.abs(v).toExponential(2);
const quoted = (t) => `“${t}”`;

function drawAttributions() {
  const data = page.attr.data;
  const view = $("attr-view");
  const side = page.attr.side;
  for (const s of ["start", "end"]) $(`attr-${s}`).setAttribute("aria-pressed", String(s === side));
  view.hidden = !data;
  if (!data) return;
  const k = page.data.window;
  const w = attributionWindow(data, k);
  const box = $("attr-tokens");
  box.replaceChildren();
  view.dataset.method = data.method;
  view.dataset.side = side;
  if (!w) {
    $("attr-target").textContent = `The server sent no attributions for window ${k + 1}.`;
    for (const id of ["attr-top", "attr-delta", "attr-scale"]) $(id).textContent = "";
    return;
  }
  const values = w[side];
  const text = (i) => w.sequence_ids[i] !== null;  // a question or context token
  const maxAbs = Math.max(0, ...values.filter((_, i) => text(i)).map(Math.abs)) || 1;
  const target = w.target[side];
  w.tokens.forEach((t, i) => {
    const chip = tokenChip(w, i, {"data-value": values[i], title: `token ${i}: ${t}\n`
      + `attribution to the start ${signed(w.start[i], 4)}, to the end ${signed(w.end[i], 4)}`
      + (w.raw_start ? `\nbefore dividing by the norm: ${signed(w.raw_start[i], 4)}, ${signed(w.raw_end[i], 4)}` : "")});
    if (text(i)) {
      const rgb = divergingRGB(values[i] / maxAbs);
      chip.style.background = `rgb(${rgb.join(",")})`;
      chip.style.color = Math.abs(values[i]) / maxAbs > 0.6 ? "#fff" : "";
    }
    if (i === target) chip.classList.add("target");
    box.append(chip);
  });

  const n = data.windows ? data.windows.length : 1;
  const where = n > 1 ? ` in window ${k + 1} of ${n}` : "";
  const answer = data.answer === "" ? "the empty answer ([CLS])" : quoted(data.answer);
  $("attr-target").textContent = (w.target.holds_answer
    ? `Explaining ${answer}${where}: its ${side} token ${quoted(w.tokens[target])} (token ${target}), `
    : `Window ${k + 1} of ${n} does not hold ${answer}: explaining its own best span instead, whose ${side} token is `
      + `${quoted(w.tokens[target])} (token ${target}), `)
    + `by ${METHODS[data.method]}${data.method === "ig" ? ` (${data.settings.n_steps} steps)` : ""}.`;
  $("attr-scale").textContent = `${signed(-maxAbs)} · 0 · ${signed(maxAbs)}: ` + (data.method === "rollout"
    ? `the share of the ${side} token's last vector that flows from each token (never negative)`
    : `green raises the ${side} logit, purple lowers it`);
  const strongest = values.map((v, i) => [v, i]).filter(([, i]) => text(i))
    .sort((x, y) => Math.abs(y[0]) - Math.abs(x[0])).slice(0, 5);
  $("attr-top").textContent = "Strongest: " + strongest.map(([v, i]) => `${quoted(w.tokens[i])} ${signed(v)}`).join(" · ");
  const delta = $("attr-delta");
  delta.hidden = w.delta_start === undefined;
  delta.dataset.start = delta.hidden ? "" : w.delta_start;
  delta.dataset.end = delta.hidden ? "" : w.delta_end;
  delta.textContent = delta.hidden ? "" : `Convergence delta: start ${signedExp(w.delta_start)}, `
    + `end ${signedExp(w.delta_end)} (the raw attributions' sum minus the logit's change from the baseline `
    + `to the input: near 0, the ${data.settings.n_steps} steps were enough).`;
}

function pickSide(side) {
  page.attr.side = side;
  drawAttributions();
}

function pickMethod() {
  page.attr.method = $("attr-method").value;
  if (page.attr.on) attribute();
}

// --- interactions -------------------------------------------------------------------------------------

function pickWindow(k) {
  const query = {window: k};
  if (page.data.attention_layers.length < page.data.model.n_layers) query.layer = page.layer;
  page.hover = null;
  reload(query, `Loading window ${k + 1}…`);
}

function pickLayer() {
  page.layer = Number($("layer").value);
  if (page.data.attention_layers.includes(page.layer)) {
    drawAttention();
  } else {
    drawAttention();
    reload({window: page.data.window, layer: page.layer}, `Loading the attention of layer ${page.layer}…`);
  }
}

function pickHead() {
  const v = $("head").value;
  page.head = v === "all" ? "all" : Number(v);
  drawAttention();
}

async function showModel() {
  try {
    const resp = await fetch("/health");
    const h = await resp.json();
    $("model-info").textContent = `Model: ${h.model}${h.revision ? " @ " + h.revision : ""}.`;
  } catch (e) {
    $("model-info").textContent = "The server does not answer /health: is npbert serve running?";
  }
}

window.addEventListener("error", (ev) => setStatus(`Something went wrong in the page: ${ev.message}`, "error"));
window.addEventListener("unhandledrejection", (ev) => setStatus(`Something went wrong in the page: ${ev.reason}`, "error"));
document.addEventListener("DOMContentLoaded", () => {
  $("ask-form").addEventListener("submit", ask);
  $("toggle-probs").addEventListener("click", () => { page.showProbs = !page.showProbs; drawTokens(); });
  $("layer").addEventListener("change", pickLayer);
  $("head").addEventListener("change", pickHead);
  $("attr-run").addEventListener("click", attribute);
  page.attr.method = $("attr-method").value;  // a reloaded page may keep the reader's choice
  $("attr-method").addEventListener("change", pickMethod);
  $("attr-start").addEventListener("click", () => pickSide("start"));
  $("attr-end").addEventListener("click", () => pickSide("end"));
  showModel();
});
