// Modelyard console: the little the pages need from the browser. Plain ES module, no dependencies.
const csrf = document.body.dataset.csrf || "";

// -- workspace picker and auto-submitting selects -------------------------------------------------------
for (const select of document.querySelectorAll("[data-ws-picker] select")) {
  select.addEventListener("change", () => {
    const ws = select.value;
    location.href = ws ? `/console/w/${encodeURIComponent(ws)}/${select.dataset.section || "endpoints"}` : "/console/workspaces";
  });
}
for (const select of document.querySelectorAll("select[data-autosubmit]")) {
  select.addEventListener("change", () => select.form.submit());
}

// -- actions that cannot be undone ask first -------------------------------------------------------------
for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => { if (!confirm(form.dataset.confirm)) event.preventDefault(); });
}

// -- sortable tables ------------------------------------------------------------------------------------
function cellValue(row, index, numeric) {
  const cell = row.children[index];
  const raw = cell ? (cell.dataset.value ?? cell.textContent.trim()) : "";
  if (!numeric) return raw.toLowerCase();
  const n = parseFloat(raw.replace(/,/g, ""));
  return Number.isNaN(n) ? -Infinity : n;
}
for (const table of document.querySelectorAll("table.sortable")) {
  table.querySelectorAll("thead th").forEach((th, index) => {
    th.tabIndex = 0;
    const sort = () => {
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach((other) => other.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const numeric = th.dataset.type === "number";
      const body = table.tBodies[0];
      const rows = [...body.rows].sort((a, b) => {
        const x = cellValue(a, index, numeric), y = cellValue(b, index, numeric);
        return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
      });
      body.append(...rows);
    };
    th.addEventListener("click", sort);
    th.addEventListener("keydown", (event) => { if (event.key === "Enter") sort(); });
  });
}

// -- endpoints: follow state changes while an endpoint starts or stops -----------------------------------
const moving = [...document.querySelectorAll("[data-state]")].some((el) => /PENDING|STARTING|STOPPING/.test(el.textContent));
if (moving) {
  setTimeout(function again() {
    const busy = document.activeElement && /INPUT|TEXTAREA|SELECT/.test(document.activeElement.tagName);
    if (busy) { setTimeout(again, 2000); return; }
    location.reload();
  }, 2000);
}

// -- filesets: drag-and-drop upload with a progress bar --------------------------------------------------
async function filesOf(dataTransfer) {
  const out = [];
  const items = [...(dataTransfer.items || [])].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  if (!items.length) return [...dataTransfer.files].map((file) => ({ file, path: file.name }));
  async function walk(entry, prefix) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: prefix + file.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, prefix + entry.name + "/");
      }
    }
  }
  for (const entry of items) await walk(entry, "");
  return out;
}

function put(url, file, onProgress) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (event) => onProgress(event.loaded);
    xhr.onload = () => {
      let message = `HTTP ${xhr.status}`;
      try { message = JSON.parse(xhr.responseText).detail || message; } catch (_) { /* not JSON */ }
      resolve({ ok: xhr.status >= 200 && xhr.status < 300, message });
    };
    xhr.onerror = () => resolve({ ok: false, message: "the connection failed" });
    xhr.send(file);
  });
}

for (const zone of document.querySelectorAll("[data-upload]")) {
  const bar = zone.querySelector("[data-progress]");
  const status = zone.querySelector("[data-upload-status]");
  const input = zone.querySelector("[data-upload-input]");
  async function upload(entries) {
    if (!entries.length) return;
    const total = entries.reduce((sum, e) => sum + e.file.size, 0) || 1;
    let done = 0;
    bar.hidden = false; bar.value = 0;
    const failures = [];
    for (const [i, { file, path }] of entries.entries()) {
      status.textContent = `Uploading ${path} (${i + 1} of ${entries.length})…`;
      const url = zone.dataset.upload + path.split("/").map(encodeURIComponent).join("/");
      const result = await put(url, file, (loaded) => { bar.value = Math.round(100 * (done + loaded) / total); });
      done += file.size;
      bar.value = Math.round(100 * done / total);
      if (!result.ok) failures.push(`${path}: ${result.message}`);
    }
    zone.dataset.finished = "true";
    if (failures.length) {
      status.className = "error small"; status.textContent = "Refused: " + failures.join("; ");
    } else {
      status.textContent = `Uploaded ${entries.length} file${entries.length === 1 ? "" : "s"}.`;
      setTimeout(() => location.reload(), 400);
    }
  }
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (event) => {
    event.preventDefault(); zone.classList.remove("over");
    await upload(await filesOf(event.dataTransfer));
  });
  input.addEventListener("change", () => upload([...input.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }))));
}

