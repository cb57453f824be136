// The demo page: sends an image to POST /attention-map, draws the scores as bars and the grayscale
// heatmap through a colormap over the image. It uses the public API only; URLs are relative so the
// page also works under a proxy's path prefix.

const KEY_STORAGE = "glimpse.apiKey";
const $ = (id) => document.getElementById(id);

const state = {
  image: null, // the Blob last sent
  imageName: "",
  heat: null, // {width, height, gray: Uint8ClampedArray} of the last heatmap
  colormaps: {}, // name → Uint8Array(256 * 3)
  colormap: "",
  labels: [],
  sequence: 0, // answers to superseded requests are dropped
};

function apiHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

// The service answers every error as {"error": {"code", "message"}}; anything else (a proxy's page)
// is described by its status.
async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      return { title: body.error.message, detail: `HTTP ${response.status} · ${body.error.code}` };
    }
  } catch (_) {
    // not JSON
  }
  return { title: `The server answered ${response.status} ${response.statusText}`.trim(), detail: "" };
}

function showError(title, detail) {
  const box = $("error");
  box.replaceChildren();
  const strong = document.createElement("strong");
  strong.textContent = title;
  box.append(strong);
  if (detail) box.append(document.createTextNode(detail));
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

function setStatus(text) {
  $("status").textContent = text;
}

async function call(path, options = {}) {
  try {
    return await fetch(path, { ...options, headers: { ...apiHeaders(), ...(options.headers || {}) } });
  } catch (error) {
    return { networkError: error };
  }
}

function unreachable(error) {
  showError("The server could not be reached.", `${error.message || error}. Is it still running?`);
}

function askForKey(message) {
  $("key-panel").open = true;
  showError(message, "Enter the server's API key under “API key”, then try again.");
}

// The model card: name, version and the test results it records. True when it loaded.
async function loadModel() {
  const response = await call("models");
  if (response.networkError) {
    unreachable(response.networkError);
    return false;
  }
  if (!response.ok) {
    const { title, detail } = await errorText(response);
    $("model-name").textContent = `Model card unavailable: ${title}`;
    if (response.status === 401) askForKey(title);
    else showError(title, detail);
    return false;
  }
  const card = await response.json();
  $("model-name").textContent = `${card.name} ${card.version} · ${card.num_classes} classes · ${card.runtime.device}, ${card.runtime.precision}`;
  state.labels = card.labels;
  const select = $("target");
  select.replaceChildren(new Option("Top class", ""));
  for (const label of card.labels) select.append(new Option(label, label));
  $("top-k").max = String(card.num_classes);
  const rows = Object.entries(card.evaluation || {}).filter(
    ([, value]) => value && typeof value === "object" && typeof value.accuracy === "number",
  );
  const body = $("model-metrics").tBodies[0];
  body.replaceChildren();
  for (const [name, metrics] of rows) {
    const pointing = metrics.attention_map && metrics.attention_map.pointing_game;
    const cells = [
      name.replaceAll("_", " "),
      metrics.canvases ?? "",
      percent(metrics.accuracy),
      typeof pointing === "number" ? percent(pointing) : "",
    ];
    const row = body.insertRow();
    for (const cell of cells) row.insertCell().textContent = String(cell);
  }
  $("model-metrics").hidden = rows.length === 0;
  return true;
}

async function loadColormaps() {
  const response = await fetch("demo/colormaps.json");
  const tables = await response.json();
  const fieldset = $("colormaps");
  for (const [name, hex] of Object.entries(tables)) {
    const lut = new Uint8Array(hex.length / 2);
    for (let i = 0; i < lut.length; i++) lut[i] = parseInt(hex.substr(i * 2, 2), 16);
    state.colormaps[name] = lut;
    const label = document.createElement("label");
    const input = Object.assign(document.createElement("input"), { type: "radio", name: "colormap", value: name });
    input.checked = !state.colormap;
    state.colormap ||= name;
    input.addEventListener("change", () => {
      state.colormap = name;
      paintHeatmap();
    });
    label.append(input, ` ${name}`);
    fieldset.append(label);
  }
}

function percent(value) {
  return `${(value * 100).toFixed(1)} %`;
}

function chosenKind() {
  return document.querySelector('input[name="kind"]:checked').value;
}

async function explain() {
  if (!state.image) return;
  const sequence = ++state.sequence;
  const params = new URLSearchParams({ top_k: $("top-k").value || "5", kind: chosenKind() });
  if ($("target").value) params.set("target", $("target").value);
  const form = new FormData();
  form.append("file", state.image, state.imageName);
  $("result").dataset.state = "loading";
  setStatus(`Sending ${state.imageName}…`);
  const response = await call(`attention-map?${params}`, { method: "POST", body: form });
  if (sequence !== state.sequence) return;
  if (response.networkError) return fail(() => unreachable(response.networkError));
  if (!response.ok) {
    const { title, detail } = await errorText(response);
    return fail(() => (response.status === 401 ? askForKey(title) : showError(title, detail)));
  }
  const result = await response.json();
  await render(result);
  if (sequence !== state.sequence) return;
  clearError();
  $("result").dataset.state = "ready";
}

// An error replaces the previous result: a stale picture beside an error would mislead.
function fail(show) {
  show();
  $("view").hidden = true;
  $("result").dataset.state = "error";
  setStatus(`No result for ${state.imageName}.`);
}

async function render(result) {
  const heat = await decodeGray(result.heatmap);
  state.heat = heat;
  const canvas = $("heatmap");
  canvas.width = heat.width;
  canvas.height = heat.height;
  canvas.dataset.target = result.target;
  canvas.dataset.kind = result.kind;
  const what = result.kind === "attention" ? "attention" : `evidence for class ${result.target}`;
  canvas.setAttribute("aria-label", `Heatmap of the ${what}`);
  $("stage").style.aspectRatio = `${result.width} / ${result.height}`;
  paintHeatmap();
  renderScores(result);
  renderDomain(result);
  const top = result.predictions[0];
  $("caption").textContent = `${state.imageName}, ${result.width}×${result.height}: the ${what}.`;
  setStatus(`${state.imageName}: class ${top.label} at ${percent(top.score)}.`);
  $("view").hidden = false;
}

function decodeGray(base64) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
      const context = canvas.getContext("2d");
      context.drawImage(image, 0, 0);
      const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
      const gray = new Uint8ClampedArray(canvas.width * canvas.height);
      for (let i = 0; i < gray.length; i++) gray[i] = rgba[i * 4];
      resolve({ width: canvas.width, height: canvas.height, gray });
    };
    image.onerror = () => reject(new Error("the heatmap PNG could not be decoded"));
    image.src = `data:image/png;base64,${base64}`;
  });
}

