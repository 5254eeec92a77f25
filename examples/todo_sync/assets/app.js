// The todo_sync page's own script: shows what waits to sync, what the server refused,
// and what conflicted, from rhtmx-sync's events and its outbox. Nothing here is needed
// for sync itself; it is how an app can make the offline state visible.
(() => {
  "use strict";
  const $ = (sel) => document.querySelector(sel);

  /** A one-line description of a queued request, in the user's terms. */
  function describe(entry) {
    const fields = Object.fromEntries(entry.body || []);
    const path = new URL(entry.url).pathname;
    const title = (fields.title || "").trim();
    if (entry.method === "POST" && path === "/todos") return `Add “${title}”`;
    if (entry.method === "PUT") return `Rename to “${title}”`;
    if (path.endsWith("/toggle")) return fields.completed === "true" ? "Mark done" : "Mark not done";
    if (entry.method === "DELETE") return "Delete a todo";
    return `${entry.method} ${path}`;
  }

  function item(text, actions = []) {
    const li = document.createElement("li");
    const span = document.createElement("span");
    span.textContent = text;
    li.append(span);
    for (const [label, run] of actions) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = label;
      button.addEventListener("click", run);
      li.append(button);
    }
    return li;
  }

  async function render() {
    if (!window.RhtmxSync) return;
    const pending = await RhtmxSync.pending();
    $("#pending-list").replaceChildren(...pending.map((e) => item(describe(e))));
    $("#pending-panel").hidden = pending.length === 0;
    const dead = await RhtmxSync.deadLetters();
    $("#rejected-list").replaceChildren(
      ...dead.map((e) =>
        item(`${describe(e)} — ${e.reason === "expired" ? "expired" : `refused (${e.status}): ${e.response || ""}`}`, [
          ["Retry", () => RhtmxSync.retry(e.seq).then(render)],
          ["Discard", () => RhtmxSync.discard(e.seq).then(render)],
        ]),
      ),
    );
    $("#rejected-panel").hidden = dead.length === 0;
  }

  function conflict(e) {
    const d = e.detail || {};
    const fields = Object.entries(d.fields || {});
    const what = fields.length
      ? fields.map(([name, f]) => `${name}: kept “${f.resolved ?? "(deleted)"}”` + (f.outcome === "server" ? `, not “${f.client}”` : f.server !== undefined ? `, not “${f.server}”` : "")).join("; ")
      : d.reason === "deleted" ? "the todo was deleted elsewhere" : "";
    $("#conflict-list").prepend(item(what));
    $("#conflict-panel").hidden = false;
  }

  addEventListener("DOMContentLoaded", () => {
    for (const name of ["queued", "replayed", "rejected", "online", "offline"]) {
      document.body.addEventListener("rhtmx:" + name, render);
    }
    document.body.addEventListener("rhtmx:conflict", conflict);
    // A write kept for later is as good as sent: clear the form it came from.
    document.body.addEventListener("rhtmx:queued", (e) => {
      const form = e.detail.entry.source && document.querySelector(e.detail.entry.source);
      if (form && form.id === "new-todo") form.reset();
    });
    render();
  });
})();
