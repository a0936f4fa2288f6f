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

  // The box's label on its colour: above the box, or below it where there is no room above.
  function drawLabel(ctx, p, bbox, color, label) {
    const [x0, y0, , y1] = bbox;
    const { width, height, line, font } = p;
    const tw = ctx.measureText(label).width + 6;
    const th = font + 4;
    const lx = Math.min(Math.max(0, x0 - 2), Math.max(0, width - tw));
    let ly = y0 - 2 - th - line;
    if (ly < 0) ly = Math.min(y1 + 2 + line, height - th);
    ctx.fillStyle = color;
    ctx.fillRect(lx, ly, tw, th);
    ctx.fillStyle = textOn(color);
    ctx.fillText(label, lx + 3, ly + 2);
  }

  window.PCB = Object.freeze({
    keepApiKey, authHeaders, errorOf, api, apiJson, showError,
    paletteReady, colorOf, hexToRgb, swatch,
    pen, strokeBox, drawLabel,
  });
})();