function paintHeatmap() {
  const heat = state.heat;
  const lut = state.colormaps[state.colormap];
  if (!heat || !lut) return;
  const canvas = $("heatmap");
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(heat.width, heat.height);
  // Transparent where the map is zero, opaque from half its maximum up: the image stays readable
  // around the evidence; the slider scales the whole layer.
  for (let i = 0; i < heat.gray.length; i++) {
    const value = heat.gray[i];
    const v = value * 3;
    pixels.data.set([lut[v], lut[v + 1], lut[v + 2], Math.min(255, value * 2)], i * 4);
  }
  context.putImageData(pixels, 0, 0);
  canvas.dataset.colormap = state.colormap;
}

function renderScores(result) {
  const list = $("scores");
  list.replaceChildren();
  for (const prediction of result.predictions) {
    const item = document.createElement("li");
    if (prediction.label === result.target) item.className = "target";
    const label = Object.assign(document.createElement("span"), { className: "label" });
    label.textContent = prediction.label;
    const track = Object.assign(document.createElement("span"), { className: "track" });
    track.setAttribute("aria-hidden", "true");
    const bar = Object.assign(document.createElement("span"), { className: "bar" });
    bar.style.display = "block";
    bar.style.width = `${Math.max(0, Math.min(1, prediction.score)) * 100}%`;
    track.append(bar);
    const score = Object.assign(document.createElement("span"), { className: "score" });
    score.textContent = percent(prediction.score);
    item.append(label, track, score);
    if (prediction.label === result.target) {
      const mark = Object.assign(document.createElement("span"), { className: "visually-hidden" });
      mark.textContent = " (the class explained)";
      item.append(mark);
    }
    list.append(item);
  }
}

// The in-domain verdict, when the server reports one.
function renderDomain(result) {
  const box = $("domain");
  const domain = result.domain;
  if (!domain) {
    box.hidden = true;
    return;
  }
  const score = Number(domain.score).toFixed(2);
  box.className = domain.in_distribution ? "in" : "out";
  box.textContent = domain.in_distribution
    ? `In domain (score ${score}): the image looks like what the model was trained on.`
    : `Out of domain (score ${score}): ${result.warning || "the scores for this image are unreliable."}`;
  box.hidden = false;
}

function useImage(blob, name) {
  if (!blob) return;
  state.image = blob;
  state.imageName = name || blob.name || "pasted image";
  const previous = $("input-image").src;
  $("input-image").src = URL.createObjectURL(blob);
  if (previous.startsWith("blob:")) URL.revokeObjectURL(previous);
  explain();
}

async function useExample(button) {
  const src = button.dataset.src;
  $("result").dataset.state = "loading";
  let response;
  try {
    response = await fetch(src);
  } catch (error) {
    return unreachable(error);
  }
  if (!response.ok) return showError(`The example ${src} could not be loaded.`, `HTTP ${response.status}`);
  useImage(await response.blob(), src.split("/").pop());
}

function wireInputs() {
  $("file").addEventListener("change", (event) => useImage(event.target.files[0]));
  for (const button of document.querySelectorAll("#gallery button")) {
    button.addEventListener("click", () => useExample(button));
  }
  const zone = $("dropzone");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    useImage(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) useImage(file, file.name || "pasted image");
  });
  $("target").addEventListener("change", explain);
  $("top-k").addEventListener("change", explain);
  for (const radio of document.querySelectorAll('input[name="kind"]')) radio.addEventListener("change", explain);
  const opacity = $("opacity");
  const applyOpacity = () => {
    $("heatmap").style.opacity = String(opacity.value / 100);
    $("opacity-value").textContent = `${opacity.value} %`;
  };
  opacity.addEventListener("input", applyOpacity);
  applyOpacity();
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, key.value.trim());
    clearError();
    loadModel().then((loaded) => {
      if (loaded) $("key-panel").open = false; // the key works: out of the way
    });
    explain();
  });
}

wireInputs();
await loadColormaps();
await loadModel();
document.body.dataset.ready = "true";
