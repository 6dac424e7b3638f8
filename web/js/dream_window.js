// Dream Window: graph-UI side. Uses only the frontend's public extension API.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

function toast(severity, summary, detail) {
  const toasts = app.extensionManager?.toast;
  if (toasts) toasts.add({ severity, summary, detail, life: 8000 });
  else console.warn(`${summary}: ${detail}`);
}

app.registerExtension({
  name: "dream_window.core",
  setup() {
    api.addEventListener("dream_window.session", ({ detail }) => {
      if (detail?.state === "paused" && detail.last_error) {
        toast("error", `Dream Window: session "${detail.session}" paused`,
              `${detail.last_error.node_type ?? ""} ${detail.last_error.message ?? ""}`.trim());
      }
    });
  },
});
