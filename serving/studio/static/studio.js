// soundloc studio: annotate pairs of a record directory, localise sounds through TF Serving.
// Plain JavaScript, no build step; the server's routes are listed in soundloc_tf/studio/app.py.
"use strict";

const MAX_BOXES = 4;           // the trainer keeps at most 4 boxes per pair
const MIN_BOX = 0.01;          // a click without a drag draws no box
const OVERLAY_OPACITY = 0.5;   // as the other tools' overlays
const $ = (id) => document.getElementById(id);

const state = {
  pairs: [], total: 0, labelled: 0, index: 0,
  boxes: [], noSource: false, revision: 0, undo: [], selected: -1, dirty: false, drag: null,
  conflict: null,             // the label another tab saved, after a 409
  loc: { image: null, sound: null, imagePair: null, samples: null, last: null },
};

// ---------------------------------------------------------------------------- messages

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
}

function clearMessage() { $("message").className = "hidden"; $("message").textContent = ""; }

async function api(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method, headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (error) {
    const failure = new Error("The studio server did not answer (is soundloc-studio still running?).");
    failure.status = 0;
    throw failure;
  }
  let value = {};
  try { value = await response.json(); } catch (_) { /* an error page that is not JSON */ }
  if (!response.ok) {
    const failure = new Error(value.error || `HTTP ${response.status}`);
    failure.status = response.status;
    failure.body = value;
    throw failure;
  }
  return value;
}

// ---------------------------------------------------------------------------- annotate

function updateProgress() {
  $("progress").textContent = `${state.labelled} / ${state.total} labelled`;
}

async function loadState(keepIndex = true) {
  const value = await api("GET", "/api/state");
  state.pairs = value.pairs;
  state.total = value.total;
  state.labelled = value.labelled;
  if (value.annotations_error) showMessage(value.annotations_error);
  updateProgress();
  if (!keepIndex) state.index = 0;
  showPair(Math.min(state.index, state.total - 1));
}

function showPair(index) {
  state.index = index;
  const pair = state.pairs[index];
  const label = pair.label;
  state.boxes = label ? label.boxes.map((b) => b.slice()) : [];
  state.noSource = label ? label.no_source : false;
  state.revision = label ? label.revision : 0;
  state.undo = [];
  state.selected = -1;
  state.dirty = false;
  state.conflict = null;
  $("pair-title").textContent = `${index + 1} / ${state.total}: ${pair.id}`;
  $("frame").src = `/api/pairs/${index}/image`;
  $("sound").src = `/api/pairs/${index}/sound.wav`;
  $("no-source").checked = state.noSource;
  describePair();
}

function describePair() {
  const label = state.pairs[state.index].label;
  let text = label && (label.boxes.length || label.no_source)
    ? `Saved: ${label.no_source ? "no visible source" : `${label.boxes.length} box(es)`} by ${label.by} at ${label.at} (revision ${label.revision})`
    : "Not labelled yet";
  if (state.dirty) text += " — unsaved changes";
  $("pair-status").textContent = text;
  $("pair-status").dataset.revision = String(state.revision);
}

function fitCanvas() {
  const img = $("frame");
  // Small frames (64 px videos) are shown enlarged so boxes can be drawn precisely.
  const scale = Math.min(640 / img.naturalWidth, 480 / img.naturalHeight, 8);
  img.style.width = `${Math.round(img.naturalWidth * scale)}px`;
  img.style.height = `${Math.round(img.naturalHeight * scale)}px`;
  const canvas = $("boxes");
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  drawBoxes();
}

function drawBoxes() {
  const canvas = $("boxes");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const all = state.boxes.slice();
  if (state.drag && state.drag.mode === "draw" && state.drag.box) all.push(state.drag.box);
  all.forEach((b, i) => {
    const selected = i === state.selected;
    ctx.lineWidth = selected ? 3 : 2;
    ctx.strokeStyle = selected ? "#ffeb3b" : "#00e676";
    ctx.fillStyle = selected ? "rgba(255,235,59,0.15)" : "rgba(0,230,118,0.12)";
    ctx.fillRect(b[0] * w, b[1] * h, (b[2] - b[0]) * w, (b[3] - b[1]) * h);
    ctx.strokeRect(b[0] * w, b[1] * h, (b[2] - b[0]) * w, (b[3] - b[1]) * h);
  });
  if (state.noSource) {
    ctx.fillStyle = "rgba(0,0,0,0.45)";
    ctx.fillRect(0, 0, w, h);
    ctx.fillStyle = "#fff";
    ctx.font = "bold 20px sans-serif";
    ctx.fillText("no visible source", 12, 30);
  }
  canvas.dataset.boxes = JSON.stringify(state.boxes);
}

function snapshot() { return { boxes: state.boxes.map((b) => b.slice()), noSource: state.noSource }; }

