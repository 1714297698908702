// The clipsep_ray web page: upload, separate, listen, look at spectrograms, download, re-query.
// No libraries: the zip answer is stored (not deflated), so it is read here by its headers, and
// spectrograms are computed in the page (WebAudio decodes, a radix-2 FFT transforms).
"use strict";
const $ = (id) => document.getElementById(id);
let upload = null;          // the chosen File
let separationId = null;    // X-Separation-Id of the last answer
let urls = [];              // object URLs to revoke when new results come

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function queries() {
  return $("queries").value.split("\n").map((q) => q.trim()).filter((q) => q.length > 0);
}

function refresh() {
  $("go").disabled = !(upload && queries().length);
  $("again").disabled = !(separationId && queries().length);
}

function chooseFile(file) {
  upload = file;
  separationId = null;
  $("file-name").textContent = file ? `${file.name} (${(file.size / 1048576).toFixed(2)} MB)` : "";
  refresh();
}

function headers(xhr) {
  const token = $("token").value.trim();
  if (token) xhr.setRequestHeader("Authorization", "Bearer " + token);
}

// POST with upload progress; resolves with the XHR (response as an ArrayBuffer).
function send(url, body, json) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.responseType = "arraybuffer";
    headers(xhr);
    if (json) xhr.setRequestHeader("Content-Type", "application/json");
    const bar = $("progress");
    bar.hidden = false;
    bar.removeAttribute("value");
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) { bar.value = e.loaded / e.total; setStatus(`uploading ${Math.round(100 * e.loaded / e.total)}%`); }
    };
    xhr.upload.onload = () => { bar.removeAttribute("value"); setStatus("separating..."); };
    xhr.onload = () => { bar.hidden = true; resolve(xhr); };
    xhr.onerror = () => { bar.hidden = true; reject(new Error("the server could not be reached")); };
    xhr.send(body);
  });
}

function errorOf(xhr) {
  try {
    const body = JSON.parse(new TextDecoder().decode(xhr.response));
    return `${xhr.status}: ${body.error.message}`;
  } catch (e) {
    return `${xhr.status}: ${xhr.statusText}`;
  }
}

// name -> Uint8Array for each entry of a stored (uncompressed) zip.
function unzip(buffer) {
  const view = new DataView(buffer), out = {};
  let at = 0;
  while (at + 30 <= buffer.byteLength && view.getUint32(at, true) === 0x04034b50) {
    const method = view.getUint16(at + 8, true), size = view.getUint32(at + 18, true);
    const nameLen = view.getUint16(at + 26, true), extraLen = view.getUint16(at + 28, true);
    const name = new TextDecoder().decode(new Uint8Array(buffer, at + 30, nameLen));
    if (method !== 0) throw new Error("compressed zip entries are not expected");
    const start = at + 30 + nameLen + extraLen;
    out[name] = new Uint8Array(buffer, start, size);
    at = start + size;
  }
  return out;
}

function fft(re, im) {  // in place, length a power of two
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) { [re[i], re[j]] = [re[j], re[i]]; [im[i], im[j]] = [im[j], im[i]]; }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const ang = -2 * Math.PI / len, wr = Math.cos(ang), wi = Math.sin(ang);
    for (let i = 0; i < n; i += len) {
      let cr = 1, ci = 0;
      for (let k = 0; k < len / 2; k++) {
        const a = i + k, b = a + len / 2;
        const tr = re[b] * cr - im[b] * ci, ti = re[b] * ci + im[b] * cr;
        re[b] = re[a] - tr; im[b] = im[a] - ti; re[a] += tr; im[a] += ti;
        const nr = cr * wr - ci * wi; ci = cr * wi + ci * wr; cr = nr;
      }
    }
  }
}

