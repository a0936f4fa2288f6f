// The review page: the queue of failed boards not yet reviewed, reviewed from the keyboard
// over the overlay, and a small dashboard drawn as SVG from GET /v1/stats.
// Plain JS, no framework, no network access beyond this service. Every string that comes
// from the service (classes, serials, error messages) goes in through textContent, a canvas
// fillText or an SVG text node, never as markup. What it shares with the inspection page (the
// API key, calls to the service, the error box, class colours, box labels) is common.js's PCB.
"use strict";

(() => {
  const PAGE_SIZE = 25;
  const REFRESH_MS = 30_000;
  const MIN_BOX_PX = 2; // a smaller drag is a slip of the hand, not a box
  // After a change, the wait before the service is asked for the boards' verdicts: a burst of
  // keys makes one request.
  const PREVIEW_DELAY_MS = 120;

  const $ = (id) => document.getElementById(id);

  // The dashboard's charts, stamped from the page's one chart template, in its place:
  // [id, caption, what it shows (its label until it is drawn)].
  const CHARTS = [
    ["chart-boards", "Boards per hour", "Boards per hour"],
    ["chart-fail", "Fail rate per hour", "Fail rate per hour"],
    ["chart-false", "False-call rate per class (reviewed calls)", "False-call rate per class"],
  ];
  const chartTemplate = $("chart-template");
  chartTemplate.replaceWith(...CHARTS.map(([id, caption, label]) => {
    const figure = document.importNode(chartTemplate.content.firstElementChild, true);
    const title = figure.querySelector("figcaption");
    title.id = `${id}-title`;
    title.textContent = caption;
    const chart = figure.querySelector("svg");
    chart.id = id;
    chart.setAttribute("aria-label", `${label}: not loaded yet`);
    return figure;
  }));

  const ui = {
    status: $("status"),
    error: $("error"),
    errorTitle: $("error-title"),
    errorHint: $("error-hint"),
    tabQueue: $("tab-queue"),
    tabDashboard: $("tab-dashboard"),
    queueView: $("queue-view"),
    queueList: $("queue-list"),
    queueEmpty: $("queue-empty"),
    queueMore: $("queue-more"),
    queueReload: $("queue-reload"),
    boardArea: $("board-area"),
    canvas: $("review-canvas"),
    imageNote: $("image-note"),
    classKeys: $("class-keys"),
    mode: $("mode"),
    inspId: $("insp-id"),
    inspTime: $("insp-time"),
    inspSerial: $("insp-serial"),
    inspWhere: $("insp-where"),
    inspModel: $("insp-model"),
    inspUnitsFact: $("insp-units-fact"),
    inspUnitsTitle: $("insp-units-title"),
    inspUnits: $("insp-units"),
    inspReviewedFact: $("insp-reviewed-fact"),
    inspReviewed: $("insp-reviewed"),
    tbody: document.querySelector("#review-defects tbody"),
    submit: $("submit"),
    result: $("review-result"),
    help: $("help"),
    helpClose: $("help-close"),
    dashboardView: $("dashboard-view"),
    dashRange: $("dash-range"),
    dashRefresh: $("dash-refresh"),
    dashUpdated: $("dash-updated"),
    totalBoards: $("total-boards"),
    totalFailed: $("total-failed"),
    totalFailRate: $("total-fail-rate"),
    totalReviewed: $("total-reviewed"),
    chartBoards: $("chart-boards"),
    chartBoardsTitle: $("chart-boards-title"),
    chartFail: $("chart-fail"),
    chartFailTitle: $("chart-fail-title"),
    chartFalse: $("chart-false"),
    classTbody: document.querySelector("#class-table tbody"),
  };
  // The SVG namespace, taken from the page's own charts rather than spelled out here.
  const SVG_NS = ui.chartBoards.namespaceURI;

  let classes = []; // the model's classes in class-id order: number key k picks classes[k - 1]
  let classesProblem = null; // why the class list is missing, if it is

  // The loaded part of the queue; items stay listed after review (ticked) until a reload.
  const queue = { items: [], cursor: null, exhausted: false, loading: false, index: -1 };
  // The open board: the inspection, its image, and the operator's calls so far.
  let board = null;
  // A pending two-step action: {kind: "reclassify"}, {kind: "draw"} (waiting for the drag),
  // {kind: "drawing", start, end} or {kind: "missed-class"} (a box waiting for its class).
  let mode = null;
  let openToken = 0; // only the latest board opened may fill the screen (n pressed quickly)
  let submitting = false;
  let view = "queue";
  let statsLoading = false;
  let previewTimer = null;

  const OUTCOME_TEXT = {
    confirmed: "✓ confirmed",
    false_call: "✗ false call",
    reclassified: "↻ reclassified",
  };

  // --- helpers ------------------------------------------------------------------------------
  function say(text) {
    ui.status.textContent = text;
  }

  function setMode(text) {
    ui.mode.textContent = text;
  }

  function hintFor(status) {
    if (status === 401) {
      return "The service needs an API key: enter it under Settings (kept for this tab only).";
    }
    if (status === 403) {
      return "This API key's role may not do this: reviewing needs a key with role review " +
        "or admin.";
    }
    return "";
  }

  // The error box (a 401 opens the settings) with what failed and what to do about it.
  function showError(what, r) {
    ui.errorTitle.textContent = `${what} failed`;
    const hint = hintFor(r.status);
    ui.errorHint.textContent = hint;
    ui.errorHint.hidden = !hint;
    PCB.showError(r.status, r.code, r.message);
    say(`${what} failed: ${r.code}: ${r.message}`);
  }

  function clearError() {
    ui.error.hidden = true;
  }

  // A class's colour: the overlay's, by its place in the model's classes.
  const colorOf = (name) => PCB.colorOf(classes, name);

  const when = (iso) => {
    const t = new Date(iso);
    return Number.isNaN(t.getTime()) ? String(iso) : t.toLocaleString();
  };

  function pct(rate) {
    if (rate === null || rate === undefined) return "–";
    const v = rate * 100;
    return `${Number.isInteger(v) ? v : v.toFixed(1)} %`;
  }

  const boardName = (insp) => insp.serial || insp.id;

  // --- classes ------------------------------------------------------------------------------
  // The dashboard waits for it: its class bars take the classes' colours.
  let classesLoading = Promise.resolve();
  function loadClasses() {
    classesLoading = readClasses();
    return classesLoading;
  }

  async function readClasses() {
    const r = await PCB.apiJson("/v1/model");
    await PCB.paletteReady;
    if (r.ok && Array.isArray(r.body.classes)) {
      classes = r.body.classes.map(String);
      classesProblem = null;
    } else {
      classesProblem = r.ok ? "the model reports no classes"
        : `HTTP ${r.status} ${r.code}: ${r.message}`;
    }
    fillClassKeys();
    draw();
  }

  // The number keys under the board: 1 open, 2 short, ...
  function fillClassKeys() {
    if (classesProblem) {
      ui.classKeys.textContent = `The class list could not be read (${classesProblem}): ` +
        "reclassifying and missed boxes need it.";
      return;
    }
    const items = classes.slice(0, 9).map((name, k) => {
      const span = document.createElement("span");
      span.className = "legend-item";
      const kbd = document.createElement("kbd");
      kbd.textContent = String(k + 1);
      span.append(kbd, PCB.swatch(colorOf(name)), document.createTextNode(name));
      return span;
    });
    ui.classKeys.replaceChildren(...items);
  }

  // --- the queue ----------------------------------------------------------------------------
  async function loadQueue(reset) {
    if (queue.loading) return false;
    if (reset) {
      Object.assign(queue, { items: [], cursor: null, exhausted: false, index: -1 });
    }
    if (queue.exhausted) return false;
    queue.loading = true;
    ui.queueMore.disabled = true;
    const params = new URLSearchParams({
      verdict: "fail", reviewed: "false", limit: String(PAGE_SIZE),
    });
    if (queue.cursor) params.set("cursor", queue.cursor);
    try {
      const r = await PCB.apiJson(`/v1/inspections?${params}`);
      if (!r.ok) {
        showError("Listing the review queue", r);
        return false;
      }
      const items = Array.isArray(r.body.items) ? r.body.items : [];
      const listed = new Set(queue.items.map((it) => it.insp.id));
      const fresh = items.filter((insp) => !listed.has(insp.id));
      for (const insp of fresh) queue.items.push({ insp, review: null });
      queue.cursor = r.body.next_cursor || null;
      queue.exhausted = !queue.cursor;
      renderQueue();
      return fresh.length > 0;
    } finally {
      queue.loading = false;
      ui.queueMore.disabled = false;
    }
  }

  function renderQueue() {
    const rows = queue.items.map((item, i) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "queue-item";
      button.dataset.id = item.insp.id;
      button.dataset.reviewed = String(Boolean(item.review));
      if (i === queue.index) button.setAttribute("aria-current", "true");
      const name = document.createElement("span");
      name.className = "queue-name";
      name.textContent = boardName(item.insp);
      const meta = document.createElement("span");
      meta.className = "queue-meta";
      const n = item.insp.defect_count ?? (item.insp.defects || []).length;
      meta.textContent = `${when(item.insp.created_at)} · ${n} call${n === 1 ? "" : "s"}` +
        (item.insp.product ? ` · ${item.insp.product}` : "");
      button.append(name, meta);
      if (item.review) {
        const done = document.createElement("span");
        done.className = "queue-done";
        done.textContent = "✓ reviewed";
        button.append(done);
      }
      button.addEventListener("click", () => openBoard(i));
      li.append(button);
      return li;
    });
    ui.queueList.replaceChildren(...rows);
    ui.queueEmpty.hidden = queue.items.length > 0 || queue.loading;
    ui.queueMore.hidden = queue.exhausted;
    const current = ui.queueList.querySelector('[aria-current="true"]');
    if (current) current.scrollIntoView({ block: "nearest" });
  }

  // Opens the index-th board of the loaded queue: its record (with earlier reviews) and image.
  async function openBoard(index) {
    if (index < 0 || index >= queue.items.length) return;
    const token = ++openToken;
    delete document.body.dataset.queue;
    queue.index = index;
    mode = null;
    renderQueue();
    const item = queue.items[index];
    const id = encodeURIComponent(item.insp.id);
    say(`Opening ${boardName(item.insp)}…`);
    const r = await PCB.apiJson(`/v1/inspections/${id}`);
    if (token !== openToken) return;
    if (!r.ok) {
      showError("Opening the board", r);
      board = null;
      renderBoard();
      return;
    }
    const insp = r.body;
    let bitmap = null;
    let note = "";
    const blank = "the calls are drawn on a blank board of its size.";
    if (insp.image_path === null) {
      note = `This board's image was not kept (PCB_IMAGES_KEEP) or has expired: ${blank}`;
    } else {
      const img = await PCB.api(`/v1/inspections/${id}/image`);
      if (token !== openToken) return;
      if (img.ok) {
        try {
          bitmap = await createImageBitmap(await img.resp.blob());
        } catch (_) {
          note = `This browser cannot show the kept image (e.g. TIFF): ${blank}`;
        }
      } else if (img.code === "image_not_kept") {
        note = `This board's image was not kept (PCB_IMAGES_KEEP) or has expired: ${blank}`;
      } else {
        note = `The image could not be loaded (HTTP ${img.status} ${img.code}: ` +
          `${img.message}): ${blank}`;
      }
      if (token !== openToken) return;
      // Boxes are in the service's pixel grid: a differently sized picture would misplace them.
      if (bitmap && (bitmap.width !== insp.width || bitmap.height !== insp.height)) {
        bitmap = null;
        note = `The kept image is not the size the board was inspected at: ${blank}`;
      }
    }
    board = {
      insp, bitmap, note, outcomes: new Map(), missed: [], selected: 0, touched: false,
      order: [], zoom: null,
      // Each board's verdict after the review as the service computes it (a panel only).
      preview: { text: null, seq: 0, state: "idle", verdicts: new Map(), error: "" },
    };
    // A board reviewed before (opened again with P): start from its latest review.
    const reviews = Array.isArray(insp.reviews) ? insp.reviews : [];
    if (reviews.length) applyReview(reviews[reviews.length - 1]);
    if (reviews.length && !item.review) item.review = reviews[reviews.length - 1];
    clearError();
    renderQueue();
    renderBoard();
    const n = insp.defects.length;
    say(`${boardName(insp)}: ${n} call${n === 1 ? "" : "s"} to review` +
      `${bitmap ? "" : " (no image)"}. Board ${index + 1} of ${queue.items.length}` +
      `${queue.exhausted ? "" : "+"}.`);
    // Keys go to the page unless the operator is typing (e.g. the API key).
    const active = document.activeElement;
    if (!active || !active.matches("input, select, textarea")) {
      ui.boardArea.focus({ preventScroll: true });
    }
  }

  function applyReview(review) {
    const body = review.body || {};
    for (const o of body.defects || []) {
      board.outcomes.set(o.defect_id, { outcome: o.outcome, cls: o.class || null });
    }
    board.missed = (body.missed || []).map((m) => ({ bbox: m.bbox.slice(), cls: m.class }));
  }

  // Moves to the next (dir 1) or previous (-1) board of the queue, loading a page if needed.
  async function step(dir) {
    let next = queue.index + dir;
    if (next >= queue.items.length && !queue.exhausted) await loadQueue(false);
    if (next < 0) next = queue.items.length ? 0 : -1;
    if (next >= 0 && next < queue.items.length && next !== queue.index) {
      await openBoard(next);
    } else {
      say(dir > 0 ? "No next board: this is the last in the queue." : "This is the first board.");
    }
  }

  // After a submit: the next board not reviewed yet, after this one first, then from the top.
  async function nextUnreviewed() {
    const open = (from) => queue.items.findIndex((it, i) => i > from && !it.review);
    let next = open(queue.index);
    // Page on until a board not reviewed turns up (a failed load ends the search).
    while (next < 0 && !queue.exhausted) {
      const before = queue.items.length;
      await loadQueue(false);
      if (queue.items.length === before) break;
      next = open(queue.index);
    }
    if (next < 0) next = open(-1);
    if (next >= 0) {
      await openBoard(next);
      return;
    }
    // Nothing left: the board just reviewed stays on screen, with who reviewed it and when.
    document.body.dataset.queue = "done";
    renderQueue();
    renderBoard();
    say("Every board in the queue is reviewed. Reload the queue for boards inspected since.");
  }

  // --- the board's calls --------------------------------------------------------------------
  // The selection runs over the model's calls, then the missed boxes drawn by the operator.
  function selectionCount() {
    return board ? board.insp.defects.length + board.missed.length : 0;
  }

  function selectedDefect() {
    if (!board) return null;
    return board.insp.defects[board.selected] || null;
  }

  function selectedMissed() {
    if (!board) return -1;
    const j = board.selected - board.insp.defects.length;
    return j >= 0 && j < board.missed.length ? j : -1;
  }

  function select(index) {
    if (!board || !selectionCount()) return;
    board.selected = Math.max(0, Math.min(selectionCount() - 1, index));
    renderBoard();
  }

  // The previous (dir -1) or next (1) call or box in the order the table lists them.
  function selectStep(dir) {
    const { order } = board;
    if (!order.length) return;
    const at = order.indexOf(board.selected);
    select(order[at < 0 ? 0 : Math.max(0, Math.min(order.length - 1, at + dir))]);
  }

  function describeSelected() {
    const d = selectedDefect();
    if (d) {
      const o = board.outcomes.get(d.id);
      return `Call ${d.id} (${d.class}, ${(d.confidence * 100).toFixed(1)} %): ` +
        `${o ? outcomeText(o) : "confirmed by default"}.`;
    }
    const j = selectedMissed();
    if (j >= 0) {
      const m = board.missed[j];
      return `Missed box M${j + 1}: ${m.cls || "no class yet, press 1–" +
        Math.min(9, classes.length)}.`;
    }
    return "";
  }

  function outcomeText(o) {
    return o.outcome === "reclassified" ? `${OUTCOME_TEXT.reclassified} → ${o.cls}`
      : OUTCOME_TEXT[o.outcome] || o.outcome;
  }

  function mark(outcome) {
    const d = selectedDefect();
    if (!d) {
      if (board && selectedMissed() >= 0) {
        setMode("A missed box has no outcome: press a number for its class, Delete to remove.");
      }
      return;
    }
    board.outcomes.set(d.id, { outcome, cls: null });
    board.touched = true;
    advance(d);
  }

  // After a call is marked: the next call, so that a board is reviewed with one key per call.
  function advance(d) {
    const order = board.order;
    const said = describeSelected();
    const next = order.slice(order.indexOf(board.insp.defects.indexOf(d)) + 1)
      .find((k) => k < board.insp.defects.length);
    const last = next === undefined;
    if (!last) board.selected = next;
    renderBoard();
    setMode(last ? `${said} That was the last call: Enter submits.`
      : `${said} Next: ${describeSelected()}`);
  }

  // Whether the class list is read; if not, says that `what` cannot be done without it.
  function classesReady(what) {
    if (!classes.length) setMode(`The class list is not available: cannot ${what}.`);
    return classes.length > 0;
  }

  function startReclassify() {
    const d = selectedDefect();
    if (!d || !classesReady("reclassify")) return;
    mode = { kind: "reclassify" };
    setMode(`Reclassify call ${d.id} (${d.class}): press 1–${Math.min(9, classes.length)} ` +
      "for its class, Esc to cancel.");
    draw();
  }

  function startDraw() {
    if (!board || !classesReady("add a missed defect")) return;
    mode = { kind: "draw" };
    ui.canvas.classList.add("drawing");
    setMode("Drag a box around the missed defect on the board; Esc cancels.");
  }

  function cancelMode(announce) {
    const had = mode;
    mode = null;
    ui.canvas.classList.remove("drawing");
    if (had && announce) setMode("Cancelled.");
    draw();
  }

  // A number key: the class for a reclassification, or for the selected missed box.
  function pickClass(k) {
    if (!board) return;
    const cls = classes[k - 1];
    if (!cls) {
      setMode(`There is no class ${k}: the keys are 1–${Math.min(9, classes.length)}.`);
      return;
    }
    const d = selectedDefect();
    if (mode && mode.kind === "reclassify" && d) {
      mode = null;
      // The class the model gave is simply a confirmation.
      board.outcomes.set(d.id, cls === d.class ? { outcome: "confirmed", cls: null }
        : { outcome: "reclassified", cls });
      board.touched = true;
      advance(d);
      return;
    }
    const j = selectedMissed();
    if (j >= 0) {
      mode = null;
      board.missed[j].cls = cls;
      board.touched = true;
      renderBoard();
      setMode(`Missed box M${j + 1}: ${cls}.`);
      return;
    }
    setMode("Press R first to reclassify the selected call, or M to draw a missed defect.");
  }

  function removeMissed() {
    const j = selectedMissed();
    if (j < 0) return;
    board.missed.splice(j, 1);
    board.touched = true;
    mode = null;
    board.selected = Math.min(board.selected, Math.max(0, selectionCount() - 1));
    renderBoard();
    setMode(`Missed box M${j + 1} removed.`);
  }

  // Every call gets an outcome: one left unmarked is sent as confirmed (shown as such).
  // `missed`: the missed boxes to send (all of them by default).
  function reviewBody(missed = board.missed) {
    return {
      defects: board.insp.defects.map((d) => {
        const o = board.outcomes.get(d.id) || { outcome: "confirmed" };
        return o.outcome === "reclassified"
          ? { defect_id: d.id, outcome: o.outcome, class: o.cls }
          : { defect_id: d.id, outcome: o.outcome };
      }),
      missed: missed.map((m) => ({ bbox: m.bbox, class: m.cls })),
    };
  }

  // --- a panel, board by board --------------------------------------------------------------
  // A panel (a product recipe's units) is reviewed board by board: the table lists each
  // board's calls under it, in panel order, then the calls on no board, then those the zones
  // set aside (for audit only). Which board a drawn box lands on, and each board's verdict
  // after the review, come from the service (POST .../review/preview), which places boxes by
  // the rule it places the calls by: the page has no copy of that rule.
  function boardUnits() {
    return board ? [...PCB.panelUnits(board.insp)].sort((a, b) => a.position - b.position) : [];
  }

  // The table's groups, in order: [{unit, calls, missed}] per board, then {outside} (calls and
  // boxes on no board) and {pending} (boxes not placed yet: no class, or the service not asked
  // yet); calls are defect indexes, missed ones indexes into board.missed. One group, without
  // a unit, for a board that is not a panel.
  function groupsOf() {
    const all = board.insp.defects.map((_, i) => i);
    const units = boardUnits();
    if (!units.length) return [{ calls: all, missed: board.missed.map((_, j) => j) }];
    const index = new Map(board.insp.defects.map((d, i) => [d.id, i]));
    const placed = new Set();
    const groups = units.map((unit) => {
      const calls = unit.defect_ids.filter((id) => index.has(id)).map((id) => index.get(id));
      calls.forEach((i) => placed.add(i));
      return { unit, calls, missed: [] };
    });
    const outside = { outside: true, calls: all.filter((i) => !placed.has(i)), missed: [] };
    const pending = { pending: true, calls: [], missed: [] };
    board.missed.forEach((m, j) => {
      const g = m.unit === null ? outside
        : groups.find((x) => m.unit !== undefined && x.unit.position === m.unit) || pending;
      g.missed.push(j);
    });
    return [...groups, outside, pending];
  }

  function groupOfSelected() {
    const d = board.insp.defects.length;
    return groupsOf().find((g) => g.unit && (g.calls.includes(board.selected) ||
      g.missed.includes(board.selected - d))) || null;
  }

  // Asks the service, after a short wait, what the review as it stands makes of each board.
  // Only the latest request may fill the screen; boxes without a class are not sent yet.
  function schedulePreview() {
    if (!board || !boardUnits().length) return;
    const target = board;
    const sent = target.missed.filter((m) => m.cls);
    const text = JSON.stringify(reviewBody(sent));
    if (text === target.preview.text) return;
    target.preview.text = text;
    target.preview.state = "pending";
    const seq = ++target.preview.seq;
    clearTimeout(previewTimer);
    previewTimer = setTimeout(async () => {
      const r = await PCB.apiJson(
        `/v1/inspections/${encodeURIComponent(target.insp.id)}/review/preview`,
        { method: "POST", headers: { "Content-Type": "application/json" }, body: text });
      if (board !== target || seq !== target.preview.seq) return;
      if (!r.ok) {
        target.preview.state = "error";
        target.preview.error = `HTTP ${r.status} ${r.code}: ${r.message}`;
      } else {
        target.preview.state = "ready";
        target.preview.verdicts = new Map(r.body.units.map((u) => [u.position,
          u.reviewed_verdict]));
        for (const u of r.body.units) for (const k of u.missed) sent[k].unit = u.position;
        for (const k of r.body.outside.missed) sent[k].unit = null;
      }
      renderBoard();
    }, PREVIEW_DELAY_MS);
  }

  // Marks every call of a board's group with `outcome`.
  function markGroup(g, outcome) {
    if (!g || !g.unit) return;
    if (mode) cancelMode(false);
    for (const i of g.calls) {
      board.outcomes.set(board.insp.defects[i].id, { outcome, cls: null });
    }
    board.touched = true;
    renderBoard();
    const n = g.calls.length;
    setMode(`Board ${g.unit.position}: ${n} call${n === 1 ? "" : "s"} ` +
      `${outcome === "false_call" ? "marked false" : "confirmed"}.`);
  }

  // Zooms the board on one unit of the panel, or (the same one again, or null) shows it all.
  function zoomTo(position) {
    board.zoom = position === null || board.zoom === position ? null : position;
    renderBoard();
    setMode(board.zoom === null ? "The whole panel."
      : `Zoomed to board ${board.zoom}: Z or its name again shows the whole panel.`);
  }

  // How many canvas pixels an image pixel takes: 1 for the whole board; zoomed, enough for the
  // view to fill a large screen (whole numbers keep the camera's pixels square).
  function zoomScale(w, h) {
    return board.zoom === null ? 1 : Math.max(1, Math.min(16, Math.floor(1600 / Math.max(w, h))));
  }

  // The part of the image the canvas shows: the zoomed unit with a margin, else all of it.
  function viewOf() {
    const { width, height } = board.insp;
    const u = board.zoom === null ? null : boardUnits().find((x) => x.position === board.zoom);
    if (!u) return [0, 0, width, height];
    const [x0, y0, x1, y1] = u.bbox;
    const pad = Math.max(8, Math.round(0.06 * Math.max(x1 - x0, y1 - y0)));
    return [Math.max(0, x0 - pad), Math.max(0, y0 - pad), Math.min(width, x1 + pad),
      Math.min(height, y1 + pad)];
  }

  // The stored review in a POST answer: the review itself, or an inspection carrying it.
  function reviewOf(body) {
    if (!body || typeof body !== "object") return null;
    if ("reviewer" in body && "digest" in body) return body;
    if (body.review && typeof body.review === "object") return body.review;
    if (Array.isArray(body.reviews) && body.reviews.length) {
      return body.reviews[body.reviews.length - 1];
    }
    return null;
  }

  async function submit() {
    if (!board || submitting) return;
    if (mode) cancelMode(false);
    const unclassed = board.missed.findIndex((m) => !m.cls);
    if (unclassed >= 0) {
      select(board.insp.defects.length + unclassed);
      mode = { kind: "missed-class" };
      setMode(`Missed box M${unclassed + 1} needs a class: press 1–` +
        `${Math.min(9, classes.length)}, or Delete to remove it.`);
      return;
    }
    const { insp } = board;
    const item = queue.items[queue.index];
    const body = reviewBody();
    submitting = true;
    ui.submit.disabled = true;
    document.body.dataset.state = "busy";
    say(`Submitting the review of ${boardName(insp)}…`);
    try {
      const r = await PCB.apiJson(`/v1/inspections/${encodeURIComponent(insp.id)}/review`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (!r.ok) {
        showError("Submitting the review", r);
        document.body.dataset.state = "error";
        return;
      }
      clearError();
      let review = reviewOf(r.body);
      if (!review) {
        // An answer without the review: read it back from the record.
        const again = await PCB.apiJson(`/v1/inspections/${encodeURIComponent(insp.id)}`);
        const reviews = again.ok && Array.isArray(again.body.reviews) ? again.body.reviews : [];
        review = reviews[reviews.length - 1] || { reviewer: null, created_at: null };
      }
      if (item && item.insp.id === insp.id) item.review = review;
      showResult(insp, review, r.status, body);
      document.body.dataset.state = "submitted";
      await nextUnreviewed();
    } finally {
      submitting = false;
      ui.submit.disabled = !board;
    }
  }

  function showResult(insp, review, status, body) {
    const count = (o) => body.defects.filter((d) => d.outcome === o).length;
    const who = review.reviewer || "anonymous (no API key)";
    const at = review.created_at ? when(review.created_at) : "just now";
    ui.result.textContent = `${boardName(insp)}: review saved by ${who} at ${at}` +
      `${status === 200 ? " (identical to the one already saved: nothing changed)" : ""}. ` +
      `${count("confirmed")} confirmed, ${count("false_call")} false ` +
      `call${count("false_call") === 1 ? "" : "s"}, ${count("reclassified")} reclassified, ` +
      `${body.missed.length} missed.`;
    const units = PCB.panelUnits(insp).length && Array.isArray(review.units) ? review.units
      : [];
    if (units.length) {
      ui.result.textContent += ` Boards after review: ${units.map((u) =>
        `${u.position} ${u.reviewed_verdict.toUpperCase()}`).join(", ")}.`;
    }
    Object.assign(ui.result.dataset, {
      inspectionId: insp.id, reviewer: review.reviewer || "", createdAt: review.created_at || "",
      status: String(status),
    });
    ui.result.hidden = false;
  }

  // --- drawing ------------------------------------------------------------------------------
  function renderBoard() {
    ui.submit.disabled = !board || submitting;
    ui.boardArea.dataset.inspectionId = board ? board.insp.id : "";
    if (!board) {
      for (const el of [ui.inspId, ui.inspTime, ui.inspSerial, ui.inspWhere, ui.inspModel]) {
        el.textContent = "–";
      }
      ui.inspReviewedFact.hidden = true;
      ui.inspUnitsFact.hidden = true;
      ui.tbody.replaceChildren();
      ui.imageNote.hidden = true;
      setMode("");
      draw();
      return;
    }
    const { insp } = board;
    ui.inspId.textContent = insp.id;
    ui.inspTime.textContent = when(insp.created_at);
    ui.inspSerial.textContent = insp.serial || "–";
    ui.inspWhere.textContent = [insp.product, insp.line, insp.station]
      .map((v) => v || "–").join(" / ");
    ui.inspModel.textContent = `${insp.model_name} ${insp.model_version}` +
      (insp.model_mode ? ` (${insp.model_mode})` : "");
    const reviews = Array.isArray(insp.reviews) ? insp.reviews : [];
    const item = queue.items[queue.index];
    const last = (item && item.review) || reviews[reviews.length - 1];
    ui.inspReviewedFact.hidden = !last;
    if (last) {
      ui.inspReviewed.textContent = `by ${last.reviewer || "anonymous"} at ` +
        `${last.created_at ? when(last.created_at) : "–"}`;
    }
    fillUnits(insp);
    ui.imageNote.textContent = board.note;
    ui.imageNote.hidden = !board.note;
    schedulePreview();
    fillTable();
    draw();
  }

  function fillUnits(insp) {
    const units = PCB.panelUnits(insp);
    ui.inspUnitsFact.hidden = units.length === 0;
    ui.inspUnitsTitle.textContent = PCB.unitsTitle(insp);
    ui.inspUnits.replaceChildren(...units.map((u) => PCB.unitItem(u, "calls")));
    const ignored = Array.isArray(insp.ignored) ? insp.ignored.length : 0;
    if (ignored) {
      const li = document.createElement("li");
      li.textContent = `${ignored} call${ignored === 1 ? "" : "s"} set aside by zones`;
      ui.inspUnits.append(li);
    }
  }

  function fillTable() {
    const groups = groupsOf();
    const n = board.insp.defects.length;
    board.order = groups.flatMap((g) => [...g.calls, ...g.missed.map((j) => n + j)]);
    const panel = boardUnits().length > 0;
    const rows = [];
    for (const g of groups) {
      if (panel) {
        if (!g.unit && !g.calls.length && !g.missed.length) continue;
        rows.push(g.unit ? unitRow(g) : noteRow(g.outside ? "On no board of the panel"
          : "Drawn boxes: placed on a board once they have a class",
        g.outside ? "outside" : "pending"));
      }
      for (const i of g.calls) rows.push(callRow(i));
      for (const j of g.missed) rows.push(missedRow(j));
    }
    if (panel) rows.push(...ignoredRows());
    ui.tbody.replaceChildren(...rows);
    const current = ui.tbody.querySelector('[aria-current="true"]');
    if (current) current.scrollIntoView({ block: "nearest" });
  }

  function callRow(i) {
    const d = board.insp.defects[i];
    const o = board.outcomes.get(d.id);
    const cls = o && o.outcome === "reclassified" ? o.cls : d.class;
    return row(i, String(d.id), d.class, `${(d.confidence * 100).toFixed(1)} %`,
      o ? outcomeText(o) : "confirmed (default)", o ? o.outcome : "default", cls);
  }

  function missedRow(j) {
    const m = board.missed[j];
    return row(board.insp.defects.length + j, `M${j + 1}`, m.cls || "?", "",
      m.cls ? "+ missed" : "+ missed: needs a class", "missed", m.cls || "");
  }

  // A board's heading row: its name (a button that zooms to it), the model's verdict, the
  // verdict after the review as it stands, and its one-click outcomes.
  function unitRow(g) {
    const u = g.unit;
    const tr = document.createElement("tr");
    tr.className = "unit-head";
    tr.dataset.position = String(u.position);
    tr.dataset.verdict = u.verdict;
    const { state, verdicts, error } = board.preview;
    const reviewed = verdicts.get(u.position);
    tr.dataset.reviewed = state === "ready" && reviewed ? reviewed : state;
    const th = document.createElement("th");
    th.scope = "rowgroup";
    th.colSpan = 4;
    const name = button(`Board ${u.position}${u.identifier ? ` ${u.identifier}` : ""}`,
      "unit-zoom", () => zoomTo(u.position));
    name.setAttribute("aria-pressed", String(board.zoom === u.position));
    name.title = board.zoom === u.position ? "Show the whole panel" : "Zoom to this board";
    const aoi = document.createElement("span");
    aoi.className = "unit-verdict";
    aoi.dataset.verdict = u.verdict;
    aoi.textContent = `AOI ${u.verdict.toUpperCase()}`;
    const after = document.createElement("span");
    after.className = "unit-reviewed";
    after.dataset.verdict = tr.dataset.reviewed;
    after.textContent = `Review ${reviewed ? reviewed.toUpperCase() : "–"}` +
      (state === "pending" ? " …" : state === "error" ? " ?" : "");
    if (state === "error") after.title = `The boards' verdicts could not be read: ${error}`;
    const actions = document.createElement("span");
    actions.className = "unit-actions";
    const none = g.calls.length === 0;
    const allFalse = button("All false calls", "unit-false", () => markGroup(g, "false_call"));
    const allTrue = button("Confirm all", "unit-confirm", () => markGroup(g, "confirmed"));
    allFalse.disabled = none;
    allTrue.disabled = none;
    actions.append(allFalse, allTrue);
    th.append(name, " ", aoi, " ", after, actions);
    tr.append(th);
    return tr;
  }

  function button(text, className, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = text;
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      onClick();
    });
    return b;
  }

  function noteRow(text, kind) {
    const tr = document.createElement("tr");
    tr.className = `group-head group-${kind}`;
    const th = document.createElement("th");
    th.scope = "rowgroup";
    th.colSpan = 4;
    th.textContent = text;
    tr.append(th);
    return tr;
  }

  const SET_ASIDE = {
    zone: "in an ignore zone", class: "class ignored in this zone",
    min_area_px: "below the minimum area", min_confidence: "below the minimum confidence",
  };

  // The calls the recipe's zones set aside: listed for audit, never reviewed.
  function ignoredRows() {
    const ignored = Array.isArray(board.insp.ignored) ? board.insp.ignored : [];
    if (!ignored.length) return [];
    return [noteRow(`Set aside by the recipe (${ignored.length}): for audit, not reviewed`,
      "ignored"), ...ignored.map((d) => {
      const tr = document.createElement("tr");
      tr.className = "ignored-call";
      tr.dataset.defectId = String(d.id);
      tr.dataset.zone = d.zone || "";
      const cells = [String(d.id), null, `${(d.confidence * 100).toFixed(1)} %`,
        `${d.zone ? `zone ${d.zone}` : "product rule"}: ${SET_ASIDE[d.reason] || d.reason}`];
      cells.forEach((text, k) => {
        const td = document.createElement("td");
        if (k === 1) td.append(PCB.swatch(colorOf(d.class)), document.createTextNode(d.class));
        else td.textContent = text;
        if (k === 2) td.className = "num";
        tr.append(td);
      });
      return tr;
    })];
  }

  function row(index, label, cls, conf, outcome, state, finalClass) {
    const tr = document.createElement("tr");
    tr.dataset.index = String(index);
    tr.dataset.outcome = state;
    tr.dataset.class = finalClass;
    if (board.selected === index) tr.setAttribute("aria-current", "true");
    const cells = [label, null, conf, outcome];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      if (i === 1) td.append(PCB.swatch(colorOf(cls)), document.createTextNode(cls));
      else td.textContent = text;
      if (i === 2) td.className = "num";
      if (i === 3) td.className = `outcome outcome-${state}`;
      tr.append(td);
    });
    tr.addEventListener("click", () => { mode = null; select(index); });
    return tr;
  }

  function draw() {
    const canvas = ui.canvas;
    if (!board) {
      canvas.width = 640;
      canvas.height = 360;
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#e6e8eb";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      canvas.setAttribute("aria-label", "No board open");
      canvas.dataset.rendered = "empty";
      return;
    }
    const { insp, bitmap } = board;
    const { width, height } = insp;
    const [vx0, vy0, vx1, vy1] = viewOf();
    // Zoomed, the view is drawn k times larger (whole pixels, not smoothed: what the camera
    // saw), and every box is moved onto it by at(); the whole board is drawn as it is.
    const k = zoomScale(vx1 - vx0, vy1 - vy0);
    const at = (b) => [(b[0] - vx0) * k, (b[1] - vy0) * k, (b[2] - vx0) * k, (b[3] - vy0) * k];
    canvas.width = (vx1 - vx0) * k;
    canvas.height = (vy1 - vy0) * k;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    if (bitmap) {
      ctx.drawImage(bitmap, vx0, vy0, vx1 - vx0, vy1 - vy0, 0, 0, canvas.width, canvas.height);
    } else {
      ctx.fillStyle = "#3b3f46";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    }
    const geometry = PCB.pen(ctx, canvas.width, canvas.height);
    const { line } = geometry;
    // Unit frames first, inside each board's box, so the calls' boxes stay on top.
    for (const u of PCB.panelUnits(insp)) {
      PCB.frameUnit(ctx, geometry, { ...u, bbox: at(u.bbox) });
    }
    const zoomed = boardUnits().find((u) => u.position === board.zoom);
    if (zoomed) {
      // The board zoomed to: a wide frame just outside its own, dark under light.
      const [x0, y0, x1, y1] = at(zoomed.bbox);
      const pad = 3 * line;
      for (const [color, w] of [["#000", 4 * line], ["#ffd200", 2 * line]]) {
        ctx.strokeStyle = color;
        ctx.lineWidth = w;
        ctx.strokeRect(x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad);
      }
    }
    // The calls the zones set aside: thin grey dashes, no label (listed apart, for audit).
    ctx.setLineDash([2 * line, 3 * line]);
    for (const d of Array.isArray(insp.ignored) ? insp.ignored : []) {
      PCB.strokeBox(ctx, geometry, at(d.bbox), "#9aa3ad", false);
    }
    ctx.setLineDash([]);
    const labels = [];
    // Zoomed, the boxes off the view are not drawn (their labels would pile up on its edges).
    const shown = (b) => b[0] < vx1 && b[2] > vx0 && b[1] < vy1 && b[3] > vy0;
    board.insp.defects.forEach((d, i) => {
      if (!shown(d.bbox)) return;
      const o = board.outcomes.get(d.id);
      const cls = o && o.outcome === "reclassified" ? o.cls : d.class;
      const mark = !o ? "" : o.outcome === "confirmed" ? " ✓"
        : o.outcome === "false_call" ? " ✗" : " ↻";
      labels.push(box(ctx, geometry, at(d.bbox), colorOf(cls), `${d.id} ${cls}${mark}`, {
        hot: board.selected === i, dashed: o && o.outcome === "false_call",
      }));
    });
    board.missed.forEach((m, j) => {
      if (!shown(m.bbox)) return;
      labels.push(box(ctx, geometry, at(m.bbox), m.cls ? colorOf(m.cls) : "#ffffff",
        `M${j + 1} ${m.cls || "?"}`, {
          hot: board.selected === board.insp.defects.length + j, dashed: true,
        }));
    });
    // After every box, placed so that no label covers another (or a box, where there is room).
    PCB.drawLabels(ctx, geometry, labels);
    if (mode && mode.kind === "drawing") {
      const [x0, y0, x1, y1] = at(boxOf(mode.start, mode.end));
      ctx.setLineDash([4 * line, 3 * line]);
      ctx.lineWidth = line;
      ctx.strokeStyle = "#ffffff";
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      ctx.setLineDash([]);
    }
    const missed = board.missed.length;
    canvas.dataset.view = [vx0, vy0, vx1, vy1].join(",");
    canvas.setAttribute("aria-label", `${zoomed ? `Board ${zoomed.position} of ` : ""}` +
      `Board ${boardName(insp)} with ` +
      `${insp.defects.length} numbered call${insp.defects.length === 1 ? "" : "s"}` +
      `${missed ? ` and ${missed} missed box${missed === 1 ? "" : "es"}` : ""}. ` +
      describeSelected());
    canvas.dataset.rendered = bitmap ? "image" : "blank";
  }

  // Draws the box; returns its label for drawLabels.
  function box(ctx, g, bbox, color, label, { hot, dashed }) {
    const [x0, y0, x1, y1] = bbox;
    const { line } = g;
    if (dashed) ctx.setLineDash([4 * line, 3 * line]);
    PCB.strokeBox(ctx, g, bbox, color, hot);
    ctx.setLineDash([]);
    if (hot) {
      // Dark under light: the selection frame shows on copper and on bare board alike.
      const pad = 2 + 2.5 * line;
      const rect = [x0 - pad, y0 - pad, x1 - x0 + 2 * pad - 1, y1 - y0 + 2 * pad - 1];
      ctx.strokeStyle = "#000";
      ctx.lineWidth = line * 2.5;
      ctx.strokeRect(...rect);
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = line;
      ctx.strokeRect(...rect);
    }
    return { bbox, color, label };
  }

  // A pointer position in the image's pixels (the canvas is letterboxed by object-fit).
  function toImage(e) {
    const c = ui.canvas;
    const rect = c.getBoundingClientRect();
    const s = Math.min(rect.width / c.width, rect.height / c.height) || 1;
    const ox = rect.left + (rect.width - c.width * s) / 2;
    const oy = rect.top + (rect.height - c.height * s) / 2;
    // The canvas shows the image from (vx0, vy0), k canvas pixels to an image pixel.
    const [vx0, vy0, vx1, vy1] = viewOf();
    const k = zoomScale(vx1 - vx0, vy1 - vy0);
    return {
      x: vx0 + Math.max(0, Math.min(c.width, (e.clientX - ox) / s)) / k,
      y: vy0 + Math.max(0, Math.min(c.height, (e.clientY - oy) / s)) / k,
    };
  }

  // [x0, y0, x1, y1], max exclusive, inside the image: the API's box.
  function boxOf(a, b) {
    const { width, height } = board.insp;
    const x0 = Math.max(0, Math.floor(Math.min(a.x, b.x)));
    const y0 = Math.max(0, Math.floor(Math.min(a.y, b.y)));
    const x1 = Math.min(width, Math.ceil(Math.max(a.x, b.x)));
    const y1 = Math.min(height, Math.ceil(Math.max(a.y, b.y)));
    return [x0, y0, x1, y1];
  }

  // The smallest box under the pointer, for selecting with the mouse.
  function hitTest(p) {
    const boxes = [
      ...board.insp.defects.map((d, i) => [i, d.bbox]),
      ...board.missed.map((m, j) => [board.insp.defects.length + j, m.bbox]),
    ];
    let best = -1;
    let bestArea = Infinity;
    for (const [i, [x0, y0, x1, y1]] of boxes) {
      const area = (x1 - x0) * (y1 - y0);
      if (p.x >= x0 - 3 && p.x <= x1 + 3 && p.y >= y0 - 3 && p.y <= y1 + 3 && area < bestArea) {
        best = i;
        bestArea = area;
      }
    }
    return best;
  }

  ui.canvas.addEventListener("pointerdown", (e) => {
    if (!board) return;
    if (mode && mode.kind === "draw") {
      e.preventDefault();
      ui.canvas.setPointerCapture(e.pointerId);
      const p = toImage(e);
      mode = { kind: "drawing", start: p, end: p };
      draw();
      return;
    }
    const hit = hitTest(toImage(e));
    if (hit >= 0) {
      mode = null;
      select(hit);
      setMode(describeSelected());
    }
  });
  ui.canvas.addEventListener("pointermove", (e) => {
    if (!mode || mode.kind !== "drawing") return;
    mode.end = toImage(e);
    draw();
  });
  const endDrag = (e) => {
    if (!mode || mode.kind !== "drawing") return;
    mode.end = toImage(e);
    const bbox = boxOf(mode.start, mode.end);
    ui.canvas.classList.remove("drawing");
    if (bbox[2] - bbox[0] < MIN_BOX_PX || bbox[3] - bbox[1] < MIN_BOX_PX) {
      mode = { kind: "draw" };
      ui.canvas.classList.add("drawing");
      setMode("That box is too small: drag again, or Esc to cancel.");
      draw();
      return;
    }
    board.missed.push({ bbox, cls: null });
    board.touched = true;
    mode = { kind: "missed-class" };
    board.selected = board.insp.defects.length + board.missed.length - 1;
    renderBoard();
    setMode(`Missed box M${board.missed.length} drawn: press 1–` +
      `${Math.min(9, classes.length)} for its class, Delete to remove it.`);
    ui.boardArea.focus({ preventScroll: true });
  };
  ui.canvas.addEventListener("pointerup", endDrag);
  ui.canvas.addEventListener("pointercancel", () => {
    if (mode && mode.kind === "drawing") cancelMode(true);
  });

  // --- keys ---------------------------------------------------------------------------------
  document.addEventListener("keydown", (e) => {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
    if (view !== "queue" || ui.help.open) return; // the dialog handles its own keys
    const t = e.target;
    if (t instanceof HTMLElement && (t.matches("input, select, textarea") || t.isContentEditable)) {
      return;
    }
    const key = e.key;
    if (key === "?") {
      e.preventDefault();
      ui.help.showModal();
      return;
    }
    if (key === "Escape") {
      if (mode) {
        e.preventDefault();
        cancelMode(true);
      }
      return;
    }
    // Enter and Space keep their meaning on buttons and links (Load more, the queue, ...).
    if ((key === "Enter" || key === " ") && t instanceof HTMLElement &&
        t.matches("button, a, summary")) {
      return;
    }
    if (handleKey(key)) e.preventDefault();
  });

  // One key: true when it was ours (and its default, e.g. scrolling, must not happen).
  function handleKey(key) {
    if (/^[1-9]$/.test(key)) {
      if (!board) return false;
      pickClass(Number(key));
      return true;
    }
    const k = key.length === 1 ? key.toLowerCase() : key;
    const boardKeys = ["ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp", "c", "f", "r", "m", "z",
      "Delete", "Backspace", "Enter"];
    if (boardKeys.includes(k) && !board) {
      if (k === "Enter" || k.length === 1) say("No board open: press N for the next board.");
      return k.length === 1 || k === "Enter";
    }
    // Any other key ends a pending two-step action first (R then C: just confirm).
    if (mode && !(mode.kind === "drawing")) {
      mode = null;
      ui.canvas.classList.remove("drawing");
    }
    switch (k) {
      case "ArrowRight": case "ArrowDown":
        selectStep(1);
        setMode(describeSelected());
        return true;
      case "ArrowLeft": case "ArrowUp":
        selectStep(-1);
        setMode(describeSelected());
        return true;
      // Shifted, for the whole board (of a panel) the selected call is on.
      case "c":
        if (key === "C" && groupOfSelected()) markGroup(groupOfSelected(), "confirmed");
        else mark("confirmed");
        return true;
      case "f":
        if (key === "F" && groupOfSelected()) markGroup(groupOfSelected(), "false_call");
        else mark("false_call");
        return true;
      case "z": {
        const g = groupOfSelected();
        if (board.zoom !== null) zoomTo(null);
        else if (g) zoomTo(g.unit.position);
        else setMode("Z zooms to the board of the selected call: this board is not a panel.");
        return true;
      }
      case "r": startReclassify(); return true;
      case "m": startDraw(); return true;
      case "Delete": case "Backspace": removeMissed(); return true;
      case "Enter": submit(); return true;
      case "n": step(1); return true;
      case "p": step(-1); return true;
      default: return false;
    }
  }

  ui.helpClose.addEventListener("click", () => ui.help.close());
  ui.submit.addEventListener("click", () => submit());
  ui.queueMore.addEventListener("click", () => loadQueue(false));
  ui.queueReload.addEventListener("click", () => reloadQueue());

  async function reloadQueue() {
    board = null;
    renderBoard();
    say("Loading the review queue…");
    await loadQueue(true);
    if (queue.items.length) {
      await openBoard(0);
    } else {
      renderQueue();
      if (ui.error.hidden) say("No failed boards are waiting for review.");
    }
  }

  // --- the dashboard ------------------------------------------------------------------------
  const CHART = { w: 600, h: 240, left: 52, right: 12, top: 18, bottom: 42 };

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // 1, 2, 5 × 10^k at or above v: round tick values.
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
  }

  const BUCKET_MS = { hour: 3_600_000, day: 86_400_000 };

  // Every bucket of the period, the empty ones included, so that time runs evenly.
  function series(stats) {
    const step = BUCKET_MS[stats.bucket] || BUCKET_MS.hour;
    const byStart = new Map();
    for (const b of stats.buckets || []) byStart.set(new Date(b.start).getTime(), b);
    const first = Math.floor(new Date(stats.since).getTime() / step) * step;
    const end = new Date(stats.until).getTime();
    const out = [];
    if (Number.isFinite(first) && Number.isFinite(end) && (end - first) / step <= 400) {
      for (let t = first; t < end; t += step) {
        out.push(byStart.get(t) || { start: new Date(t).toISOString(), boards: 0, failed: 0,
          fail_rate: null });
        byStart.delete(t);
      }
    }
    out.push(...byStart.values()); // any the service aligned otherwise
    return out.sort((a, b) => new Date(a.start) - new Date(b.start));
  }

  function bucketLabel(start, bucket) {
    const t = new Date(start);
    return bucket === "day"
      ? t.toLocaleDateString([], { weekday: "short", day: "numeric" })
      : t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function frame(node, yMax, yFormat, xLabels) {
    const { w, h, left, right, top, bottom } = CHART;
    const plotH = h - top - bottom;
    const children = [];
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      const y = top + plotH - (plotH * i) / 4;
      children.push(svg("line", { x1: left, x2: w - right, y1: y, y2: y, class: "grid" }));
      children.push(svg("text", { x: left - 6, y: y + 4, class: "tick", "text-anchor": "end" },
        yFormat(v)));
    }
    const n = xLabels.length;
    const slot = (w - left - right) / Math.max(1, n);
    const every = Math.max(1, Math.ceil(n / 8)); // at most 8 time labels: they must not overlap
    xLabels.forEach((label, i) => {
      if (i % every) return;
      children.push(svg("text", {
        x: left + slot * (i + 0.5), y: h - bottom + 18, class: "tick", "text-anchor": "middle",
      }, label));
    });
    node.replaceChildren(...children);
    return { slot, plotH, y: (v) => top + plotH - (plotH * v) / yMax };
  }

  function drawBoards(stats, buckets) {
    const labels = buckets.map((b) => bucketLabel(b.start, stats.bucket));
    const max = niceMax(Math.max(0, ...buckets.map((b) => b.boards)));
    const f = frame(ui.chartBoards, max, (v) => (Number.isInteger(v) ? String(v) : ""), labels);
    buckets.forEach((b, i) => {
      const x = CHART.left + f.slot * i + f.slot * 0.15;
      const bw = f.slot * 0.7;
      const passed = b.boards - b.failed;
      const g = svg("g", { "data-start": b.start, "data-boards": b.boards,
        "data-failed": b.failed });
      g.append(svg("title", {}, `${labels[i]}: ${b.boards} board${b.boards === 1 ? "" : "s"}, ` +
        `${b.failed} failed`));
      // Failed at the bottom (red), passed stacked on top (green).
      if (b.failed) {
        g.append(svg("rect", { x, width: bw, y: f.y(b.failed), height: f.y(0) - f.y(b.failed),
          class: "bar-fail" }));
      }
      if (passed > 0) {
        g.append(svg("rect", { x, width: bw, y: f.y(b.boards), height: f.y(b.failed) -
          f.y(b.boards), class: "bar-pass" }));
      }
      ui.chartBoards.append(g);
    });
    const unit = stats.bucket === "day" ? "day" : "hour";
    ui.chartBoardsTitle.textContent = `Boards per ${unit} (red: failed)`;
    const busiest = buckets.reduce((a, b) => (b.boards > (a ? a.boards : 0) ? b : a), null);
    ui.chartBoards.setAttribute("aria-label", `Boards per ${unit}: ${stats.boards} ` +
      `board${stats.boards === 1 ? "" : "s"}, ${stats.failed} failed` +
      (busiest ? `; most ${busiest.boards} at ${bucketLabel(busiest.start, stats.bucket)}.`
        : "."));
  }

  function drawFailRate(stats, buckets) {
    const labels = buckets.map((b) => bucketLabel(b.start, stats.bucket));
    const f = frame(ui.chartFail, 1, (v) => `${Math.round(v * 100)} %`, labels);
    // The line breaks where a bucket has no boards: no rate there, not a rate of zero.
    let points = [];
    const runs = [];
    buckets.forEach((b, i) => {
      if (b.fail_rate === null || b.fail_rate === undefined || !b.boards) {
        if (points.length) runs.push(points);
        points = [];
        return;
      }
      points.push([CHART.left + f.slot * (i + 0.5), f.y(b.fail_rate), b, labels[i]]);
    });
    if (points.length) runs.push(points);
    for (const run of runs) {
      if (run.length > 1) {
        ui.chartFail.append(svg("polyline", {
          points: run.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "),
          class: "rate-line",
        }));
      }
      for (const [x, y, b, label] of run) {
        const dot = svg("circle", { cx: x, cy: y, r: 4, class: "rate-dot",
          "data-start": b.start, "data-rate": b.fail_rate });
        dot.append(svg("title", {}, `${label}: ${pct(b.fail_rate)} (${b.failed} of ${b.boards})`));
        ui.chartFail.append(dot);
      }
    }
    const unit = stats.bucket === "day" ? "day" : "hour";
    ui.chartFailTitle.textContent = `Fail rate per ${unit}`;
    ui.chartFail.setAttribute("aria-label", `Fail rate per ${unit}: overall ` +
      `${pct(stats.fail_rate)} (${stats.failed} of ${stats.boards} boards).`);
  }

  function drawFalseCalls(stats) {
    const rows = stats.classes || [];
    // The legend's colours: by the model's classes, or (if they could not be read) by the
    // stats' classes, which the service lists in the same class-id order.
    const order = classes.length ? classes : rows.map((c) => c.class);
    const colorOf = (name) => PCB.colorOf(order, name);
    const f = frame(ui.chartFalse, 1, (v) => `${Math.round(v * 100)} %`,
      rows.map((c) => c.class));
    const parts = [];
    rows.forEach((c, i) => {
      const x = CHART.left + f.slot * i + f.slot * 0.2;
      const bw = f.slot * 0.6;
      const cx = CHART.left + f.slot * (i + 0.5);
      const g = svg("g", { "data-class": c.class, "data-rate": c.false_call_rate ?? "" });
      if (c.false_call_rate === null || c.false_call_rate === undefined) {
        g.append(svg("text", { x: cx, y: f.y(0) - 6, class: "bar-note", "text-anchor": "middle" },
          "–"));
        g.append(svg("title", {}, `${c.class}: no reviewed calls`));
        parts.push(`${c.class} no reviewed calls`);
      } else {
        const y = f.y(c.false_call_rate);
        g.append(svg("rect", { x, width: bw, y, height: Math.max(0, f.y(0) - y),
          fill: colorOf(c.class), class: "bar-class" }));
        g.append(svg("text", { x: cx, y: y - 5, class: "bar-note", "text-anchor": "middle" },
          pct(c.false_call_rate)));
        g.append(svg("title", {}, `${c.class}: ${pct(c.false_call_rate)} false calls ` +
          `(${c.false_calls} of ${c.reviewed_calls} reviewed calls)`));
        parts.push(`${c.class} ${pct(c.false_call_rate)} (${c.false_calls} of ` +
          `${c.reviewed_calls} reviewed calls)`);
      }
      ui.chartFalse.append(g);
    });
    ui.chartFalse.setAttribute("aria-label", "False-call rate per class: " +
      (parts.length ? `${parts.join("; ")}.` : "no classes."));
    ui.classTbody.replaceChildren(...rows.map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.class = c.class;
      const cells = [c.class, c.reviewed_calls, c.confirmed, c.false_calls, c.reclassified,
        c.missed, pct(c.false_call_rate)];
      cells.forEach((v, i) => {
        const td = document.createElement("td");
        if (i === 0) td.append(PCB.swatch(colorOf(c.class)), document.createTextNode(String(v)));
        else td.textContent = String(v ?? "–");
        if (i > 0) td.className = "num";
        tr.append(td);
      });
      return tr;
    }));
  }

  async function loadStats() {
    if (statsLoading) return;
    statsLoading = true;
    const bucket = ui.dashRange.value === "7d" ? "day" : "hour";
    const step = BUCKET_MS[bucket];
    const count = bucket === "day" ? 7 : 24;
    // Whole buckets, the current one last.
    const since = new Date(Math.floor(Date.now() / step) * step - (count - 1) * step);
    const params = new URLSearchParams({ since: since.toISOString(), bucket });
    try {
      const r = await PCB.apiJson(`/v1/stats?${params}`);
      if (!r.ok) {
        showError("Loading the dashboard", r);
        return;
      }
      await PCB.paletteReady;
      await classesLoading;
      const stats = r.body;
      clearError();
      ui.totalBoards.textContent = String(stats.boards);
      ui.totalFailed.textContent = String(stats.failed);
      ui.totalFailRate.textContent = pct(stats.fail_rate);
      ui.totalReviewed.textContent = String(stats.reviewed);
      const buckets = series(stats);
      drawBoards(stats, buckets);
      drawFailRate(stats, buckets);
      drawFalseCalls(stats);
      const now = new Date();
      ui.dashUpdated.textContent = `Updated ${now.toLocaleTimeString()}; refreshes every 30 s.`;
      ui.dashboardView.dataset.updated = now.toISOString();
      say(`Dashboard: ${stats.boards} boards, fail rate ${pct(stats.fail_rate)}, ` +
        `${stats.reviewed} reviewed.`);
    } finally {
      statsLoading = false;
    }
  }

  ui.dashRefresh.addEventListener("click", () => loadStats());
  ui.dashRange.addEventListener("change", () => loadStats());
  setInterval(() => {
    if (view === "dashboard" && !document.hidden) loadStats();
  }, REFRESH_MS);

  // --- views --------------------------------------------------------------------------------
  function showView() {
    view = location.hash === "#dashboard" ? "dashboard" : "queue";
    document.body.dataset.view = view;
    ui.queueView.hidden = view !== "queue";
    ui.dashboardView.hidden = view !== "dashboard";
    for (const [tab, name] of [[ui.tabQueue, "queue"], [ui.tabDashboard, "dashboard"]]) {
      if (name === view) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    document.title = view === "dashboard" ? "PCB dashboard" : "PCB review";
    if (view === "dashboard") {
      loadStats();
    } else {
      if (mode) cancelMode(false);
      draw(); // the canvas was hidden: its on-screen size (line widths) may have changed
      // Clicked the tab: the keys go to the board again (Enter on the link would only follow it).
      if (board && document.activeElement && document.activeElement.closest(".pages")) {
        ui.boardArea.focus({ preventScroll: true });
      }
    }
  }
  window.addEventListener("hashchange", showView);

  // --- start --------------------------------------------------------------------------------
  // A new key may see what the old one could not: read again once typing pauses.
  PCB.keepApiKey(500, () => {
    loadClasses();
    if (!queue.items.length) reloadQueue();
    if (view === "dashboard") loadStats();
  });
  window.addEventListener("resize", () => draw());

  renderBoard();
  loadClasses();
  showView();
  reloadQueue();
})();