function changed(before) {
  state.undo.push(before);
  state.dirty = true;
  describePair();
  drawBoxes();
}

function undo() {
  const last = state.undo.pop();
  if (!last) { showMessage("Nothing to undo on this pair.", "info"); return; }
  state.boxes = last.boxes;
  state.noSource = last.noSource;
  $("no-source").checked = state.noSource;
  state.selected = -1;
  state.dirty = true;
  describePair();
  drawBoxes();
}

function point(event) {
  const rect = $("boxes").getBoundingClientRect();
  return [Math.min(Math.max((event.clientX - rect.left) / rect.width, 0), 1),
          Math.min(Math.max((event.clientY - rect.top) / rect.height, 0), 1)];
}

function hit(p) {
  for (let i = state.boxes.length - 1; i >= 0; i--) {
    const b = state.boxes[i];
    if (p[0] >= b[0] && p[0] <= b[2] && p[1] >= b[1] && p[1] <= b[3]) return i;
  }
  return -1;
}

function onMouseDown(event) {
  event.preventDefault();  // no text selection while dragging; so focus is moved by hand:
  if (document.activeElement && document.activeElement.blur) document.activeElement.blur();
  const p = point(event);
  const i = hit(p);
  const before = snapshot();
  if (i >= 0) {
    state.selected = i;
    state.drag = { mode: "move", start: p, origin: state.boxes[i].slice(), before, moved: false };
  } else {
    state.selected = -1;
    state.drag = { mode: "draw", start: p, box: null, before };
  }
  drawBoxes();
}

function onMouseMove(event) {
  const drag = state.drag;
  if (!drag) return;
  const p = point(event);
  if (drag.mode === "draw") {
    drag.box = [Math.min(drag.start[0], p[0]), Math.min(drag.start[1], p[1]),
                Math.max(drag.start[0], p[0]), Math.max(drag.start[1], p[1])];
  } else {
    const o = drag.origin;
    const dx = Math.min(Math.max(p[0] - drag.start[0], -o[0]), 1 - o[2]);
    const dy = Math.min(Math.max(p[1] - drag.start[1], -o[1]), 1 - o[3]);
    state.boxes[state.selected] = [o[0] + dx, o[1] + dy, o[2] + dx, o[3] + dy];
    drag.moved = dx !== 0 || dy !== 0;
  }
  drawBoxes();
}

function onMouseUp(event) {
  const drag = state.drag;
  if (!drag) return;
  onMouseMove(event);
  state.drag = null;
  if (drag.mode === "draw") {
    const b = drag.box;
    if (b && b[2] - b[0] >= MIN_BOX && b[3] - b[1] >= MIN_BOX) {
      if (state.boxes.length >= MAX_BOXES) {
        showMessage(`At most ${MAX_BOXES} boxes per pair (the trainer keeps no more).`);
      } else {
        state.boxes.push(b.map((v) => Math.round(v * 1e4) / 1e4));
        state.selected = state.boxes.length - 1;
        if (state.noSource) { state.noSource = false; $("no-source").checked = false; }
        changed(drag.before);
        return;
      }
    }
  } else if (drag.moved) {
    state.boxes[state.selected] = state.boxes[state.selected].map((v) => Math.round(v * 1e4) / 1e4);
    changed(drag.before);
    return;
  }
  drawBoxes();
}

function deleteSelected() {
  if (state.selected < 0) { showMessage("Click a box first, then delete it.", "info"); return; }
  const before = snapshot();
  state.boxes.splice(state.selected, 1);
  state.selected = -1;
  changed(before);
}

function toggleNoSource() {
  const before = snapshot();
  state.noSource = $("no-source").checked;
  if (state.noSource) state.boxes = [];
  state.selected = -1;
  changed(before);
}

function who() {
  const name = $("who").value.trim();
  if (name) localStorage.setItem("soundloc-studio-who", name);
  return name;
}

async function save() {
  const by = who();
  if (!by) { showMessage("Enter your name (top right) first: every label records who saved it."); $("who").focus(); return false; }
  const pair = state.pairs[state.index];
  // After a conflict the user has seen the other label: saving again replaces it on purpose.
  const revision = state.conflict ? state.conflict.revision : state.revision;
  try {
    const answer = await api("PUT", "/api/labels", {
      id: pair.id, boxes: state.boxes, no_source: state.noSource, revision, by,
    });
    pair.label = answer.label;
    state.revision = answer.label.revision;
    state.labelled = answer.labelled;
    state.dirty = false;
    state.conflict = null;
    updateProgress();
    describePair();
    showMessage(`Saved pair ${state.index + 1} (${pair.id}), revision ${answer.label.revision}.`, "info");
    return true;
  } catch (error) {
    if (error.status === 409 && error.body && error.body.kind === "revision") {
      const current = error.body.current;
      state.conflict = current || { revision: 0 };
      showMessage(`Not saved: this pair was saved in another tab or by someone else` +
        (current ? ` (${current.boxes.length} box(es) by ${current.by} at ${current.at})` : "") +
        `. Your boxes are still on screen: press Save again to replace that label, or Reload to see it.`);
    } else {
      showMessage(`Not saved: ${error.message} Your boxes are still on screen.`);
    }
    return false;
  }
}

