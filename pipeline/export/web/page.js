// The offline page of `pipeline export --page`: decodes each image in the browser, runs the
// exported ONNX model with ONNX Runtime Web (WebAssembly, one thread) and lists the top classes.
// Everything comes from files beside this one, loaded by <script> tags, so the page works from
// file:// (where fetch() of local files is blocked) and with the network off:
//   ort/ort.wasm.min.js  ONNX Runtime Web (global `ort`)
//   ort/ort-wasm.js      its WebAssembly binary and loader, base64 (PIPELINE_ORT_WASM)
//   model.js             the model, base64, and its class names (PIPELINE_MODEL)
// Each result is also machine-readable: <li class="result" data-probabilities="[...]"
// data-label="..." data-decode-ms data-run-ms> (data-error="..." when it failed).
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const status = $("status");
  const input = $("file");
  const drop = $("drop");
  const results = $("results");
  const model = globalThis.PIPELINE_MODEL;
  const runtime = globalThis.PIPELINE_ORT_WASM;
  let session = null;
  let queue = Promise.resolve();
  // Milliseconds since navigation started when this last script runs: all scripts read.
  const scriptsMs = performance.now();

  function say(text, failed = false) {
    status.textContent = text;
    status.classList.toggle("failed", failed);
    if (failed) status.setAttribute("role", "alert");
  }

  function bytesFromBase64(text) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text);
    const raw = atob(text);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  async function createSession() {
    if (typeof ort === "undefined" || !runtime) {
      throw new Error("ONNX Runtime Web is missing: ort/ort.wasm.min.js or ort/ort-wasm.js did not load");
    }
    if (!model) throw new Error("the model is missing: model.js did not load");
    // One thread: threads need SharedArrayBuffer, which needs cross-origin isolation (headers
    // a file:// page cannot send). No proxy worker: a worker cannot be started from file://.
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.proxy = false;
    ort.env.wasm.wasmBinary = bytesFromBase64(runtime.wasm);
    // The loader is an ES module that ONNX Runtime imports; a blob: URL is importable from file://.
    const loader = new Blob([bytesFromBase64(runtime.loader)], { type: "text/javascript" });
    ort.env.wasm.wasmPaths = { mjs: URL.createObjectURL(loader) };
    ort.env.logLevel = "error";
    return ort.InferenceSession.create(bytesFromBase64(model.bytes), {
      executionProviders: ["wasm"],
      logSeverityLevel: 3, // errors only: a warning (an unused initializer) is no console error
    });
  }

  async function decode(file) {
    // The image's own pixels at its natural size: no colour-space conversion (as PIL reads
    // them), EXIF orientation applied (as `pipeline predict` does), alpha dropped.
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, {
        colorSpaceConversion: "none",
        premultiplyAlpha: "none",
      });
    } catch (err) {
      throw new Error("not an image this browser can decode");
    }
    const { width, height } = bitmap;
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    const rgba = context.getImageData(0, 0, width, height).data;
    const rgb = new Uint8Array(width * height * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
      rgb[j] = rgba[i];
      rgb[j + 1] = rgba[i + 1];
      rgb[j + 2] = rgba[i + 2];
    }
    return { tensor: new ort.Tensor("uint8", rgb, [1, height, width, 3]), width, height };
  }

  async function classify(tensor) {
    let outputs;
    try {
      outputs = await session.run({ [model.input]: tensor }, [model.output]);
    } catch (err) {
      throw new Error(`the model failed on this image: ${err.message || err}`);
    }
    const probabilities = Array.from(outputs[model.output].data);
    if (probabilities.length !== model.classNames.length) {
      throw new Error(
        `the model gave ${probabilities.length} probabilities for ${model.classNames.length} classes`,
      );
    }
    return probabilities;
  }

  function element(tag, attributes = {}, text = null) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (text !== null) node.textContent = text;
    return node;
  }

  function showResult(item, probabilities) {
    const order = probabilities.map((p, i) => i).sort((a, b) => probabilities[b] - probabilities[a]);
    const top = order.slice(0, Math.min(model.topK, order.length));
    item.dataset.probabilities = JSON.stringify(probabilities);
    item.dataset.label = model.classNames[order[0]];
    const table = element("table");
    table.append(
      element("caption", { class: "visually-hidden" }, `Top ${top.length} of ${order.length} classes`),
    );
    const head = element("tr");
    head.append(element("th", { scope: "col" }, "class"));
    head.append(element("th", { scope: "col", class: "p" }, "probability"));
    head.append(element("td", { "aria-hidden": "true" }));
    table.appendChild(element("thead")).append(head);
    const body = table.appendChild(element("tbody"));
    top.forEach((index, rank) => {
      const p = probabilities[index];
      const row = element("tr", rank === 0 ? { class: "top" } : {});
      row.dataset.class = model.classNames[index];
      row.append(element("th", { scope: "row" }, model.classNames[index]));
      row.append(element("td", { class: "p" }, `${(100 * p).toFixed(1)} %`));
      const bar = element("td", { class: "bar", "aria-hidden": "true" });
      bar.append(element("span", { style: `width: ${Math.max(0, Math.min(100, 100 * p))}%` }));
      row.append(bar);
      body.append(row);
    });
    item.querySelector(".body").append(table);
  }

  async function handle(file) {
    const item = element("li", { class: "result" });
    item.dataset.file = file.name;
    const thumb = element("img", { alt: "" });
    const body = element("div", { class: "body" });
    const title = element("h2", {}, file.name);
    body.append(title);
    item.append(thumb, body);
    results.prepend(item);
    try {
      const started = performance.now();
      const { tensor, width, height } = await decode(file);
      const decoded = performance.now();
      thumb.src = URL.createObjectURL(file);
      thumb.alt = file.name;
      title.append(" ", element("span", { class: "size" }, `${width} × ${height}`));
      const probabilities = await classify(tensor);
      item.dataset.decodeMs = (decoded - started).toFixed(1);
      item.dataset.runMs = (performance.now() - decoded).toFixed(1);
      showResult(item, probabilities);
    } catch (err) {
      item.classList.add("error");
      item.dataset.error = err.message;
      body.append(element("p", { class: "error-message", role: "alert" }, err.message));
    }
  }

  function enqueue(files) {
    if (!session) return;
    const list = Array.from(files);
    if (list.length === 0) return;
    queue = queue.then(async () => {
      say(`Classifying ${list.length} image${list.length > 1 ? "s" : ""}…`);
      for (const file of list) await handle(file);
      say("Ready: drop or choose more images.");
      document.body.dataset.done = String(results.children.length);
    });
  }

  // Anything unexpected is shown, not only logged.
  window.addEventListener("error", (event) => say(`Error: ${event.message}`, true));
  window.addEventListener("unhandledrejection", (event) =>
    say(`Error: ${(event.reason && event.reason.message) || event.reason}`, true),
  );

  input.addEventListener("change", () => {
    enqueue(input.files);
    input.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    document.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    document.addEventListener(name, (event) => {
      event.preventDefault();
      if (name === "drop" || event.target === drop) drop.classList.remove("over");
    });
  }
  document.addEventListener("drop", (event) => enqueue(event.dataTransfer.files));

  function describe() {
    document.title = model.title;
    $("heading").textContent = model.title;
    const version = runtime && runtime.version ? ` ${runtime.version}` : "";
    const digest = model.sha256 ? `; model sha256 ${model.sha256.slice(0, 12)}…` : "";
    $("about").textContent =
      `${model.classNames.length} classes${digest}; ONNX Runtime Web${version}. ` +
      "Runs in this page, offline: nothing is uploaded.";
  }

  (async () => {
    try {
      session = await createSession();
      describe();
    } catch (err) {
      document.body.dataset.state = "failed";
      say(`Could not load the model: ${err.message || err}`, true);
      return;
    }
    // Milliseconds since navigation started: reading the scripts, decoding, creating the session.
    document.body.dataset.scriptsMs = String(Math.round(scriptsMs));
    document.body.dataset.loadMs = String(Math.round(performance.now()));
    document.body.dataset.state = "ready";
    input.disabled = false;
    say("Ready: drop or choose images.");
  })();
})();
