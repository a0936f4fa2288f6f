// What the operator's two pages share, loaded before their own scripts (app.js: the inspection
// page; review.js: the review page): the API key kept for the browser tab, calls to the service
// and its error bodies, the error box, and the class colours, swatches and box labels as the
// overlay draws them. Both pages carry the same settings field (#api-key) and error box (#error
// with #error-status, #error-code and #error-message).
// A classic script that defines one frozen global, PCB, and nothing else.
// Plain JS, no framework, no network access beyond this service. Every string that comes from
// the service goes in through textContent or a canvas fillText, never as markup.
"use strict";

(() => {
  const KEY_STORAGE = "pcb-inspect.api-key";
  const FALLBACK_COLOR = "#808080";

  const $ = (id) => document.getElementById(id);

  // --- the API key and calls to the service -------------------------------------------------
  // Fills the key field from the tab's storage and keeps what is typed there (this tab only).
  // onPause runs once typing pauses for delayMs: a new key may see what the old one could not.
  function keepApiKey(delayMs, onPause) {
    const input = $("api-key");
    input.value = sessionStorage.getItem(KEY_STORAGE) || "";
    let timer = null;
    input.addEventListener("input", () => {
      const key = input.value.trim();
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
      clearTimeout(timer);
      timer = setTimeout(onPause, delayMs);
    });
  }

  function authHeaders() {
    const key = $("api-key").value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  // Reads an API error body; falls back to the status line when a proxy answered instead.
  async function errorOf(resp) {
    try {
      const body = await resp.json();
      if (body && body.error) return [String(body.error.code), String(body.error.message)];
    } catch (_) { /* not JSON */ }
    return [`http_${resp.status}`, resp.statusText || "The service answered with an error."];
  }

  // fetch with the key; never throws: {ok, status, resp} or {ok: false, status, code, message}.
  async function api(path, init = {}) {
    let resp;
    try {
      resp = await fetch(path, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
    } catch (err) {
      return {
        ok: false, status: 0, code: "network_error",
        message: `Could not reach the service (${err.message}).`,
      };
    }
    if (resp.ok) return { ok: true, status: resp.status, resp };
    const [code, message] = await errorOf(resp);
    return { ok: false, status: resp.status, code, message };
  }

  // api, and the answer's JSON as body; a body that is not JSON is {ok: false, "bad_response"}.
  async function apiJson(path, init) {
    const r = await api(path, init);
    if (!r.ok) return r;
    try {
      return { ...r, body: await r.resp.json() };
    } catch (err) {
      return { ok: false, status: r.status, code: "bad_response", message: err.message };
    }
  }

  // The error box: the HTTP status (0: "No response"), the API's code and message, as text.
  // A 401 opens the settings, where the key goes. The page says the rest (title, status line).
  function showError(status, code, message) {
    $("error-status").textContent = status ? `HTTP ${status}` : "No response";
    $("error-code").textContent = code;
    $("error-message").textContent = message;
    const box = $("error");
    box.dataset.status = String(status);
    box.hidden = false;
    if (status === 401) $("api-key").closest("details").open = true;
  }

  // --- class colours ------------------------------------------------------------------------
  // Class colours in class-id order, from the server (generated from render.py's palette).
  // paletteReady settles once they are read, or could not be (then every class is grey).
  let palette = [];
  const paletteReady = fetch("/static/palette.json")
    .then((r) => (r.ok ? r.json() : { colors: [] }))
    .then((p) => { palette = p.colors || []; })
    .catch(() => { palette = []; });

  // The colour of class `name` of `classes` (the model's classes, in class-id order).
  function colorOf(classes, name) {
    const k = classes.indexOf(name);
    return (k >= 0 && palette[k % palette.length]) || FALLBACK_COLOR;
  }

  function hexToRgb(hex) {
    const n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  // Black or white text, whichever reads better on the class colour.
  function textOn(hex) {
    const [r, g, b] = hexToRgb(hex);
    return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#000" : "#fff";
  }

  function swatch(color) {
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = color; // CSSOM, not a style attribute: allowed by the CSP
    return sw;
  }

  // --- boxes on the board -------------------------------------------------------------------
  // Line widths and fonts in screen pixels, whatever the image's size on screen: object-fit:
  // contain letterboxes the canvas, so the tighter side sets the on-screen scale. Sets the
  // label font on ctx and returns the pen that strokeBox and drawLabel draw with.
  function pen(ctx, width, height) {
    const canvas = ctx.canvas;
    const scale = Math.max(width / Math.max(1, canvas.clientWidth || width),
      height / Math.max(1, canvas.clientHeight || height));
    const line = Math.max(1, 2 * scale);
    const font = Math.max(10, Math.round(14 * scale));
    ctx.font = `bold ${font}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    return { width, height, line, font };
  }

  // A box [x0, y0, x1, y1] (max exclusive) in its class colour, just outside the defect;
  // thicker when it is the one highlighted.
  function strokeBox(ctx, p, bbox, color, hot) {
    const [x0, y0, x1, y1] = bbox;
    ctx.lineWidth = hot ? p.line * 2.5 : p.line;
    ctx.strokeStyle = color;
    ctx.strokeRect(x0 - 2, y0 - 2, x1 - x0 + 3, y1 - y0 + 3);
  }

  // --- labels that do not cover each other --------------------------------------------------
  // Each label goes outside its box, at the first place that covers no other label and no
  // box: above, below, right, left of the box; then further up or down, joined to the box by
  // a leader line whose path avoids labels and boxes where it can. Where nothing is free (a
  // board crowded edge to edge), the place that covers the least, labels before boxes.
  // app/inference/render.py (place_labels) places the service's overlay labels the same way.
  const LABEL_STEPS = 12; // how far (in label heights) a label may move away from its box

  function overlap(a, b) {
    const w = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
    const h = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
    return w > 0 && h > 0 ? w * h : 0;
  }

  const covered = (rect, others) => others.reduce((s, r) => s + overlap(rect, r), 0);

  // Candidate [x, y, leader] of a w x h label for box [x0, y0, x1, y1], nearest first.
  function labelCandidates(bbox, w, h, gap) {
    const [x0, y0, x1, y1] = bbox;
    const left = x0 - 2;
    const right = x1 + 1 - w;
    const above = y0 - 2 - gap - h;
    const below = y1 + 1 + gap;
    const out = [
      [left, above, false], [left, below, false], [right, above, false], [right, below, false],
      [x1 + 1 + gap, y0 - 2, false], [x0 - 2 - gap - w, y0 - 2, false],
    ];
    for (let k = 1; k <= LABEL_STEPS; k += 1) {
      const dy = k * (h + gap);
      out.push([left, above - dy, true], [left, below + dy, true],
        [right, above - dy, true], [right, below + dy, true]);
    }
    return out;
  }

  // A leader line, as a 3 px wide [x, y, w, h]: straight up or down from the label to the box.
  function leaderPath(place, bbox) {
    const [x0, y0, x1, y1] = bbox;
    const bx = Math.min(Math.max(place.x + Math.floor(place.w / 2), x0), x1);
    if (place.y + place.h <= y0) {
      return [bx - 1, place.y + place.h, 3, Math.max(0, y0 - 2 - place.y - place.h)];
    }
    return [bx - 1, y1 + 1, 3, Math.max(0, place.y - y1 - 1)];
  }

  // Where each label goes: items are {bbox, label}; returns [{x, y, w, h, leader}] in the
  // same order. Uses the label font already set on ctx (pen()).
  function placeLabels(ctx, p, items) {
    const { width, height, line, font } = p;
    const gap = line + 1;
    const h = font + 4;
    const frames = items.map(({ bbox: [x0, y0, x1, y1] }) => [x0 - 2, y0 - 2, x1 - x0 + 4,
      y1 - y0 + 4]);
    const placed = [];
    const lines = [];
    return items.map(({ bbox, label }, k) => {
      const w = Math.min(width, Math.ceil(ctx.measureText(label).width) + 6);
      const others = frames.filter((_, i) => i !== k);
      let best = null;
      for (const [cx, cy, leader] of labelCandidates(bbox, w, h, gap)) {
        const x = Math.min(Math.max(0, cx), Math.max(0, width - w));
        const y = Math.min(Math.max(0, cy), Math.max(0, height - h));
        if (y !== cy && leader) continue; // pushed back by the edge: a nearer place tried it
        const rect = [x, y, w, h];
        const place = { x, y, w, h, leader };
        const path = leader ? leaderPath(place, bbox) : null;
        // In order of what matters: no label over a label, then none over a box, then none
        // over a leader line, then leader lines crossing as little as they can.
        let cost = 1000 * covered(rect, placed) + 100 * covered(rect, frames)
          + 10 * covered(rect, lines);
        if (path) cost += covered(path, placed) + covered(path, others);
        if (best === null || cost < best.cost) best = { ...place, cost, path };
        if (cost === 0) break;
      }
      placed.push([best.x, best.y, best.w, best.h]);
      if (best.path) lines.push(best.path);
      return best;
    });
  }

  // Draws the labels of items {bbox, color, label} (after all the boxes, so no box is drawn
  // over a label; leader lines first, so none is drawn over a label); returns where they went.
  function drawLabels(ctx, p, items) {
    const places = placeLabels(ctx, p, items);
    items.forEach(({ color }, i) => {
      const { path } = places[i];
      if (!path) return;
      ctx.strokeStyle = color;
      ctx.lineWidth = p.line;
      ctx.beginPath();
      ctx.moveTo(path[0] + 1.5, path[1]);
      ctx.lineTo(path[0] + 1.5, path[1] + path[3]);
      ctx.stroke();
    });
    items.forEach(({ color, label }, i) => {
      const { x, y, w, h } = places[i];
      ctx.fillStyle = color;
      ctx.fillRect(x, y, w, h);
      ctx.fillStyle = textOn(color);
      ctx.fillText(label, x + 3, y + 2);
    });
    return places;
  }

  // One box's label (no others to avoid).
  function drawLabel(ctx, p, bbox, color, label) {
    return drawLabels(ctx, p, [{ bbox, color, label }])[0];
  }

  // --- panels ------------------------------------------------------------------------------
  // The boards of a panel (a product recipe's units), each with its own verdict; a board
  // without a recipe is one unit, itself, and shows nothing more.
  function panelUnits(inspection) {
    const units = Array.isArray(inspection.units) ? inspection.units : [];
    return inspection.recipe || units.length > 1 ? units : [];
  }

  // The heading of a panel's list of boards.
  function unitsTitle(inspection) {
    const r = inspection.recipe;
    return r ? `Boards (recipe ${r.product} rev. ${r.revision})` : "Boards";
  }

  // One board of a panel as a list item: position, identifier, verdict and its defects, which
  // the page calls `defectWord` ("defects", "calls").
  function unitItem(u, defectWord) {
    const li = document.createElement("li");
    li.dataset.verdict = u.verdict;
    li.dataset.position = String(u.position);
    const ids = u.defect_ids.length ? ` (${defectWord} ${u.defect_ids.join(", ")})` : "";
    li.textContent = `${u.position}${u.identifier ? ` ${u.identifier}` : ""}: ` +
      `${u.verdict.toUpperCase()}${ids}`;
    return li;
  }

  // A board of a panel framed inside its box (max exclusive) in its verdict's colour, with its
  // position, identifier and verdict in its top-left corner.
  function frameUnit(ctx, p, u) {
    const [x0, y0, x1, y1] = u.bbox;
    const color = u.verdict === "fail" ? "#dc0000" : "#009600";
    ctx.lineWidth = 2 * p.line;
    ctx.strokeStyle = color;
    ctx.strokeRect(x0 + p.line, y0 + p.line, x1 - x0 - 2 * p.line, y1 - y0 - 2 * p.line);
    ctx.font = `bold ${p.font}px system-ui, sans-serif`;
    ctx.fillStyle = color;
    ctx.textBaseline = "top";
    ctx.fillText(`${u.position}${u.identifier ? ` ${u.identifier}` : ""} ` +
      `${u.verdict.toUpperCase()}`, x0 + 4 * p.line, y0 + 4 * p.line);
  }

  window.PCB = Object.freeze({
    keepApiKey, authHeaders, errorOf, api, apiJson, showError,
    paletteReady, colorOf, hexToRgb, swatch,
    pen, strokeBox, drawLabel, drawLabels, placeLabels,
    panelUnits, unitsTitle, unitItem, frameUnit,
  });
})();
