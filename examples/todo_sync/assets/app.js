// The todo_sync page's own script: shows what waits to sync, what the server refused,
// and what conflicted, from rhtmx-sync's events and its outbox. Nothing here is needed
// for sync itself; it is how an app can make the offline state visible.
(() => {
  "use strict";
  const $ = (sel) => document.querySelector(sel);

  /** A queued request in the user's terms: its `data-rhtmx-label`, filled in by the client. */
  const describe = (entry) => entry.label || `${entry.method} ${new URL(entry.url).pathname}`;

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
    // The list itself is the client's (`data-rhtmx-pending-list`); the panel shows it.
    $("#pending-panel").hidden = (await RhtmxSync.pending()).length === 0;
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
    // A todo added online clears its form once the server took it (htmx 2 names the
    // event `htmx:afterRequest`, htmx 4 `htmx:after:request`, with another detail).
    const added = (elt, ok) => elt && elt.id === "new-todo" && ok && elt.reset();
    document.body.addEventListener("htmx:afterRequest", (e) => e.detail.xhr && added(e.detail.elt, e.detail.successful));
    document.body.addEventListener("htmx:after:request", (e) => {
      const ctx = e.detail.ctx;
      added(ctx.sourceElement, ctx.response && ctx.response.status < 400);
    });
    render();
  });
})();
