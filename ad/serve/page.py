"""The service's one page: drop (or pick) an image, see the overlay, score and decision. The sensitivity
slider moves the decision threshold across the calibrated range — normalised scores 0.05-0.95, where the
run's threshold sits at 0.5 — and re-decides locally, without another request."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ad · anomaly check</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;margin:2rem;max-width:980px;color:#222}
 #drop{border:3px dashed #888;border-radius:12px;padding:2rem;text-align:center;cursor:pointer}
 #drop.over{background:#eef}
 #out{display:flex;gap:2rem;margin-top:1.5rem;align-items:flex-start}
 #overlay{width:384px;height:384px;object-fit:contain;image-rendering:pixelated;background:#eee}
 .verdict{font-size:2rem;font-weight:700;padding:.3rem .8rem;border-radius:8px;display:inline-block}
 .ok{background:#d4f5d4;color:#145214}.bad{background:#fbd3d3;color:#7a1010}.none{background:#eee}
 table td{padding:.15rem .8rem .15rem 0} #error{color:#a00;font-weight:600}
</style></head>
<body>
<h1>Anomaly check</h1>
<p id="model">loading model…</p>
<div id="drop">Drop an image here or <label style="text-decoration:underline">choose a file
 <input id="file" type="file" accept="image/*" hidden></label></div>
<p id="error"></p>
<div id="out">
 <img id="overlay" alt="overlay">
 <div>
  <div id="verdict" class="verdict none">–</div>
  <table>
   <tr><td>file</td><td id="fname">–</td></tr>
   <tr><td>score (raw)</td><td id="score">–</td></tr>
   <tr><td>normalised score</td><td id="nscore">–</td></tr>
   <tr><td>threshold</td><td id="thr">–</td></tr>
  </table>
  <p><label for="sens">Sensitivity</label><br>
   <input id="sens" type="range" min="0.05" max="0.95" step="0.01" value="0.5" style="width:280px"><br>
   <small id="sensnote">0.5 = the run's calibrated threshold; left flags more images</small></p>
 </div>
</div>
<script>
let health = null, last = null;
const $ = id => document.getElementById(id);
function thresholdAt(u) {  // normalised position -> raw threshold: 0.5 is the calibrated one
  const n = health && health.normalization;
  if (!n) return health ? health.threshold : null;
  return n.min + 2 * u * (n.threshold - n.min);
}
function render() {
  if (!last) return;
  const t = thresholdAt(parseFloat($("sens").value));
  $("thr").textContent = t === null ? "none (uncalibrated)" : t.toPrecision(6);
  const v = $("verdict");
  if (t === null) { v.textContent = "no threshold"; v.className = "verdict none"; }
  else if (last.score >= t) { v.textContent = "ANOMALOUS"; v.className = "verdict bad"; }
  else { v.textContent = "normal"; v.className = "verdict ok"; }
  document.body.dataset.state = "scored";
}
async function send(file) {
  $("error").textContent = ""; document.body.dataset.state = "sending";
  const form = new FormData(); form.append("file", file, file.name || "upload");
  const r = await fetch("predict?overlay=true", {method: "POST", body: form});
  const body = await r.json();
  if (!r.ok) { $("error").textContent = body.detail; document.body.dataset.state = "error"; return; }
  last = body;
  $("overlay").src = "data:image/png;base64," + body.overlay_png;
  $("fname").textContent = body.filename;
  $("score").textContent = body.score.toPrecision(6);
  $("nscore").textContent = body.normalized_score === null ? "–" : body.normalized_score.toFixed(3);
  render();
}
fetch("health").then(r => r.json()).then(h => {
  health = h;
  $("model").textContent = `model ${h.model} (${h.format}, ${h.input_size.join("×")} px)` +
    (h.metrics.image_auroc != null ? `, test image AUROC ${h.metrics.image_auroc.toFixed(3)}` : "");
  if (!h.normalization) { $("sens").disabled = true; $("sensnote").textContent = "no calibration: fixed threshold"; }
  document.body.dataset.ready = "1";
});
const drop = $("drop");
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]); });
$("file").addEventListener("change", e => { if (e.target.files.length) send(e.target.files[0]); });
$("sens").addEventListener("input", render);
</script>
</body></html>
"""
