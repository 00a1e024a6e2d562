// NAC's web page: chat (streamed), sentence similarity and image classification, over the
// server's own OpenAI-style API. No framework, no CDN.
"use strict";
const $ = (id) => document.getElementById(id);
// Every text from the server (labels and names come from model files) is escaped before it is markup.
const esc = (t) => String(t).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("nac-api-key") || "";
keyInput.addEventListener("change", () => { localStorage.setItem("nac-api-key", keyInput.value); loadModels(); });

function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if (keyInput.value) h["Authorization"] = "Bearer " + keyInput.value;
  return h;
}

function showError(message) {
  const e = $("error");
  e.textContent = message;
  e.hidden = !message;
}

async function api(path, body) {
  const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error ? data.error.message : r.statusText);
  return data;
}

async function loadModels() {
  showError("");
  const r = await fetch("/v1/models", { headers: headers(false) });
  const data = await r.json();
  if (!r.ok) { showError(data.error.message); return; }
  const byTask = {};
  for (const m of data.data) (byTask[m.task] = byTask[m.task] || []).push(m.id);
  $("models").textContent = data.data.map((m) => `${m.id} (${m.task})`).join(", ") || "no models";
  const panels = [["chat", "text-generation"], ["sim", "feature-extraction"], ["img", "image-classification"]];
  for (const [p, task] of panels) {
    const ids = byTask[task] || [];
    $(p + "-panel").hidden = ids.length === 0;
    $(p + "-model").innerHTML = ids.map((id) => `<option>${esc(id)}</option>`).join("");
  }
}

// -- chat ------------------------------------------------------------------------------------
const messages = [];
let controller = null;

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.innerHTML = `<span class="who">${role}</span>`;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.appendChild(body);
  $("chat-log").appendChild(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return body;
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || controller) return;
  showError("");
  $("chat-input").value = "";
  messages.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  controller = new AbortController();
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  let reply = "";
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ model: $("chat-model").value, messages, stream: true,
                             max_tokens: Number($("chat-max").value), temperature: Number($("chat-temp").value) }),
    });
    if (!r.ok) { const e = await r.json(); throw new Error(e.error.message); }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const payload = event.slice(6);
        if (payload === "[DONE]") continue;
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const c of chunk.choices || []) {
          if (c.delta && c.delta.content) { reply += c.delta.content; out.textContent = reply; }
        }
        $("chat-log").scrollTop = $("chat-log").scrollHeight;
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    messages.push({ role: "assistant", content: reply });
    controller = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
}

$("chat-form").addEventListener("submit", sendChat);
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("chat-stop").addEventListener("click", () => controller && controller.abort());
$("chat-clear").addEventListener("click", () => { messages.length = 0; $("chat-log").innerHTML = ""; });

// -- sentence similarity ---------------------------------------------------------------------------
$("sim-run").addEventListener("click", async () => {
  showError("");
  const texts = $("sim-input").value.split("\n").map((t) => t.trim()).filter(Boolean);
  try {
    const data = await api("/v1/embeddings", { model: $("sim-model").value, input: texts });
    const v = data.data.map((d) => d.embedding);
    const norm = (a) => Math.sqrt(a.reduce((s, x) => s + x * x, 0));
    const cos = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / (norm(a) * norm(b));
    let html = "<tr><th></th>" + texts.map((_, j) => `<th>${j + 1}</th>`).join("") + "</tr>";
    texts.forEach((t, i) => {
      html += `<tr><th>${i + 1}. ${esc(t)}</th>` + v.map((b) => `<td>${cos(v[i], b).toFixed(3)}</td>`).join("") + "</tr>";
    });
    $("sim-table").innerHTML = html;
  } catch (err) { showError(err.message); }
});

// -- image classification ------------------------------------------------------------------------------
$("img-file").addEventListener("change", async () => {
  showError("");
  const file = $("img-file").files[0];
  if (!file) return;
  $("img-preview").src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("model", $("img-model").value);
  form.append("top_k", "5");
  form.append("file", file);
  try {
    const r = await fetch("/v1/classify", { method: "POST", headers: headers(false), body: form });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error.message);
    $("img-labels").innerHTML = data.data[0].labels
      .map((l) => `<li><b>${esc(l.label)}</b> ${(100 * l.score).toFixed(1)}%</li>`).join("");
  } catch (err) { showError(err.message); }
});

loadModels();