async function go(step) {
  const target = state.index + step;
  if (target < 0 || target >= state.total) return;
  if (state.dirty && !(await save())) return;  // never leave unsaved boxes behind
  showPair(target);
}

function togglePlay() {
  const audio = $("sound");
  if (audio.paused) audio.play().catch((e) => showMessage(`Cannot play the sound: ${e.message}`));
  else audio.pause();
}

function onKey(event) {
  if (event.target.tagName === "INPUT" && event.target.type !== "checkbox") return;
  if ($("annotate").classList.contains("hidden")) return;
  const key = event.key;
  if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "z") { event.preventDefault(); undo(); return; }
  if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "s") { event.preventDefault(); save(); return; }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = {
    ArrowRight: () => go(1), d: () => go(1), ArrowLeft: () => go(-1), a: () => go(-1),
    Delete: deleteSelected, Backspace: deleteSelected, p: togglePlay, " ": togglePlay,
    u: undo, s: save,
    n: () => { $("no-source").checked = !$("no-source").checked; toggleNoSource(); },
  };
  const action = actions[key];
  if (action) { event.preventDefault(); action(); }
}

// ---------------------------------------------------------------------------- localise

const IMAGE_EXT = /\.(jpe?g|png|gif|bmp|webp|tiff?)$/i;
const SOUND_EXT = /\.(wav|flac|ogg|oga|mp3|m4a|aac|opus)$/i;
const VIDEO_EXT = /\.(mp4|mkv|webm|mov|avi|m4v)$/i;

function kindOf(file) {
  if (file.type.startsWith("image/") || IMAGE_EXT.test(file.name)) return "image";
  if (VIDEO_EXT.test(file.name) || file.type.startsWith("video/")) return "video";
  if (file.type.startsWith("audio/") || SOUND_EXT.test(file.name)) return "sound";
  return null;
}

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function onFiles(files) {
  clearMessage();
  const list = Array.from(files);
  const bad = list.filter((f) => !kindOf(f));
  if (bad.length) {
    showMessage(`Unsupported file ${bad.map((f) => `"${f.name}"`).join(", ")}: drop a JPEG/PNG image with a sound (WAV, FLAC, OGG, MP3), or a video (MP4, MKV, WebM, MOV).`);
    return;
  }
  const video = list.find((f) => kindOf(f) === "video");
  if (video) { await localizeVideo(video); return; }
  for (const f of list) {
    if (kindOf(f) === "image") { state.loc.image = f; state.loc.imagePair = null; }
    if (kindOf(f) === "sound") state.loc.sound = f;
  }
  $("chosen").textContent = `Image: ${state.loc.image ? state.loc.image.name : "—"}; sound: ${state.loc.sound ? state.loc.sound.name : "—"}`;
  if (state.loc.image && state.loc.sound) {
    const body = {
      image: { name: state.loc.image.name, b64: await readBase64(state.loc.image) },
      sound: { name: state.loc.sound.name, b64: await readBase64(state.loc.sound) },
    };
    await localize(body, `${state.loc.image.name} with ${state.loc.sound.name}`,
                   URL.createObjectURL(state.loc.image));
  } else {
    $("loc-status").textContent = state.loc.image ? "Now drop a sound." : "Now drop an image.";
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image cannot be shown by this browser"));
    img.src = url;
  });
}

async function drawOverlay(imageUrl, result) {
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  const [img, heat] = await Promise.all([loadImage(imageUrl), loadImage(result.heatmap_png)]);
  const scale = Math.min(448 / img.naturalWidth, 448 / img.naturalHeight);
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  const w = canvas.width, h = canvas.height;
  ctx.globalAlpha = 1;
  ctx.drawImage(img, 0, 0, w, h);
  ctx.globalAlpha = OVERLAY_OPACITY;
  ctx.drawImage(heat, 0, 0, w, h);
  ctx.globalAlpha = 1;
  const b = result.box;
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#fff";
  ctx.strokeRect(b[0] * w, b[1] * h, (b[2] - b[0]) * w, (b[3] - b[1]) * h);
  $("score").textContent = `score ${result.score.toFixed(3)}`;
  canvas.dataset.box = JSON.stringify(b);
  canvas.dataset.score = String(result.score);
  canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
}

