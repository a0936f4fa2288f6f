// The inspection page: pick or drop a board image, POST it to /predict, draw the result.
// Optionally against a golden board: one uploaded with each request ("template") or one
// stored on the service ("product"), never both.
// Plain JS, no framework, no network access beyond this service. What it shares with the
// review page (the API key, the error box, class colours, box labels) is common.js's PCB.
"use strict";

(() => {
  const MASK_ALPHA = 0.65; // as render.py: 35 % board + 65 % class colour

  const $ = (id) => document.getElementById(id);
  const ui = {
    drop: $("drop"),
    file: $("file"),
    refDrop: $("ref-drop"),
    refFile: $("ref-file"),
    refState: $("ref-state"),
    refClear: $("ref-clear"),
    product: $("product"),
    productHelp: $("product-help"),
    threshold: $("threshold"),
    minArea: $("min-area"),
    pxPerMm: $("px-per-mm"),
    status: $("status"),
    error: $("error"),
    results: $("results"),
    verdict: $("verdict"),
    boardName: $("board-name"),
    defectCount: $("defect-count"),
    defectArea: $("defect-area"),
    modelName: $("model-name"),
    modelModeFact: $("model-mode-fact"),
    modelMode: $("model-mode"),
    referenceFact: $("reference-fact"),
    reference: $("reference"),
    alignmentFact: $("alignment-fact"),
    alignment: $("alignment"),
    unitsFact: $("units-fact"),
    unitsTitle: $("units-title"),
    units: $("units"),
    canvas: $("canvas"),
    legend: $("legend"),
    tbody: document.querySelector("#defects tbody"),
    noDefects: $("no-defects"),
  };

  // What is on screen, kept to redraw with a highlighted defect.
  let view = null;
  let busy = false;
  // The uploaded golden board (a File), or null. A stored one is ui.product's value instead.
  let referenceFile = null;
  const REF_NONE = ui.refState.textContent.replace(/\s+/g, " ").trim();

  function setState(state) {
    document.body.dataset.state = state;
    ui.results.setAttribute("aria-busy", String(state === "busy"));
  }

  function say(text) {
    ui.status.textContent = text;
  }

  // The error box (a 401 opens the settings), the status line, and the page's state.
  function showError(status, code, message) {
    PCB.showError(status, code, message);
    say(`Error: ${code}: ${message}`);
    setState("error");
  }

  function clearResults() {
    // A stale verdict next to a new board would be dangerous on a line: wipe it first.
    view = null;
    ui.results.hidden = true;
    ui.error.hidden = true;
    ui.tbody.replaceChildren();
    ui.legend.replaceChildren();
    ui.canvas.removeAttribute("data-rendered");
    ui.modelModeFact.hidden = true;
    ui.referenceFact.hidden = true;
    ui.alignmentFact.hidden = true;
  }

  // --- the golden board ---------------------------------------------------------------------
  function setReference(file) {
    if (!file) return;
    referenceFile = file;
    ui.product.value = ""; // one golden board at a time: the upload replaces a stored one
    ui.refState.textContent = `${file.name} (${(file.size / 1024).toFixed(0)} KB)`;
    ui.refDrop.classList.add("chosen");
    ui.refClear.hidden = false;
    say(`Golden board ${file.name} chosen: each board is compared with it.`);
  }

  function clearReference(announce) {
    const had = referenceFile !== null;
    referenceFile = null;
    ui.refState.textContent = REF_NONE;
    ui.refDrop.classList.remove("chosen");
    ui.refClear.hidden = true;
    if (had && announce) say("Golden board cleared: boards are inspected alone.");
  }

  // Fills the product picker from GET /v1/golden-boards, keeping the current choice if it
  // is still stored. A failure leaves "none" usable and says why under the picker.
  async function loadProducts() {
    const chosen = ui.product.value;
    let boards;
    try {
      const resp = await fetch("/v1/golden-boards", { headers: PCB.authHeaders() });
      if (!resp.ok) {
        const [code, message] = await PCB.errorOf(resp);
        ui.productHelp.textContent =
          `Stored golden boards could not be listed (HTTP ${resp.status} ${code}: ${message})`;
        return;
      }
      const body = await resp.json();
      // {count, boards: [...]}; a bare list too, should a proxy flatten it.
      boards = Array.isArray(body) ? body : (body && body.boards) || [];
    } catch (err) {
      ui.productHelp.textContent = `Stored golden boards could not be listed (${err.message}).`;
      return;
    }
    const options = [new Option("none", "")];
    for (const b of boards) {
      const size = b.width && b.height ? ` (${b.width}×${b.height})` : "";
      options.push(new Option(`${b.product}${size}`, b.product));
    }
    ui.product.replaceChildren(...options);
    ui.product.value = boards.some((b) => b.product === chosen) ? chosen : "";
    ui.productHelp.textContent = boards.length
      ? `${boards.length} stored golden board${boards.length === 1 ? "" : "s"}.`
      : "No golden boards stored on the service.";
  }

  function queryParams() {
    const params = new URLSearchParams({ mask: "png" });
    const add = (name, input) => {
      const v = input.value.trim();
      if (v !== "") params.set(name, v);
    };
    add("threshold", ui.threshold);
    add("min_area_px", ui.minArea);
    add("pixels_per_mm", ui.pxPerMm);
    if (ui.product.value && !referenceFile) params.set("product", ui.product.value);
    return params;
  }

  async function post(file, params) {
    const form = new FormData();
    form.append("file", file, file.name);
    if (referenceFile) form.append("template", referenceFile, referenceFile.name);
    return fetch(`/predict?${params}`, { method: "POST", body: form, headers: PCB.authHeaders() });
  }

  async function inspect(file) {
    if (!file || busy) return;
    busy = true;
    clearResults();
    setState("busy");
    ui.drop.setAttribute("aria-disabled", "true");
    // What this inspection is compared with, fixed now: the picker may change while it runs.
    const sent = { reference: referenceFile ? referenceFile.name : null };
    const against = referenceFile ? ` against ${referenceFile.name}`
      : ui.product.value ? ` against product ${ui.product.value}` : "";
    say(`Inspecting ${file.name} (${(file.size / 1024).toFixed(0)} KB)${against}…`);
    try {
      let resp;
      try {
        resp = await post(file, queryParams());
      } catch (err) {
        showError(0, "network_error", `Could not reach the inspection service (${err.message}).`);
        return;
      }
      if (!resp.ok) {
        const [code, message] = await PCB.errorOf(resp);
        showError(resp.status, code, message);
        if (code === "unknown_product") loadProducts(); // deleted meanwhile: refresh the list
        return;
      }
      const result = await resp.json();
      await PCB.paletteReady;
      await show(file, result, sent);
    } finally {
      busy = false;
      ui.drop.removeAttribute("aria-disabled");
    }
  }

  async function decodeMask(b64) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    // No colour conversion: the PNG's grey levels are class ids and must arrive unchanged.
    return createImageBitmap(new Blob([bytes], { type: "image/png" }), {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  }

  // The mask as an RGBA layer: each class id painted in its colour, background transparent.
  function maskLayer(maskBitmap, classes) {
    const { width, height } = maskBitmap;
    const layer = document.createElement("canvas");
    layer.width = width;
    layer.height = height;
    const ctx = layer.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(maskBitmap, 0, 0);
    const img = ctx.getImageData(0, 0, width, height);
    const px = img.data;
    const rgb = classes.map((name) => PCB.hexToRgb(PCB.colorOf(classes, name)));
    const alpha = Math.round(255 * MASK_ALPHA);
    for (let i = 0; i < px.length; i += 4) {
      const k = px[i];
      if (k === 0) {
        px[i + 3] = 0;
      } else {
        const c = rgb[k - 1] || [128, 128, 128];
        px[i] = c[0];
        px[i + 1] = c[1];
        px[i + 2] = c[2];
        px[i + 3] = alpha;
      }
    }
    ctx.putImageData(img, 0, 0);
    return layer;
  }

  async function boardBitmap(file, result) {
    try {
      const bmp = await createImageBitmap(file);
      // The service applies EXIF orientation as the browser does; if the sizes still
      // disagree, the boxes would land in the wrong place, so use the service's rendering.
      if (bmp.width === result.image.width && bmp.height === result.image.height) return bmp;
    } catch (_) { /* e.g. TIFF: browsers do not decode it */ }
    return null;
  }

  // The service's own overlay, for images the browser cannot show (one more inference).
  async function serviceOverlay(file) {
    const params = queryParams();
    params.set("render", "overlay");
    params.delete("mask");
    const resp = await post(file, params);
    if (!resp.ok) return null;
    return createImageBitmap(await resp.blob());
  }

  async function show(file, result, sent) {
    const classes = Object.keys(result.summary.by_class); // class-id order, every class
    const board = await boardBitmap(file, result);
    let layer = null;
    let rendered = null;
    if (board) {
      if (result.mask && result.mask.encoding === "png") {
        layer = maskLayer(await decodeMask(result.mask.data), classes);
      }
    } else {
      rendered = await serviceOverlay(file);
    }
    view = {
      file, result, classes, board, layer, rendered, highlight: null,
      reference: sent.reference,
    };

    const s = result.summary;
    const fail = s.verdict === "fail";
    ui.verdict.className = `verdict ${fail ? "fail" : "pass"}`;
    ui.verdict.textContent = fail ? "✗ FAIL" : "✓ PASS";
    ui.boardName.textContent = `${file.name} (${result.image.width}×${result.image.height})`;
    ui.defectCount.textContent = String(s.defect_count);
    ui.defectArea.textContent = `${s.defect_area_mm2.toFixed(3)} mm²`;
    ui.modelName.textContent = `${result.model.name} ${result.model.version}`;
    showReference(result);
    showUnits(result);
    fillTable(result, classes);
    fillLegend(classes);
    ui.results.hidden = false;
    draw();
    setState("done");
    const note = board ? "" : " (this browser cannot show this image type: service rendering)";
    const ref = result.reference;
    const against = !ref ? "" : ref.source === "product" ? ` against product ${ref.product}`
      : ` against ${sent.reference || "the uploaded golden board"}`;
    say(`${file.name}${against}: ${fail ? "FAIL" : "PASS"}, ${s.defect_count} ` +
        `defect${s.defect_count === 1 ? "" : "s"}${note}.`);
  }

  // Signed, at the digits shown: what rounds to zero is "0.0", never "−0.0" or "+0.0".
  const signed = (v, digits) => {
    const shown = Math.abs(v).toFixed(digits);
    if (Number(shown) === 0) return shown;
    return `${v > 0 ? "+" : "−"}${shown}`;
  };

  // The model's mode, where the golden board came from, and how it was aligned to the board.
  function showReference(result) {
    const mode = result.model && result.model.mode;
    ui.modelModeFact.hidden = !mode;
    ui.modelMode.textContent = mode === "pair" ? "pair (board + golden board)"
      : mode === "single" ? "single (board alone)" : String(mode || "");
    const ref = result.reference;
    ui.referenceFact.hidden = !ref;
    ui.alignmentFact.hidden = !(ref && ref.alignment);
    if (!ref) return;
    const sha = ref.sha256 ? `, sha256 ${ref.sha256.slice(0, 12)}` : "";
    ui.reference.textContent = ref.source === "product"
      ? `product ${ref.product}${sha}`
      : `uploaded${view && view.reference ? ` ${view.reference}` : ""}${sha}`;
    ui.reference.dataset.source = ref.source || "";
    // What the model found on a stored golden board when it was stored: the operator must see
    // that a comparison with a suspect golden board may be wrong, without asking elsewhere.
    const n = ref.warnings;
    ui.reference.dataset.warnings = n == null ? "" : String(n);
    if (n > 0 || (n == null && ref.source === "product")) {
      const note = document.createElement("span");
      note.className = n > 0 ? "golden-warnings" : "golden-unchecked";
      note.textContent = n > 0
        ? ` (${n} warning${n === 1 ? "" : "s"} on this golden board when it was stored: ` +
          "the comparison may be wrong there)"
        : " (not checked when it was stored)";
      ui.reference.append(note);
    }
    const a = ref.alignment;
    if (!a) return;
    Object.assign(ui.alignment.dataset, {
      dx: a.dx, dy: a.dy, rotationDeg: a.rotation_deg, score: a.score,
    });
    ui.alignment.textContent = `dx ${signed(a.dx, 1)} px, dy ${signed(a.dy, 1)} px, ` +
      `rotation ${signed(a.rotation_deg, 2)}°, score ${a.score.toFixed(3)}`;
  }

  function showUnits(result) {
    const units = PCB.panelUnits(result);
    ui.unitsFact.hidden = units.length === 0;
    ui.unitsTitle.textContent = PCB.unitsTitle(result);
    const items = units.map((u) => PCB.unitItem(u, "defects"));
    for (const d of Array.isArray(result.ignored) ? result.ignored : []) {
      const li = document.createElement("li");
      li.dataset.verdict = "ignored";
      li.textContent = `defect ${d.id} ${d.class} set aside` +
        (d.zone ? ` by zone ${d.zone}` : "") + ` (${d.reason})`;
      items.push(li);
    }
    ui.units.replaceChildren(...items);
  }

  function fillTable(result, classes) {
    const rows = result.defects.map((d) => {
      const tr = document.createElement("tr");
      tr.tabIndex = 0;
      tr.dataset.id = d.id;
      tr.dataset.class = d.class;
      tr.dataset.confidence = d.confidence;
      tr.dataset.areaMm2 = d.area_mm2;
      tr.dataset.areaPx = d.area_px;
      const cells = [
        String(d.id),
        null,
        `${(d.confidence * 100).toFixed(1)} %`,
        d.area_mm2.toFixed(4),
        `${Math.round(d.centroid[0])}, ${Math.round(d.centroid[1])}`,
      ];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        if (i === 1) {
          td.append(PCB.swatch(PCB.colorOf(classes, d.class)), document.createTextNode(d.class));
        } else {
          td.textContent = text;
        }
        if (i === 2 || i === 3) td.className = "num";
        tr.append(td);
      });
      const on = () => { if (view) { view.highlight = d.id; draw(); } };
      const off = () => { if (view && view.highlight === d.id) { view.highlight = null; draw(); } };
      tr.addEventListener("mouseenter", on);
      tr.addEventListener("focus", on);
      tr.addEventListener("mouseleave", off);
      tr.addEventListener("blur", off);
      return tr;
    });
    ui.tbody.replaceChildren(...rows);
    ui.noDefects.hidden = rows.length > 0;
  }

  function fillLegend(classes) {
    const items = classes.map((name) => {
      const span = document.createElement("span");
      span.className = "legend-item";
      span.append(PCB.swatch(PCB.colorOf(classes, name)), document.createTextNode(name));
      return span;
    });
    ui.legend.replaceChildren(...items);
  }

  function draw() {
    if (!view) return;
    const { result, classes, board, layer, rendered, highlight } = view;
    const canvas = ui.canvas;
    const ctx = canvas.getContext("2d");
    if (rendered) {
      canvas.width = rendered.width;
      canvas.height = rendered.height;
      ctx.drawImage(rendered, 0, 0);
      canvas.dataset.rendered = "service";
      return;
    }
    const { width, height } = result.image;
    canvas.width = width;
    canvas.height = height;
    ctx.drawImage(board, 0, 0);
    if (layer) ctx.drawImage(layer, 0, 0);
    const p = PCB.pen(ctx, width, height);
    const { line } = p;
    // A panel's boards, framed inside their boxes in their verdict's colour; the defects a
    // zone set aside in thin grey: seen, not counted.
    for (const u of PCB.panelUnits(result)) PCB.frameUnit(ctx, p, u);
    for (const d of Array.isArray(result.ignored) ? result.ignored : []) {
      const [x0, y0, x1, y1] = d.bbox;
      ctx.lineWidth = line;
      ctx.strokeStyle = "#969696";
      ctx.strokeRect(x0 - 2, y0 - 2, x1 - x0 + 3, y1 - y0 + 3);
    }
    const labels = [];
    for (const d of result.defects) {
      const color = PCB.colorOf(classes, d.class);
      const [x0, y0, x1, y1] = d.bbox;
      const hot = highlight === d.id;
      PCB.strokeBox(ctx, p, d.bbox, color, hot);
      if (hot) {
        ctx.strokeStyle = "#fff";
        ctx.lineWidth = line;
        ctx.strokeRect(x0 - 2 - 2 * line, y0 - 2 - 2 * line, x1 - x0 + 3 + 4 * line,
          y1 - y0 + 3 + 4 * line);
      }
      labels.push({ bbox: d.bbox, color, label: `${d.id} ${d.class} ${d.confidence.toFixed(2)}` });
    }
    // After every box, placed so that no label covers another (or a box, where there is room).
    PCB.drawLabels(ctx, p, labels);
    canvas.dataset.rendered = "true";
  }

  // --- wiring -------------------------------------------------------------------------------
  ui.drop.addEventListener("click", () => { if (!busy) ui.file.click(); });
  ui.drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault(); // Space would scroll the page
      if (!busy) ui.file.click();
    }
  });
  // A file chosen with `input` or dropped on `zone` goes to `onFile`.
  function takeFiles(zone, input, onFile) {
    input.addEventListener("change", () => {
      const f = input.files[0];
      input.value = ""; // so choosing the same file again takes it again
      onFile(f);
    });
    ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    }));
    ["dragleave", "dragend"].forEach((type) => zone.addEventListener(type, () => {
      zone.classList.remove("over");
    }));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      const files = e.dataTransfer && e.dataTransfer.files;
      if (files && files.length) onFile(files[0]);
    });
  }
  takeFiles(ui.drop, ui.file, inspect);
  ui.refDrop.addEventListener("click", () => ui.refFile.click());
  ui.refDrop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      ui.refFile.click();
    } else if (e.key === "Delete" || e.key === "Backspace") {
      e.preventDefault();
      clearReference(true);
    }
  });
  takeFiles(ui.refDrop, ui.refFile, setReference);
  ui.refClear.addEventListener("click", () => {
    clearReference(true);
    ui.refDrop.focus(); // the button disappears: keep the keyboard user's place
  });
  ui.product.addEventListener("change", () => {
    if (ui.product.value) {
      clearReference(false);
      say(`Golden board of product ${ui.product.value} chosen: each board is compared with it.`);
    }
  });

  // A file dropped beside the target would make the browser navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  // A new key may see the list the old one could not: list again once typing pauses.
  PCB.keepApiKey(400, loadProducts);
  loadProducts();
  // Canvas line widths depend on the size on screen.
  window.addEventListener("resize", () => draw());
})();
