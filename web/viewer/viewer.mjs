// Dream Window viewer: plays a session's frames strictly in order with a crossfade.
//
// Used by the standalone page (index.html, served at /dream_window/view/<session>) and by the
// graph-UI panel (web/js/dream_window.js imports this module from /dream_window/assets/viewer.mjs).
// Frames come from the session's PNG stream (GET /dream_window/stream/<session>?format=png): one
// connection, paced by the server at the playback rate, each part the frame file itself with its
// index in an X-Dream-Window-Frame header. No ComfyUI tab and no websocket are needed.
//
// This file is .mjs on purpose: ComfyUI's frontend loads every *.js under web/ as an extension.

export const DEFAULT_CROSSFADE = 0.75;
/** The crossfade never runs longer than this share of the frame interval, so fades never pile up. */
const FADE_SHARE = 0.8;
const RETRY_MS = 2000;
const STATUS_MS = 1000;
const HISTORY = 500;
const CRLF2 = [13, 10, 13, 10];

/**
 * The parts of a multipart/x-mixed-replace response as {index, type, bytes}, in arrival order.
 * Every part carries Content-Length (the server always sends it), so no scanning for the boundary
 * inside image data is needed.
 */
export async function* readParts(response) {
  const boundary = /boundary="?([^";]+)"?/.exec(response.headers.get("Content-Type") ?? "")?.[1];
  if (!boundary) throw new Error("the stream is not multipart");
  const reader = response.body.getReader();
  const text = new TextDecoder();
  let buf = new Uint8Array(0); // unread bytes; a part always starts at buf[0]
  const more = async () => {
    const { value, done } = await reader.read();
    if (done) return false;
    const next = new Uint8Array(buf.length + value.length);
    next.set(buf);
    next.set(value, buf.length);
    buf = next;
    return true;
  };
  try {
    for (;;) {
      let end;
      for (;;) {
        let skip = 0;
        while (buf[skip] === 13 || buf[skip] === 10) skip++; // the CRLF that closes the previous part
        buf = buf.subarray(skip);
        end = indexOf(buf, CRLF2);
        if (end >= 0) break;
        if (!(await more())) return;
      }
      const [first, ...lines] = text.decode(buf.subarray(0, end)).split("\r\n");
      if (first.trim() !== `--${boundary}`) throw new Error(`malformed stream part: ${first.slice(0, 40)}`);
      const headers = Object.fromEntries(lines.map((line) => {
        const colon = line.indexOf(":");
        return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()];
      }));
      const length = Number(headers["content-length"]);
      const index = Number(headers["x-dream-window-frame"]);
      if (!Number.isSafeInteger(length) || !Number.isSafeInteger(index)) throw new Error("stream part without length or index");
      const start = end + 4;
      while (buf.length - start < length) if (!(await more())) return;
      yield { index, type: headers["content-type"] ?? "image/png", bytes: buf.slice(start, start + length) };
      buf = buf.subarray(start + length);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function indexOf(haystack, needle) {
  outer: for (let i = 0; i <= haystack.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/**
 * Two stacked <img> elements: each new frame is decoded off-screen (while the previous fade still
 * runs), then put on top and faded in over the frame below, which stays fully opaque. The image on
 * top (class dw-front) is the frame displayed: its index is in data-frame on it and on the
 * container, and `history` lists the recent indices, oldest first.
 */
export class CrossfadeStage {
  constructor(container, { crossfade = DEFAULT_CROSSFADE, fit = "contain" } = {}) {
    this.el = container;
    this.el.classList.add("dw-stage");
    Object.assign(this.el.style, { overflow: "hidden", background: "#000" });
    if (getComputedStyle(container).position === "static") this.el.style.position = "relative";
    this.fit = fit;
    this.crossfade = crossfade;
    this.interval = 1 / 3.5; // seconds between frames; callers set it from the session's target fps
    this.front = null;
    this.fade = null;
    this.index = null;
    this.history = [];
    this.generation = 0; // bumped by clear(), so a frame still decoding then is dropped
  }

  /** Seconds the next crossfade takes: the requested time, capped below the frame interval. */
  get fadeSeconds() {
    return Math.max(0, Math.min(this.crossfade, FADE_SHARE * this.interval));
  }

  /** Show frame `index` (image bytes in `blob`); resolves once its fade has started. */
  async show(blob, index) {
    const generation = this.generation;
    const img = document.createElement("img");
    img.alt = "";
    Object.assign(img.style, { position: "absolute", inset: "0", width: "100%", height: "100%", objectFit: this.fit });
    img.src = URL.createObjectURL(blob);
    try {
      await img.decode();
    } catch {
      URL.revokeObjectURL(img.src);
      return false; // a corrupt part: keep showing the current frame
    }
    // The frame below may only change once the fade above it has finished, or the change would show.
    await this.fade?.finished.catch(() => {});
    if (generation !== this.generation) {
      URL.revokeObjectURL(img.src);
      return false;
    }
    for (const old of this.el.querySelectorAll("img")) {
      if (old === this.front) continue;
      URL.revokeObjectURL(old.src);
      old.remove();
    }
    this.front?.classList.remove("dw-front");
    img.classList.add("dw-front");
    img.dataset.frame = this.el.dataset.frame = String(index);
    this.el.append(img); // later in the DOM is on top
    this.fade = img.animate([{ opacity: 0 }, { opacity: 1 }],
                            { duration: this.fadeSeconds * 1000, easing: "linear", fill: "backwards" });
    this.front = img;
    this.index = index;
    this.history.push(index);
    if (this.history.length > HISTORY) this.history.shift();
    return true;
  }

  clear() {
    this.generation += 1;
    this.fade?.cancel();
    for (const img of this.el.querySelectorAll("img")) {
      URL.revokeObjectURL(img.src);
      img.remove();
    }
    delete this.el.dataset.frame;
    this.front = this.fade = this.index = null;
  }
}

/**
 * Reads a session's frame stream and shows it on a CrossfadeStage, newest first when behind:
 * the reader keeps only the latest unshown part, so a slow display skips frames (still in order)
 * instead of letting the connection back up. Reconnects after errors and after the end of a
 * stream (a stopped session) until `stop()`.
 */
export class FramePlayer {
  constructor(container, { streamUrl, crossfade = DEFAULT_CROSSFADE, fit = "contain",
                           onFrame = () => {}, onError = () => {} }) {
    this.stage = new CrossfadeStage(container, { crossfade, fit });
    this.streamUrl = streamUrl;
    this.onFrame = onFrame;
    this.onError = onError;
    this.pending = null;
    this.wake = null;
    this.abort = null;
  }

  start() {
    this.abort = new AbortController();
    this.#read(this.abort.signal);
    this.#display(this.abort.signal);
    return this;
  }

  stop() {
    this.abort?.abort();
    this.wake?.();
    this.stage.clear();
  }

  async #read(signal) {
    while (!signal.aborted) {
      try {
        const response = await fetch(this.streamUrl, { signal, cache: "no-store" });
        if (!response.ok) throw new Error(await errorText(response));
        let fresh = true; // the first part of this connection
        for await (const part of readParts(response)) {
          const last = this.pending?.index ?? this.stage.index;
          // Strictly increasing; the one exception is the first part of a new connection with a
          // lower index, which means the session was deleted and made again (numbering restarted).
          const accept = last === null || part.index > last || (fresh && part.index < last);
          fresh = false;
          if (!accept) continue;
          this.pending = { index: part.index, blob: new Blob([part.bytes], { type: part.type }) };
          this.wake?.();
        }
        // The server ends a stream once the session stops and its last frame was sent: look again
        // later (it may be started again), without an error.
      } catch (error) {
        if (signal.aborted) return;
        this.onError(error);
      }
      await sleep(RETRY_MS, signal);
    }
  }

  async #display(signal) {
    while (!signal.aborted) {
      if (!this.pending) {
        await new Promise((resolve) => { this.wake = resolve; });
        continue;
      }
      const { index, blob } = this.pending;
      this.pending = null;
      if (await this.stage.show(blob, index)) this.onFrame(index);
    }
  }
}

/** The error text of a failed response (the routes answer {"error": "..."}). */
export async function errorText(response) {
  try {
    return (await response.json()).error ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/** The status line as [key, text] pairs: the frame displayed (`frame`), then the session's status. */
export function statusFields(status, frame) {
  const fps = status.fps_achieved == null ? "–" : Number(status.fps_achieved).toFixed(1);
  const fields = [
    ["frame", `frame ${frame ?? "–"}`],
    ["fps", `${fps}/${status.target_fps} fps`],
    ["state", status.paused_reason ? `${status.state}: ${status.paused_reason}` : status.state],
    ["buffer", `buffer ${status.buffer_seconds ?? 0} s`],
    ["cache", `cache ${status.cache_size}`],
    ["prompt", status.current_prompt],
  ];
  if (status.error_message) fields.push(["error", status.error_message]);
  return fields;
}

/** Fill `element` with one span per status field (data-key names the field, data-state the state). */
export function renderStatus(element, status, frame) {
  element.replaceChildren(...statusFields(status, frame).map(([key, text]) => {
    const span = document.createElement("span");
    span.dataset.key = key;
    span.textContent = span.title = text;
    return span;
  }));
  element.dataset.state = status.state;
}

/** A number from the query string, or `fallback` when absent or not a finite number >= 0. */
function queryNumber(params, key, fallback) {
  const value = Number.parseFloat(params.get(key) ?? "");
  return Number.isFinite(value) && value >= 0 ? value : fallback;
}

/**
 * The standalone page. Query parameters: crossfade=<seconds> (default 0.75, capped below the frame
 * interval), chrome=0 (no status line or buttons: OBS browser source), fit=cover (fill the window,
 * cropping; default contain), format=jpeg (smaller frames for remote viewing; default png, lossless).
 */
export function runViewerPage() {
  const params = new URLSearchParams(location.search);
  const session = decodeURIComponent(location.pathname.split("/").pop());
  const base = new URL("..", location.href); // .../dream_window/ (also under /api/ or a proxy prefix)
  const route = (path) => new URL(path, base).href;
  const format = params.get("format") === "jpeg" ? "jpeg" : "png";
  const $ = (id) => document.getElementById(id);
  const message = (text) => { $("message").textContent = text; $("message").hidden = !text; };
  let status = null;
  const showStatus = () => status && renderStatus($("status"), status, player.stage.index);

  document.title = `${session} · Dream Window`;
  if (params.get("chrome") === "0") document.body.classList.add("dw-no-chrome");

  const player = new FramePlayer($("stage"), {
    streamUrl: route(`stream/${encodeURIComponent(session)}?format=${format}`),
    crossfade: queryNumber(params, "crossfade", DEFAULT_CROSSFADE),
    fit: params.get("fit") === "cover" ? "cover" : "contain",
    onFrame: () => { message(""); showStatus(); },
    onError: (error) => message(`${error.message} · retrying`),
  }).start();
  window.dreamWindowViewer = player; // for tests and the console: player.stage.history, player.stage.index

  const pollStatus = async () => {
    try {
      const response = await fetch(route(`status/${encodeURIComponent(session)}`), { cache: "no-store" });
      if (!response.ok) throw new Error(await errorText(response));
      status = await response.json();
      if (status.target_fps > 0) player.stage.interval = 1 / status.target_fps;
      showStatus();
      if (player.stage.index === null) message(status.state === "buffering" ? "buffering…" : `session ${status.state}`);
    } catch (error) {
      message(error.message);
    }
  };
  pollStatus();
  setInterval(pollStatus, STATUS_MS);

  for (const button of document.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", async () => {
      const action = button.dataset.action;
      if (action === "fullscreen") return toggleFullscreen();
      const response = await fetch(route(action), {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ session }),
      });
      if (!response.ok) message(`${action}: ${await errorText(response)}`);
      pollStatus();
    });
  }
  $("stage").addEventListener("dblclick", toggleFullscreen);

  // The buttons show while the pointer moves or a key is pressed and fade out after a few quiet
  // seconds; Escape hides them at once (and takes the focus off them). In full screen the browser
  // keeps Escape for itself: it leaves full screen.
  let idle;
  const quiet = () => document.body.classList.add("dw-idle");
  const awake = () => {
    document.body.classList.remove("dw-idle");
    clearTimeout(idle);
    idle = setTimeout(quiet, 3000);
  };
  for (const type of ["pointermove", "pointerdown"]) document.addEventListener(type, awake);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      document.activeElement?.blur();
      clearTimeout(idle);
      return quiet();
    }
    awake();
    if (event.key === "f" && !(event.ctrlKey || event.metaKey || event.altKey)) toggleFullscreen();
  });
  awake();
}

function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else document.documentElement.requestFullscreen().catch(() => {});
}