async function localize(body, what, imageUrl) {
  clearMessage();
  $("loc-status").textContent = `Asking the model about ${what}…`;
  try {
    const result = await api("POST", "/api/localize", body);
    state.loc.last = { body, imageUrl };
    state.loc.samples = null;
    $("video-controls").classList.add("hidden");
    await drawOverlay(imageUrl, result);
    $("mismatch").disabled = false;
    $("loc-status").textContent = `Localised ${what}` +
      (result.sound ? ` (sound of pair ${result.sound.pair + 1}: ${result.sound.id})` : "") + ".";
  } catch (error) {
    $("loc-status").textContent = "";
    showMessage(`Not localised: ${error.message}`);
  }
}

function localizePair(index) {
  showTab("localize");
  state.loc.imagePair = index;
  state.loc.image = null;
  localize({ image_pair: index, sound_pair: index }, `pair ${index + 1} (${state.pairs[index].id})`,
           `/api/pairs/${index}/image`);
}

async function mismatch() {
  const last = state.loc.last;
  if (!last) return;
  const body = { mismatch_for: state.index };
  if (last.body.image_pair !== undefined) {
    body.image_pair = last.body.image_pair;
    body.mismatch_for = last.body.image_pair;
  } else {
    body.image = last.body.image;
  }
  await localize(body, "the same image with a mismatched sound", last.imageUrl);
  state.loc.last = last;  // a second click tries from the original pair again
}

async function localizeVideo(file) {
  clearMessage();
  $("chosen").textContent = `Video: ${file.name}`;
  $("loc-status").textContent = `Sampling ${file.name} and asking the model…`;
  try {
    const answer = await api("POST", "/api/localize_video",
                             { video: { name: file.name, b64: await readBase64(file) } });
    state.loc.samples = answer.samples;
    state.loc.last = null;
    $("mismatch").disabled = true;
    const scrub = $("scrub");
    scrub.max = String(answer.samples.length - 1);
    scrub.value = "0";
    const video = $("video");
    video.src = URL.createObjectURL(file);
    $("video-controls").classList.remove("hidden");
    await showSample(0);
    $("loc-status").textContent = `Localised ${answer.samples.length} moments of ${file.name}; scrub or play to follow the sound.`;
  } catch (error) {
    $("loc-status").textContent = "";
    showMessage(`Not localised: ${error.message}`);
  }
}

async function showSample(k) {
  const sample = state.loc.samples && state.loc.samples[k];
  if (!sample) return;
  $("scrub").value = String(k);
  $("video-time").textContent = `${sample.time.toFixed(2)} s`;
  $("overlay").dataset.time = String(sample.time);
  await drawOverlay(sample.frame, sample);
}

function nearestSample(time) {
  const samples = state.loc.samples || [];
  let best = 0;
  samples.forEach((s, i) => { if (Math.abs(s.time - time) < Math.abs(samples[best].time - time)) best = i; });
  return best;
}

// ---------------------------------------------------------------------------- wiring

function showTab(name) {
  for (const tab of ["annotate", "localize"]) {
    $(tab).classList.toggle("hidden", tab !== name);
    $(`tab-${tab}`).classList.toggle("active", tab === name);
  }
}

function init() {
  $("who").value = localStorage.getItem("soundloc-studio-who") || "";
  $("tab-annotate").onclick = () => showTab("annotate");
  $("tab-localize").onclick = () => showTab("localize");
  $("prev").onclick = () => go(-1);
  $("next").onclick = () => go(1);
  $("play").onclick = togglePlay;
  $("delete").onclick = deleteSelected;
  $("undo").onclick = undo;
  $("save").onclick = save;
  $("reload").onclick = () => loadState().catch((e) => showMessage(e.message));
  $("no-source").onchange = toggleNoSource;
  $("localize-pair").onclick = () => localizePair(state.index);
  $("frame").onload = fitCanvas;
  const canvas = $("boxes");
  canvas.addEventListener("mousedown", onMouseDown);
  window.addEventListener("mousemove", onMouseMove);
  window.addEventListener("mouseup", onMouseUp);
  document.addEventListener("keydown", onKey);
  window.addEventListener("beforeunload", (event) => { if (state.dirty) event.preventDefault(); });

  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); onFiles(e.dataTransfer.files); });
  $("files").addEventListener("change", (e) => { onFiles(e.target.files); e.target.value = ""; });
  $("mismatch").onclick = mismatch;
  $("scrub").addEventListener("input", (e) => {
    const k = Number(e.target.value);
    const video = $("video");
    if (state.loc.samples && video.readyState > 0) video.currentTime = state.loc.samples[k].time;
    showSample(k);
  });
  $("video").addEventListener("timeupdate", () => {
    const k = nearestSample($("video").currentTime);
    if (String(k) !== $("scrub").value) showSample(k);
  });
  loadState(false).catch((e) => showMessage(`Cannot load the pairs: ${e.message}`));
}

init();
