// rhtmx-sync browser client (placeholder: live refresh only).
// Reads its configuration from its own <script> tag and turns each change on the
// server's event stream into a `rhtmx:<entity>:changed` event on document.body.
(() => {
  "use strict";
  const script = document.currentScript;
  const base = script ? new URL(script.src, location.href).pathname.replace(/\/client\.js$/, "") : "/api/sync";
  const entities = ((script && script.dataset.syncEntities) || "").split(",").map((s) => s.trim()).filter(Boolean);
  const debug = script && script.dataset.debug === "true";
  const log = (...args) => debug && console.debug("[rhtmx-sync]", ...args);

  const pending = new Map();
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    for (const [entity, detail] of pending) {
      document.body.dispatchEvent(new CustomEvent(`rhtmx:${entity}:changed`, { detail }));
    }
    pending.clear();
  };

  const query = entities.length ? `?entities=${encodeURIComponent(entities.join(","))}` : "";
  const source = new EventSource(`${base}/events${query}`);
  source.onmessage = (message) => {
    const change = JSON.parse(message.data);
    log("change", change);
    pending.set(change.entity, change);
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(flush);
    }
  };
  source.addEventListener("reset", () => {
    for (const entity of entities) pending.set(entity, { entity, action: "reset" });
    requestAnimationFrame(flush);
  });
  addEventListener("pagehide", () => source.close());
  window.RhtmxSync = { entities, source };
})();
