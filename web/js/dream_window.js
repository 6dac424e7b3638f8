// Dream Window: graph-UI side. Uses only the frontend's public extension API (app.registerExtension,
// api.addEventListener, app.extensionManager); nothing is drawn on the LiteGraph canvas.
//
// * A toast when a session pauses on an error, and when the GPU monitor yields the GPU or resumes.
// * The pack's settings in ComfyUI's settings dialog (category "Dream Window"); the server reads them
//   from ComfyUI's stored settings, with environment variables as overrides for headless servers.
// * A "Dream Window" sidebar tab: the sessions with their state, frames and disk use; the selected
//   session's live crossfading window (the viewer page's player, imported from the pack's route),
//   its status, start/pause/stop/reset/delete, and export as animated WebP, MP4 or a zip of the session; "d" toggles it and
//   it works from the keyboard (focus, Space/Enter, Escape closes it).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const TAB_ID = "dream-window";
const TAB_TOOLTIP = "Dream Window: live sessions, playback and export"; // starts the sidebar button's accessible name
const TOGGLE_COMMAND = `Workspace.ToggleSidebarTab.${TAB_ID}`; // the frontend makes one per sidebar tab
const LIST_POLL_MS = 5000; // disk use is not in the events; the list is re-read this often while shown
const ACTIONS = ["start", "pause", "stop", "reset", "delete"];

let selected = null; // the selected session, kept while the tab is closed and reopened

function toast(severity, summary, detail) {
  const toasts = app.extensionManager?.toast;
  if (toasts) toasts.add({ severity, summary, detail, life: 8000 });
  else console.warn(`${summary}: ${detail}`);
}

async function confirmDialog(title, message) {
  const dialog = app.extensionManager?.dialog;
  if (dialog?.confirm) return (await dialog.confirm({ title, message, type: "delete" })) === true;
  return window.confirm(`${title}\n\n${message}`);
}

/** A pack route through the frontend's API helper (adds the /api prefix and any deployment base). */
async function callRoute(route, init) {
  const response = await api.fetchApi(route, { cache: "no-store", ...init });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).error ?? message;
    } catch { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return response;
}