async function drawSpectrogram(canvas, bytes) {
  const ctx = new OfflineAudioContext(1, 1, 16000);
  const audio = await ctx.decodeAudioData(bytes.slice().buffer);
  const x = audio.getChannelData(0), n = 512, bins = n / 2;
  const cols = Math.max(1, Math.min(800, Math.floor(x.length / 128)));
  const hop = Math.max(1, Math.floor((x.length - n) / cols));
  canvas.width = cols; canvas.height = bins;
  const g = canvas.getContext("2d"), img = g.createImageData(cols, bins);
  const win = Float32Array.from({ length: n }, (_, i) => 0.5 - 0.5 * Math.cos(2 * Math.PI * i / n));
  const re = new Float32Array(n), im = new Float32Array(n);
  for (let c = 0; c < cols; c++) {
    for (let i = 0; i < n; i++) { re[i] = (x[c * hop + i] || 0) * win[i]; im[i] = 0; }
    fft(re, im);
    for (let b = 0; b < bins; b++) {
      const db = 10 * Math.log10(re[b] * re[b] + im[b] * im[b] + 1e-10);
      const v = Math.max(0, Math.min(1, (db + 80) / 80));
      const p = 4 * ((bins - 1 - b) * cols + c);
      img.data[p] = 255 * Math.min(1, 2 * v); img.data[p + 1] = 255 * v * v; img.data[p + 2] = 255 * (1 - v) * v * 2;
      img.data[p + 3] = 255;
    }
  }
  g.putImageData(img, 0, 0);
  canvas.dataset.drawn = "true";
}

function addTrack(name, bytes, type) {
  const div = document.createElement("div");
  div.className = "track";
  const blob = new Blob([bytes], { type });
  const url = URL.createObjectURL(blob);
  urls.push(url);
  div.innerHTML = `<h3></h3><audio controls preload="auto"></audio><canvas></canvas><a download>download</a>`;
  div.querySelector("h3").textContent = name;
  div.querySelector("audio").src = url;
  const link = div.querySelector("a");
  link.href = url; link.download = name;
  $("tracks").appendChild(div);
  drawSpectrogram(div.querySelector("canvas"), new Uint8Array(bytes)).catch(
    (e) => { div.querySelector("canvas").replaceWith(`(no spectrogram: ${e.message})`); });
}

async function show(xhr) {
  if (xhr.status !== 200) { setStatus(errorOf(xhr), true); return; }
  separationId = xhr.getResponseHeader("X-Separation-Id");
  urls.forEach((u) => URL.revokeObjectURL(u));
  urls = [];
  $("tracks").innerHTML = "";
  $("sid").textContent = separationId ? `(id ${separationId})` : "";
  addTrack(`input: ${upload.name}`, await upload.arrayBuffer(), upload.type || "audio/wav");
  const type = xhr.getResponseHeader("Content-Type") || "";
  if (type.startsWith("application/zip")) {
    const entries = unzip(xhr.response);
    for (const name of Object.keys(entries)) {
      addTrack(name, entries[name], name.endsWith(".flac") ? "audio/flac" : "audio/wav");
    }
  } else {
    const cd = xhr.getResponseHeader("Content-Disposition") || "";  // filename*: a unicode name in UTF-8
    const star = /filename\*=UTF-8''([^;]+)/.exec(cd), m = /filename="([^"]+)"/.exec(cd);
    addTrack(star ? decodeURIComponent(star[1]) : m ? m[1] : "stem", new Uint8Array(xhr.response), type);
  }
  $("results").hidden = false;
  setStatus("done");
  refresh();
}

async function separate() {
  const form = new FormData();
  form.append("file", upload, upload.name);
  queries().forEach((q) => form.append("query", q));
  form.append("format", $("format").value);
  form.append("residual", $("residual").checked ? "true" : "false");
  setStatus("uploading...");
  try { await show(await send("v1/separate", form, false)); } catch (e) { setStatus(e.message, true); }
}

async function requery() {
  const body = JSON.stringify({ queries: queries(), format: $("format").value, residual: $("residual").checked });
  setStatus("separating...");
  try {
    const xhr = await send(`v1/separations/${encodeURIComponent(separationId)}`, body, true);
    if (xhr.status === 404) { separationId = null; refresh(); }
    await show(xhr);
  } catch (e) { setStatus(e.message, true); }
}

$("file").addEventListener("change", (e) => chooseFile(e.target.files[0] || null));
$("queries").addEventListener("input", refresh);
$("go").addEventListener("click", separate);
$("again").addEventListener("click", requery);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
});