// -- playground: one prompt, up to four targets, answers streamed side by side --------------------------
function column(target) {
  const box = document.createElement("section");
  box.className = "answer";
  box.dataset.target = target;
  const title = document.createElement("h2");
  const code = document.createElement("code"); code.textContent = target; title.append(code);
  const text = document.createElement("div"); text.className = "text"; text.dataset.text = "";
  const meta = document.createElement("div"); meta.className = "meta"; meta.textContent = "waiting…";
  box.append(title, text, meta);
  return { box, text, meta };
}

async function ask(url, body, view) {
  const started = performance.now();
  let first = null, tokens = 0, reported = null;
  let response;
  try {
    response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
                                   body: JSON.stringify(body), credentials: "same-origin" });
  } catch (error) {
    view.box.dataset.state = "error"; view.meta.textContent = ""; view.text.className = "error"; view.text.textContent = String(error);
    return;
  }
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { const data = await response.json(); message = (data.error && data.error.message) || data.detail || message; } catch (_) { /* not JSON */ }
    view.box.dataset.state = "error"; view.meta.textContent = `refused (${response.status})`;
    view.text.className = "error"; view.text.textContent = message;
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (!data || data === "[DONE]") continue;
        let chunk;
        try { chunk = JSON.parse(data); } catch (_) { continue; }
        if (chunk.error) { view.text.className = "error"; view.text.textContent = chunk.error.message || "error"; continue; }
        if (chunk.usage && chunk.usage.completion_tokens != null) reported = chunk.usage.completion_tokens;
        const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
        if (piece) {
          if (first === null) first = performance.now();
          tokens += 1;
          view.text.textContent += piece;
          view.box.dataset.chunks = String(tokens);
          view.meta.textContent = `${tokens} tokens…`;
        }
      }
    }
  }
  const end = performance.now();
  const count = reported ?? tokens;
  const ttft = first === null ? null : first - started;
  const rate = first !== null && end > first && count > 1 ? (count - 1) / ((end - first) / 1000) : null;
  view.box.dataset.state = "done";
  view.meta.textContent = `${count} tokens · first token ${ttft === null ? "—" : Math.round(ttft) + " ms"} · ` +
    `${rate === null ? "—" : rate.toFixed(1)} tokens/s · ${Math.round(end - started)} ms in all`;
}

for (const form of document.querySelectorAll("[data-playground]")) {
  const answers = document.querySelector("[data-answers]");
  const max = parseInt(form.dataset.max || "4", 10);
  const boxes = [...form.querySelectorAll("input[name=target]")];
  const limit = () => {
    const checked = boxes.filter((b) => b.checked).length;
    boxes.forEach((b) => { b.disabled = !b.checked && checked >= max; });
  };
  boxes.forEach((b) => b.addEventListener("change", limit)); limit();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const targets = boxes.filter((b) => b.checked).map((b) => b.value).slice(0, max);
    answers.replaceChildren();
    if (!targets.length) { answers.textContent = "Pick at least one target."; return; }
    const data = new FormData(form);
    const run = form.querySelector("[data-run]"); run.disabled = true;
    answers.dataset.running = "true";
    await Promise.all(targets.map((target) => {
      const view = column(target); answers.append(view.box);
      return ask(form.dataset.playground, { model: target, prompt: data.get("prompt"), system: data.get("system"),
                                            temperature: data.get("temperature"), max_tokens: data.get("max_tokens") }, view);
    }));
    answers.dataset.running = "false"; run.disabled = false;
  });
}
