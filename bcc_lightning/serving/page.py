"""The browser page at GET /: plain HTML + JS, no external resources (the server may have no network).

Kept in a .py module rather than an .html file so that it ships with the package without a package_data entry.
Each image is sent as its own request: results appear one by one, and the server batches them dynamically.
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bcc-serve: benign / malignant</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 70rem; }
#drop { border: 2px dashed #888; border-radius: 8px; padding: 1.5rem; text-align: center; background: #fafafa; }
#drop.over { background: #e8f0ff; border-color: #36c; }
.note { color: #a00; font-size: 0.9rem; }
table { border-collapse: collapse; margin-top: 1rem; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 0.4rem; text-align: left; vertical-align: top; }
td img { width: 200px; height: auto; image-rendering: auto; }
.malignant { color: #b00; font-weight: bold; }
.benign { color: #060; font-weight: bold; }
.error { color: #b00; }
</style>
</head>
<body>
<h1>Breast microscopy: benign / malignant</h1>
<p class="note">Research use only: not a medical device and not for diagnosis.</p>
<p id="model">Loading model information...</p>
<p id="synthetic" class="note" hidden><strong>This model was trained on SYNTHETIC demo data: its answers say nothing
about real microscopy.</strong></p>
<div id="drop">
  <p>Drop images here, or <input type="file" id="files" accept="image/*" multiple></p>
  <label><input type="checkbox" id="cam" checked> Grad-CAM heat maps</label>
  <button id="csv" disabled>Download CSV</button>
</div>
<table>
  <thead><tr><th>image</th><th>label</th><th>P(malignant)</th><th>threshold</th><th>heat map</th></tr></thead>
  <tbody id="results"></tbody>
</table>
<script>
"use strict";
const results = [];
const body = document.getElementById("results");
const csvButton = document.getElementById("csv");

fetch("model").then(r => r.json()).then(card => {
  const s = card.serving || {};
  document.getElementById("model").textContent = "Model: " + ((card.model || {}).backbone || "?") +
    ", threshold " + Number(s.threshold).toFixed(3) + " (" + (s.threshold_method || "") + ")" +
    (s.tta ? ", TTA on" : "");
  document.getElementById("synthetic").hidden = !(card.training_data || {}).synthetic;
}).catch(() => { document.getElementById("model").textContent = "Model information unavailable."; });

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

async function send(file) {
  const row = body.insertRow();
  row.dataset.name = file.name;
  cell(row, file.name);
  const label = cell(row, "...");
  const prob = cell(row, "");
  const threshold = cell(row, "");
  const heat = cell(row, "");
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("cam", document.getElementById("cam").checked ? "true" : "false");
  try {
    const response = await fetch("predict", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    const r = answer[0];
    label.textContent = r.label;
    label.className = "label " + r.label;
    prob.textContent = r.prob_malignant.toFixed(4) + (r.uncertainty !== undefined ? " \\u00b1 " +
      r.uncertainty.toFixed(4) : "");
    threshold.textContent = r.threshold.toFixed(4);
    if (r.cam_png) {
      const img = document.createElement("img");
      img.className = "heatmap";
      img.alt = "Grad-CAM heat map of " + file.name;
      img.src = "data:image/png;base64," + r.cam_png;
      heat.appendChild(img);
    }
    results.push({ name: r.name, label: r.label, prob_malignant: r.prob_malignant, threshold: r.threshold,
                   uncertainty: r.uncertainty === undefined ? "" : r.uncertainty, error: "" });
  } catch (err) {
    label.textContent = "error";
    label.className = "error";
    prob.textContent = String(err.message || err);
    results.push({ name: file.name, label: "", prob_malignant: "", threshold: "", uncertainty: "",
                   error: String(err.message || err) });
  }
  csvButton.disabled = results.length === 0;
}

function handle(files) { for (const f of files) send(f); }

function quote(value) {
  let text = String(value);
  // A text cell that starts like a formula is run by spreadsheets (CSV injection): a leading ' keeps it text.
  if (typeof value === "string" && /^[=+\\-@\\t\\r]/.test(text)) text = "'" + text;
  return /[",\\n\\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}

function csvText(rows) {
  const keys = ["name", "label", "prob_malignant", "threshold", "uncertainty", "error"];
  const lines = [keys.join(",")].concat(rows.map(r => keys.map(k => quote(r[k])).join(",")));
  return lines.join("\\n") + "\\n";
}

csvButton.addEventListener("click", () => {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([csvText(results)], { type: "text/csv" }));
  link.download = "predictions.csv";
  link.click();
  URL.revokeObjectURL(link.href);
});

const input = document.getElementById("files");
input.addEventListener("change", () => { handle(input.files); input.value = ""; });
const drop = document.getElementById("drop");
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => {
  e.preventDefault();
  drop.classList.remove("over");
  handle(e.dataTransfer.files);
});
</script>
</body>
</html>
"""