function postJson(route, body) {
  return callRoute(route, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

function formatBytes(bytes) {
  if (bytes == null) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(unit && value < 10 ? 1 : 0)} ${units[unit]}`;
}

function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "dataset") Object.assign(element.dataset, value);
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, value);
  }
  element.append(...children);
  return element;
}

const STYLE = `
.dw-panel { display: flex; flex-direction: column; gap: 10px; padding: 10px; height: 100%; overflow-y: auto;
  box-sizing: border-box; font-size: 13px; color: var(--fg-color, #ddd); }
.dw-panel h3 { margin: 0; font-size: 14px; font-weight: 600; }
.dw-panel table { width: 100%; border-collapse: collapse; font-size: 12px; }
.dw-panel th { text-align: left; font-weight: 500; color: var(--descrip-text, #999); padding: 2px 3px; }
.dw-panel td { padding: 3px; border-top: 1px solid var(--border-color, #444); white-space: nowrap; }
.dw-panel td.dw-name { max-width: 0; width: 100%; overflow: hidden; text-overflow: ellipsis; }
.dw-panel td.dw-num { text-align: right; font-variant-numeric: tabular-nums; }
.dw-panel tbody tr { cursor: pointer; }
.dw-panel button.dw-select { all: unset; display: block; overflow: hidden; text-overflow: ellipsis; cursor: pointer; }
.dw-panel :focus-visible, .dw-panel button.dw-select:focus-visible { outline: 2px solid var(--p-primary-color, #4a9eff);
  outline-offset: 1px; }
.dw-panel tbody tr:hover { background: var(--comfy-input-bg, #222); }
.dw-panel tbody tr.dw-selected { background: var(--comfy-menu-secondary-bg, #333); }
.dw-panel .dw-state-error, .dw-panel .dw-state-broken { color: #ff8a80; }
.dw-panel .dw-empty { color: var(--descrip-text, #999); }
.dw-panel .dw-window { width: 100%; aspect-ratio: 2 / 1; border-radius: 4px; }
.dw-panel .dw-status { display: flex; flex-wrap: wrap; gap: 2px 12px; font-variant-numeric: tabular-nums;
  color: var(--descrip-text, #aaa); }
.dw-panel .dw-status [data-key="prompt"], .dw-panel .dw-status [data-key="error"] { flex-basis: 100%; font-style: italic; }
.dw-panel .dw-status[data-state="error"] [data-key="error"] { color: #ff8a80; font-style: normal; }
.dw-panel .dw-row { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.dw-panel .dw-detail { display: flex; flex-direction: column; gap: 8px; }
.dw-panel .dw-head { justify-content: space-between; }
.dw-panel button, .dw-panel select, .dw-panel input { font: inherit; color: inherit; background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #555); border-radius: 4px; padding: 3px 8px; }
.dw-panel button { cursor: pointer; }
.dw-panel button:hover { filter: brightness(1.3); }
.dw-panel button:disabled { opacity: 0.5; cursor: default; filter: none; }
.dw-panel input[type=number] { width: 4.5em; }
.dw-panel a { color: inherit; }
.dw-panel [hidden] { display: none !important; }
`;

/** The sidebar tab's content for as long as the tab is open. */
class DreamWindowPanel {
  constructor(root, viewer) {
    this.viewer = viewer; // the viewer page's module: FramePlayer, renderStatus
    this.player = null;
    this.status = null;
    this.sessions = [];

    this.list = h("tbody");
    this.window = h("div", { class: "dw-window" });
    this.statusLine = h("div", { class: "dw-status" });
    this.title = h("h3", {}, "No session selected");
    this.viewerLink = h("a", { target: "_blank", rel: "noopener", title: "Full-window viewer (also for OBS)",
                               "aria-label": "Open the full-window viewer in a new tab" }, "Open viewer ↗");
    this.buttons = ACTIONS.map((action) => h("button", { type: "button", dataset: { action },
                                                          onclick: () => this.control(action) },
                                               action[0].toUpperCase() + action.slice(1)));
    this.format = h("select", { "aria-label": "Export format" }, h("option", { value: "webp" }, "WebP"),
                    h("option", { value: "mp4" }, "MP4"), h("option", { value: "zip" }, "Zip (frames + state)"));
    this.first = h("input", { type: "number", min: "1", placeholder: "first", "aria-label": "First frame",
                              title: "First frame to export (empty: the oldest on disk)" });
    this.last = h("input", { type: "number", min: "1", placeholder: "last", "aria-label": "Last frame",
                             title: "Last frame to export (empty: the newest)" });
    this.exportButton = h("button", { type: "button", dataset: { action: "export" }, onclick: () => this.export() },
                          "Export");
    this.detail = h("section", { class: "dw-detail" },
                    h("div", { class: "dw-row dw-head" }, this.title, this.viewerLink),
                    this.window, this.statusLine, h("div", { class: "dw-row" }, ...this.buttons),
                    h("div", { class: "dw-row" }, "Frames", this.first, "–", this.last),
                    h("div", { class: "dw-row" }, this.format, this.exportButton));
    this.root = h("div", { class: "dw-panel", role: "region", "aria-label": "Dream Window", tabindex: "-1",
                           onkeydown: (event) => this.onKey(event) },
      h("h3", {}, "Dream Window sessions"),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "session"), h("th", {}, "state"),
                                                h("th", {}, "frames"), h("th", {}, "disk"))), this.list),
      this.detail);
    root.replaceChildren(this.root);
    this.root.focus(); // opened from the keyboard, Tab goes on to the sessions

    this.onSession = () => this.refresh();
    this.onStatus = ({ detail }) => { // the selection outlives a closed panel: its player starts on the first refresh
      if (detail?.session === selected && this.player) this.showStatus(detail);
    };
    api.addEventListener("dream_window.session", this.onSession);
    api.addEventListener("dream_window.status", this.onStatus);
    this.poll = setInterval(() => this.refresh(), LIST_POLL_MS);
    this.refresh();
  }

  destroy() {
    clearInterval(this.poll);
    api.removeEventListener("dream_window.session", this.onSession);
    api.removeEventListener("dream_window.status", this.onStatus);
    this.player?.stop();
  }

  async refresh() {
    try {
      this.sessions = (await (await callRoute("/dream_window/sessions")).json()).sessions;
    } catch (error) {
      this.list.replaceChildren(h("tr", {}, h("td", { colspan: "4", class: "dw-empty" }, error.message)));
      return;
    }
    if (!this.sessions.some((s) => s.session === selected)) {
      this.select((this.sessions.find((s) => s.state === "running") ?? this.sessions[0])?.session ?? null);
    }
    const focused = this.list.contains(document.activeElement) ? document.activeElement.closest("tr").dataset.session
                                                               : null;
    this.list.replaceChildren(...this.sessions.map((s) => h("tr", {
      dataset: { session: s.session }, class: s.session === selected ? "dw-selected" : "",
      onclick: () => this.select(s.session),
    }, h("td", { class: "dw-name", title: s.session },
         h("button", { type: "button", class: "dw-select", "aria-pressed": String(s.session === selected) }, s.session)),
       h("td", { dataset: { field: "state" }, class: `dw-state-${s.state}`, title: s.paused_reason ?? "" },
         s.paused_reason ? `${s.state} (${s.paused_reason})` : s.state),
       h("td", { class: "dw-num", dataset: { field: "frames" } }, String(s.frames ?? "–")),
       h("td", { class: "dw-num", dataset: { field: "disk" } }, formatBytes(s.disk_bytes)))));
    if (!this.sessions.length) {
      this.list.append(h("tr", {}, h("td", { colspan: "4", class: "dw-empty" },
                                      "No session yet: open the dream_window template and queue it once.")));
    }
    // The list is rebuilt every few seconds: the keyboard focus stays on its session.
    if (focused !== null) this.row(focused)?.querySelector("button").focus();
  }

  row(name) {
    return [...this.list.children].find((row) => row.dataset.session === name);
  }

  /** Escape closes the panel and gives the focus back to its sidebar button. */
  onKey(event) {
    if (event.key !== "Escape" || event.defaultPrevented) return;
    event.preventDefault();
    app.extensionManager.command?.execute(TOGGLE_COMMAND);
    document.querySelector(`button[aria-label^="${TAB_TOOLTIP}"]`)?.focus();
  }

  select(name) {
    if (name === selected && this.player) return;
    selected = name;
    this.player?.stop();
    this.player = null;
    this.status = null;
    this.statusLine.replaceChildren();
    this.detail.hidden = name === null;
    for (const row of this.list.children) {
      row.classList.toggle("dw-selected", row.dataset.session === name);
      row.querySelector("button")?.setAttribute("aria-pressed", String(row.dataset.session === name));
    }
    if (name === null) return;
    const path = `/dream_window/view/${encodeURIComponent(name)}`;
    this.title.textContent = name;
    this.viewerLink.href = api.apiURL(path);
    // A fresh element per session: a stopped player may still finish the frame it was decoding.
    const stage = h("div", { class: "dw-window", role: "img", "aria-label": `Dream Window ${name}: live frames` });
    this.window.replaceWith(stage);
    this.window = stage;
    const player = new this.viewer.FramePlayer(stage, {
      streamUrl: api.apiURL(`/dream_window/stream/${encodeURIComponent(name)}?format=png`),
      onFrame: () => {
        const img = player.stage.front;
        stage.style.aspectRatio = `${img.naturalWidth} / ${img.naturalHeight}`;
        if (this.status && player === this.player) this.showStatus(this.status);
      },
    });
    this.player = player.start();
    callRoute(`/dream_window/status/${encodeURIComponent(name)}`)
      .then((response) => response.json())
      .then((status) => { if (name === selected) this.showStatus(status); })
      .catch(() => {}); // a session that has not played yet: the status events fill it in
  }

  showStatus(status) {
    this.status = status;
    if (status.target_fps > 0) this.player.stage.interval = 1 / status.target_fps;
    this.viewer.renderStatus(this.statusLine, status, this.player.stage.index);
  }

  async control(action) {
    const session = selected;
    if (action === "delete" && !(await confirmDialog("Delete Dream Window session",
        `Delete session "${session}" with its frames, keyframes and state? This cannot be undone.`))) return;
    try {
      await postJson(`/dream_window/${action}`, { session });
    } catch (error) {
      toast("error", `Dream Window: ${action} "${session}"`, error.message);
    }
    this.refresh();
  }

  async export() {
    const session = selected;
    const body = { session, format: this.format.value };
    for (const key of ["first", "last"]) if (this[key].value) body[key] = Number(this[key].value);
    this.exportButton.disabled = true;
    try {
      const response = await postJson("/dream_window/export", body);
      const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") ?? "")?.[1]
                   ?? `${session}.${body.format}`;
      const url = URL.createObjectURL(await response.blob());
      h("a", { href: url, download: name }).click();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      toast("success", "Dream Window export", `${name}: ${response.headers.get("X-Dream-Window-Frames")} frames`);
    } catch (error) {
      toast("error", `Dream Window: export "${session}"`, error.message);
    } finally {
      this.exportButton.disabled = false;
    }
  }
}

// Registered as the module loads: the frontend opens its websocket before any extension hook runs.
api.addEventListener("dream_window.session", ({ detail }) => {
  if (detail?.state === "paused" && detail.last_error) {
    toast("error", `Dream Window: session "${detail.session}" paused`,
          `${detail.last_error.node_type ?? ""} ${detail.last_error.message ?? ""}`.trim());
  }
});
api.addEventListener("dream_window.monitor", ({ detail }) => {
  if (detail?.yielding) {
    toast("warn", "Dream Window yields the GPU", `${detail.reason}: paused ${detail.paused_sessions.join(", ")}`);
  } else if (detail) {
    toast("info", "Dream Window resumes", "the GPU is free again");
  }
});
// The frontend logs a warning for every websocket event nobody listens to, and these come every
// second and every frame. The panel listens to status events while it is open; frame events are
// for other clients (the panel plays the frame stream).
for (const type of ["dream_window.status", "dream_window.frame"]) api.addEventListener(type, () => {});

// Stored by ComfyUI in the user's comfy.settings.json; the server reads them there (the environment
// variable named in each tooltip overrides the setting on a headless server). A frontend without
// extension settings ignores the list: the environment variables and defaults apply.
const setting = (id, section, type, defaultValue, name, tooltip, attrs) => ({
  id: `DreamWindow.${id}`, category: ["Dream Window", section, id.split(".").pop()], type, defaultValue, name,
  tooltip, ...(type === "combo" ? { options: attrs } : attrs ? { attrs } : {}),
});
const NEXT_START = "Takes effect at the next server start";
const SETTINGS = [
  setting("ResumeOnStart", "Sessions", "boolean", false, "Resume running sessions when the server starts",
          "A session that was running when ComfyUI stopped starts again. "
          + `${NEXT_START}; env DREAM_WINDOW_RESUME_ON_START overrides.`),
  setting("SessionsFolder", "Sessions", "text", "", "Sessions folder (frames and state)",
          "Empty: output/dream_window; a relative path is inside ComfyUI's output folder. "
          + `${NEXT_START}; env DREAM_WINDOW_SESSIONS_FOLDER overrides.`),
  setting("TorchThreads", "Performance", "text", "auto", "Torch CPU threads (auto, keep or a number)",
          "auto frees one core for the frame writer next to a GPU; keep leaves torch alone. "
          + `${NEXT_START}; env DREAM_WINDOW_TORCH_THREADS overrides.`),
  setting("Monitor.Enabled", "GPU monitor", "combo", "auto", "Yield the GPU to other programs",
          "Pause the running sessions while a listed program runs or VRAM runs short. auto: on where a display "
          + "is attached, off on a headless server. Env DREAM_WINDOW_MONITOR overrides.", ["auto", "on", "off"]),
  setting("Monitor.Processes", "GPU monitor", "text", "", "Programs to yield to (comma-separated)",
          "Part of a process name, any case, e.g. eldenring.exe, cyberpunk2077. "
          + "Env DREAM_WINDOW_MONITOR_PROCESSES overrides."),
  setting("Monitor.MinFreeVramGB", "GPU monitor", "number", 0, "Yield when free VRAM is below (GB, 0 = off)",
          "The dream's own VRAM counts as free. Needs nvidia-ml-py and an NVIDIA GPU. "
          + "Env DREAM_WINDOW_MONITOR_MIN_FREE_VRAM_GB overrides.", { min: 0, max: 1024, step: 0.5 }),
  setting("Monitor.MaxOtherVramGB", "GPU monitor", "number", 0,
          "Yield when another process uses more VRAM than (GB, 0 = off)",
          "Needs nvidia-ml-py and an NVIDIA GPU. Env DREAM_WINDOW_MONITOR_MAX_OTHER_VRAM_GB overrides.",
          { min: 0, max: 1024, step: 0.5 }),
  setting("Monitor.CheckInterval", "GPU monitor", "number", 5, "Check every (seconds)",
          "Env DREAM_WINDOW_MONITOR_INTERVAL overrides.", { min: 0.2, max: 3600, step: 1 }),
  setting("Monitor.ResumeAfter", "GPU monitor", "number", 30, "Resume after the GPU is free for (seconds)",
          "Long enough that a game's loading screen does not flap it. "
          + "Env DREAM_WINDOW_MONITOR_RESUME_AFTER overrides.", { min: 0, max: 86400, step: 5 }),
  setting("Monitor.KeepModels", "GPU monitor", "boolean", false, "Keep the models loaded while yielding",
          "Off: ComfyUI unloads its models and frees memory when the dream yields; the first keyframe after "
          + "resuming reloads them. Env DREAM_WINDOW_MONITOR_KEEP_MODELS overrides."),
];

app.registerExtension({
  name: "dream_window.core",
  settings: SETTINGS,
  // "d" opens and closes the panel (the frontend's own command for the tab; shown in its keybinding settings).
  keybindings: [{ combo: { key: "d" }, commandId: TOGGLE_COMMAND }],
  setup() {
    const manager = app.extensionManager;
    if (!manager?.registerSidebarTab) {
      console.warn("Dream Window: this ComfyUI frontend has no sidebar tabs; use /dream_window/view/<session>");
      return;
    }
    document.head.append(h("style", { id: "dream-window-style" }, STYLE));
    let viewer = null; // the viewer page's module, imported when the tab first opens
    let panel = null;
    let mounts = 0;
    manager.registerSidebarTab({
      id: TAB_ID,
      icon: "pi pi-images",
      title: "Dream Window",
      tooltip: TAB_TOOLTIP,
      type: "custom",
      render: async (el) => {
        const mount = ++mounts;
        panel?.destroy();
        panel = null;
        viewer ??= import(api.apiURL("/dream_window/assets/viewer.mjs"));
        let module;
        try {
          module = await viewer;
        } catch (error) {
          viewer = null; // try again next time the tab opens
          el.textContent = `Dream Window: cannot load the viewer module (${error.message})`;
          return;
        }
        if (mount === mounts) panel = new DreamWindowPanel(el, module); // not closed meanwhile
      },
      destroy: () => {
        mounts += 1;
        panel?.destroy();
        panel = null;
      },
    });
  },
});
