// rhtmx-sync developer overlay: loaded by client.js only with data-debug="true" on its
// script tag, never otherwise. A button in the page's corner opens a panel with the
// connection, this tab's role, every entity's cursor, the outbox and the dead letters
// (retry / discard), the last events and conflicts. It reads window.RhtmxSync only;
// it lives in a shadow root so the app's CSS and the overlay's leave each other alone.
(function () {
  "use strict";
  if (!window.RhtmxSync || document.querySelector("rhtmx-sync-debug")) return;
  const S = window.RhtmxSync;

  const host = document.createElement("rhtmx-sync-debug");
  const root = host.attachShadow({ mode: "open" });
  // A constructed sheet, not a <style> element or style attribute: a page whose CSP
  // forbids inline styles still shows the overlay.
  const sheet = new CSSStyleSheet();
  sheet.replaceSync(`
    :host { all: initial; position: fixed; right: 12px; bottom: 12px; z-index: 2147483647;
      font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; color: #111; }
    button { font: inherit; cursor: pointer; }
    .toggle { border: 1px solid #888; border-radius: 12px; padding: 3px 10px; background: #fff; }
    .dot { display: inline-block; width: 8px; height: 8px; border-radius: 50%; margin-right: 6px; background: #c33; }
    .dot.open { background: #2a2; } .dot.follower { background: #27c; } .dot.connecting { background: #e90; }
    .panel { position: absolute; right: 0; bottom: 30px; width: 420px; max-height: 70vh; overflow: auto;
      background: #fff; border: 1px solid #888; border-radius: 6px; padding: 8px 10px; box-shadow: 0 4px 16px #0003; }
    h2 { font-size: 12px; margin: 10px 0 4px; border-bottom: 1px solid #ddd; }
    table { border-collapse: collapse; width: 100%; } td { padding: 1px 4px; vertical-align: top; word-break: break-all; }
    ul { margin: 0; padding-left: 16px; } li { margin: 1px 0; word-break: break-all; }
    .muted { color: #777; }
  `);
  root.adoptedStyleSheets = [sheet];

  const el = (tag, props = {}, ...children) => {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children.filter((c) => c != null));
    return node;
  };
  const dot = el("span", { className: "dot" });
  const badge = el("span");
  const toggle = el("button", { className: "toggle", part: "toggle", title: "rhtmx-sync" }, dot, badge);
  const panel = el("div", { className: "panel", hidden: true, part: "panel" });
  root.append(panel, toggle);
  toggle.onclick = () => {
    panel.hidden = !panel.hidden;
    shown = "";
    render();
  };

  const time = (ms) => new Date(ms).toLocaleTimeString();
  const short = (v) => {
    const s = typeof v === "string" ? v : JSON.stringify(v);
    return s && s.length > 160 ? s.slice(0, 157) + "…" : s;
  };
  const path = (href) => {
    const url = new URL(href, location.href);
    return url.origin === location.origin ? url.pathname + url.search : href;
  };
  const section = (title, body) => [el("h2", { textContent: title }), body];
  const rows = (pairs) => el("table", {}, ...pairs.map(([k, v]) => el("tr", {}, el("td", { textContent: k }), el("td", { textContent: String(v) }))));
  const list = (items, empty) => (items.length ? el("ul", {}, ...items) : el("div", { className: "muted", textContent: empty }));

  let rendering = false;
  let again = false;
  let shown = ""; // what the panel shows now: redrawn only when it changes, so a button
  // is not replaced under a press and text stays selectable
  async function render() {
    const state = S.connection;
    dot.className = "dot " + state;
    badge.textContent = `sync: ${state}` + (S.pendingCount ? ` · ${S.pendingCount} waiting` : "");
    if (panel.hidden) return;
    if (rendering) return void (again = true);
    rendering = true;
    try {
      const [cursors, pending, dead] = await Promise.all([S.cursors(), S.pending(), S.deadLetters()]);
      const events = S.recentEvents().reverse();
      const conflicts = events.filter((e) => e.name === "conflict");
      const entry = (e) => `${e.method} ${path(e.url)}` + (e.label ? ` — ${e.label}` : "");
      const progress = S.progress;
      const now = JSON.stringify([state, navigator.onLine, S.isLeader, S.principal, S.clientId, progress.phase,
        Math.floor(progress.fraction * 100), cursors, pending, dead, events.slice(0, 20).map((e) => [e.at, e.name])]);
      if (now === shown) return;
      shown = now;
      panel.replaceChildren(
        ...section("Connection", rows([
          ["network", navigator.onLine === false ? "offline" : "online"],
          ["stream", state],
          ["this tab", S.isLeader ? "leader (streams and replays for every tab)" : "follower"],
          ["principal", S.principal || "(none)"],
          ["client id", S.clientId],
          ["sync", `${progress.phase}${progress.phase === "syncing" ? " " + Math.floor(progress.fraction * 100) + "%" : ""}`],
        ])),
        ...section("Entities (cursor)", rows(Object.entries(cursors).map(([e, c]) => [e, c ?? "not pulled yet"]))),
        ...section(`Outbox (${pending.length})`, list(pending.map((e) =>
          el("li", { className: "pending", textContent: `${entry(e)} · ${time(e.created)}` + (e.attempts ? ` · ${e.attempts} tries` : "") })), "empty")),
        ...section(`Dead letters (${dead.length})`, list(dead.map((e) =>
          el("li", { className: "dead" },
            `${entry(e)} · ${e.reason}${e.status ? " " + e.status : ""} `,
            el("button", { className: "retry", textContent: "retry", onclick: () => S.retry(e.seq).then(render) }),
            " ",
            el("button", { className: "discard", textContent: "discard", onclick: () => S.discard(e.seq).then(render) }))), "none")),
        ...section(`Conflicts (${conflicts.length})`, list(conflicts.map((e) =>
          el("li", { className: "conflict", textContent: `${time(e.at)} ${short(e.detail)}` })), "none")),
        ...section("Last events", list(events.slice(0, 20).map((e) =>
          el("li", { className: "event", textContent: `${time(e.at)} ${e.name} ${short(e.detail)}` })), "none yet")),
      );
    } finally {
      rendering = false;
      if (again) (again = false), render();
    }
  }

  // Every rhtmx:* event redraws (they bubble to body); a timer catches the stream's state.
  let scheduled = 0;
  const soon = () => scheduled || (scheduled = setTimeout(() => ((scheduled = 0), render()), 50));
  for (const name of ["queued", "replayed", "rejected", "online", "offline", "conflict", "sync-progress", "auth-required", "warning", "principal-changed", "integrity"]) {
    document.body.addEventListener("rhtmx:" + name, soon);
  }
  setInterval(render, 1000);
  document.body.append(host);
  render();
})();
