// rhtmx-sync browser client. No build step, no dependencies; works with htmx 2.x.
//
// One <script src="/api/sync/client.js" data-sync-entities="todos"> makes an htmx page:
// - keep a mirror of the synced entities in IndexedDB (RhtmxSync.get('todos'));
// - refresh live: `rhtmx:<entity>:changed` on document.body, coalesced per burst;
// - work offline: unsafe htmx requests made offline (or while earlier ones wait, or that
//   fail on the network) go to a durable IndexedDB outbox and are replayed in order,
//   exactly once (Idempotency-Key), by one tab per browser.
// Data flows one way: server log -> event stream (leader tab) -> IndexedDB -> DOM events.
(() => {
  "use strict";
  if (window.RhtmxSync) return; // loaded twice

  const script = document.currentScript;
  const data = (script && script.dataset) || {};
  const base = script ? new URL(script.src, location.href).pathname.replace(/\/client\.js$/, "") : "/api/sync";
  const entities = (data.syncEntities || "").split(",").map((s) => s.trim()).filter(Boolean);
  const debug = data.debug === "true";
  const retentionMs = Number(data.retentionDays || 7) * 864e5;
  const csrfMeta = data.csrfMeta || "csrf-token";
  const csrfHeader = data.csrfHeader || "X-CSRF-Token";
  const loginPattern = new RegExp(data.loginPattern || "/(login|signin|sign-in|auth)\\b", "i");
  const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
  const DB_NAME = "rhtmx-sync";
  const SYSTEM_STORES = ["_meta", "_pending", "_dead"];
  const log = (...args) => debug && console.debug("[rhtmx-sync]", ...args);

  // ---- events -------------------------------------------------------------------------
  const emit = (name, detail) => {
    const fire = () => document.body.dispatchEvent(new CustomEvent("rhtmx:" + name, { detail }));
    document.body ? fire() : addEventListener("DOMContentLoaded", fire, { once: true });
  };
  const channel = "BroadcastChannel" in window ? new BroadcastChannel("rhtmx-sync") : null;
  const tell = (message) => channel && channel.postMessage(message); // other tabs only

  // `changed` events are coalesced: a burst (hundreds of changes arriving over some
  // milliseconds) becomes one event per entity, sent once the burst has been quiet for
  // 30 ms, and never later than 250 ms after its first change.
  const dirty = new Map();
  let dirtySince = 0;
  let dirtyTimer = 0;
  const markChanged = (detail) => {
    dirty.set(detail.entity, detail);
    const now = performance.now();
    dirtySince ||= now;
    clearTimeout(dirtyTimer);
    dirtyTimer = setTimeout(() => {
      dirtySince = 0;
      const all = [...dirty.values()];
      dirty.clear();
      for (const d of all) emit(d.entity + ":changed", d);
    }, Math.max(0, Math.min(30, dirtySince + 250 - now)));
  };

  // ---- IndexedDB ----------------------------------------------------------------------
  const promised = (r) => new Promise((ok, fail) => { r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
  const finished = (tx) => new Promise((ok, fail) => {
    tx.oncomplete = () => ok();
    tx.onerror = tx.onabort = () => fail(tx.error || new DOMException("transaction aborted", "AbortError"));
  });
  let dbPromise = null;
  let storageBroken = null;

  function openVersion(version, create) {
    return new Promise((ok, fail) => {
      const r = version ? indexedDB.open(DB_NAME, version) : indexedDB.open(DB_NAME);
      r.onupgradeneeded = () => {
        const db = r.result;
        for (const name of create) {
          if (db.objectStoreNames.contains(name)) continue;
          if (name === "_meta") db.createObjectStore(name, { keyPath: "key" });
          else if (name[0] === "_") db.createObjectStore(name, { keyPath: "seq", autoIncrement: true });
          else db.createObjectStore(name, { keyPath: "id" });
        }
      };
      r.onsuccess = () => ok(r.result);
      r.onerror = () => fail(r.error);
      r.onblocked = () => log("upgrade blocked by another tab; it will close its connection");
    });
  }

  async function openDb() {
    if (!("indexedDB" in window) || !indexedDB) throw new Error("IndexedDB is unavailable");
    const wanted = [...SYSTEM_STORES, ...entities];
    for (let attempt = 0; attempt < 5; attempt++) {
      let db = await openVersion(0, []);
      const missing = wanted.filter((s) => !db.objectStoreNames.contains(s));
      if (missing.length) {
        const next = db.version + 1;
        db.close();
        try {
          db = await openVersion(next, missing);
        } catch (e) {
          if (e && e.name === "VersionError") continue; // another tab upgraded first
          throw e;
        }
      }
      // Another tab needs a newer schema: let it, and reopen on next use.
      db.onversionchange = () => { db.close(); dbPromise = null; };
      db.onclose = () => { dbPromise = null; }; // e.g. WebKit dropped the connection
      return db;
    }
    throw new Error("could not open IndexedDB");
  }

  /** The database, or null when storage does not work here (the event says why). */
  async function getDb() {
    if (storageBroken) return null;
    try {
      return await (dbPromise ||= openDb());
    } catch (error) {
      dbPromise = null;
      storageFailed(error);
      return null;
    }
  }

  function storageFailed(error) {
    storageBroken = storageBroken || error;
    console.warn("[rhtmx-sync] storage unavailable:", error);
    emit("storage-error", { error: String(error && error.message || error) });
  }

  async function metaGet(db, key) {
    const row = await promised(db.transaction("_meta").objectStore("_meta").get(key));
    return row ? row.value : undefined;
  }

  // ---- mirror: pull, apply, read --------------------------------------------------------
  // Cursors are "version.tag" strings from the server (the tag ties them to one history
  // of its log); compare them by version.
  const versions = {}; // entity -> cursor of the highest version applied
  let lastEventId = null; // cursor of the last event
  const num = (cursor) => parseInt(String(cursor ?? 0), 10) || 0;

  /** Applies changes of possibly several entities in one transaction. */
  async function applyChanges(changes, meta) {
    const db = await getDb();
    if (!db) return;
    const names = [...new Set(changes.map((c) => c.entity))].filter((e) => entities.includes(e));
    const tx = db.transaction([...names, "_meta"], "readwrite");
    for (const c of changes) {
      if (!names.includes(c.entity)) continue;
      const store = tx.objectStore(c.entity);
      // Deletes leave a tombstone so a late older change cannot resurrect the row.
      store.put(c.action === "delete" ? { id: c.id, _deleted: true, _version: c.version } : { ...c.data, _version: c.version });
    }
    for (const [key, value] of Object.entries(meta)) tx.objectStore("_meta").put({ key, value });
    await finished(tx);
  }

  async function pull(entity) {
    for (;;) {
      const since = encodeURIComponent(versions[entity] || 0);
      // Big pages: each costs a round trip and an IndexedDB commit (the server caps it).
      const res = await fetch(`${base}/${encodeURIComponent(entity)}?since=${since}&limit=5000`, { credentials: "same-origin" });
      // 409 + reset: our cursor is from another history (the database was restored).
      if (res.status === 409) throw { reset: (await res.json()).reset };
      if (!res.ok) throw new Error(`pull ${entity}: ${res.status}`);
      const page = await res.json();
      const changes = page.changes.map((c) => ({ ...c, entity }));
      const cursor = page.cursor ?? page.version;
      await applyChanges(changes, { ["version:" + entity]: cursor });
      versions[entity] = cursor;
      if (changes.length) {
        const detail = { entity, action: "pull", version: page.version };
        markChanged(detail);
        tell({ type: "changed", details: [detail] });
      }
      if (!page.has_more) return cursor;
    }
  }

  async function resetMirror() {
    const db = await getDb();
    if (db) {
      const tx = db.transaction([...entities, "_meta"], "readwrite");
      for (const e of entities) {
        tx.objectStore(e).clear();
        tx.objectStore("_meta").delete("version:" + e);
      }
      await finished(tx);
    }
    for (const e of entities) versions[e] = 0;
  }

  // ---- live events (leader only) ---------------------------------------------------------
  let source = null;
  let sourceRetry = 0;
  let sourceTimer = 0;
  let queue = [];
  let applying = null;

  let resyncing = null; // while a reset re-pulls, live changes wait
  let held = [];

  function onChange(message) {
    if (resyncing) return void held.push(message);
    const change = JSON.parse(message.data);
    // Delivery is at-least-once: anything not newer than what we hold is a duplicate.
    if (lastEventId !== null && num(message.lastEventId) <= num(lastEventId)) return;
    lastEventId = message.lastEventId;
    observe(change.hlc);
    if (change.version <= num(versions[change.entity])) return;
    versions[change.entity] = message.lastEventId;
    queue.push(change);
    applying ||= new Promise((r) => setTimeout(r, 10)).then(flushQueue);
  }

  async function flushQueue() {
    const batch = queue;
    queue = [];
    const meta = { lastEventId };
    for (const c of batch) meta["version:" + c.entity] = versions[c.entity];
    try {
      await applyChanges(batch, meta);
    } catch (error) {
      storageFailed(error);
    }
    applying = null;
    const latest = {};
    for (const c of batch) {
      latest[c.entity] = { entity: c.entity, id: c.id, action: c.action, version: c.version };
      // A change that resolved a conflict carries it: every tab shows it.
      if (c.conflict) {
        emit("conflict", c.conflict);
        tell({ type: "conflict", detail: c.conflict });
      }
    }
    for (const d of Object.values(latest)) markChanged(d);
    tell({ type: "changed", details: Object.values(latest) });
    if (queue.length) applying = flushQueue();
  }

  let synced = false; // every entity pulled at least once since the page loaded

  /** Pulls every entity while live changes wait, then applies the ones not covered. */
  async function syncAll() {
    if (resyncing) return resyncing;
    let done;
    resyncing = new Promise((r) => (done = r));
    let reset = null;
    try {
      const heads = await Promise.all(entities.map(pull));
      synced = true;
      // Everything up to the lowest head is held now.
      const lowest = heads.reduce((a, b) => (num(b) < num(a) ? b : a), heads[0]);
      if (heads.length && num(lowest) > num(lastEventId)) lastEventId = lowest;
    } catch (error) {
      if (error && error.reset) reset = error.reset;
      else log("pull failed", error);
    } finally {
      resyncing = null;
      done();
    }
    if (reset) {
      held = [];
      lastEventId = reset.cursor;
      return onReset();
    }
    const waiting = held;
    held = [];
    waiting.forEach(onChange);
  }

  async function onReset() {
    log("reset: resyncing everything");
    await resetMirror();
    await syncAll();
    for (const entity of entities) {
      markChanged({ entity, action: "reset" });
      tell({ type: "changed", details: [{ entity, action: "reset" }] });
    }
  }

  function connect() {
    if (source || !isLeader) return;
    const params = new URLSearchParams();
    if (entities.length) params.set("entities", entities.join(","));
    if (lastEventId !== null) params.set("last_event_id", String(lastEventId));
    source = new EventSource(`${base}/events?${params}`);
    // Made before the first pull finished, the URL names no resume point: whenever the
    // browser (re)opens such a stream before an event arrived, it starts at the head,
    // and a write committed while it was down (a replayed offline form) would be missed.
    const resumable = lastEventId !== null;
    source.onopen = () => {
      sourceRetry = 0;
      if (!synced || !resumable) syncAll();
    };
    source.onmessage = onChange;
    // Entities the server does not sync: said always, not only in debug mode.
    source.addEventListener("warning", (e) => {
      const detail = JSON.parse(e.data);
      console.warn("[rhtmx-sync]", detail.message, detail.unknown_entities);
      emit("warning", detail);
    });
    source.addEventListener("reset", (e) => {
      lastEventId = e.lastEventId;
      synced = false;
      onReset();
    });
    source.onerror = () => {
      // A dropped 200 stream reconnects by itself (with Last-Event-ID); a non-200 answer
      // closes it for good, so reconnect ourselves with backoff and jitter.
      if (source.readyState !== EventSource.CLOSED) return;
      source = null;
      const delay = Math.min(30000, 1000 * 2 ** sourceRetry++) * (0.5 + Math.random());
      sourceTimer = setTimeout(connect, delay);
    };
  }

  function disconnect() {
    if (source) source.close();
    source = null;
  }

  // ---- outbox: queue ---------------------------------------------------------------------
  let pendingCount = 0;
  const online = () => navigator.onLine !== false;

  function csrfToken() {
    const meta = document.querySelector(`meta[name="${csrfMeta}"]`);
    return meta ? meta.content : null;
  }

  /** What htmx was about to send, as a storable entry (FormData cannot be stored). */
  function entryFrom(detail, key) {
    const config = detail.requestConfig;
    const headers = {};
    for (const [name, value] of Object.entries(config.headers || {})) {
      const lower = name.toLowerCase();
      // Re-read at replay time, never replayed stale.
      if (lower === csrfHeader.toLowerCase() || lower === "idempotency-key") continue;
      headers[name] = value;
    }
    const elt = detail.elt || config.elt;
    const multipart = headers["Content-Type"] === undefined && !config.useUrlParams;
    const params = config.parameters || config.formData;
    const pairs = typeof params[Symbol.iterator] === "function"
      ? [...params]
      : Object.entries(params).flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((x) => [k, x]));
    const body = config.useUrlParams ? null : pairs;
    return {
      key,
      method: config.verb.toUpperCase(),
      url: new URL(detail.pathInfo.finalRequestPath, location.href).href,
      encoding: multipart ? "multipart" : "urlencoded",
      headers,
      body,
      created: Date.now(),
      attempts: 0,
      source: elt && elt.id ? "#" + elt.id : null,
    };
  }

  async function enqueue(entry) {
    const db = await getDb();
    if (!db) throw storageBroken || new Error("no storage");
    const tx = db.transaction("_pending", "readwrite");
    entry.seq = await promised(tx.objectStore("_pending").add(entry));
    await finished(tx);
    log("queued", entry);
    emit("queued", { entry });
    tell({ type: "queued", detail: { entry } });
    await refreshPending();
    kick();
  }

  /** Sends an entry now, as htmx would have, when it cannot be kept. */
  function sendDirect(entry) {
    return fetch(entry.url, request(entry)).catch((e) => log("direct send failed", e));
  }

  function request(entry) {
    const headers = { ...entry.headers, "Idempotency-Key": entry.key, "X-Rhtmx-Replay": "1" };
    if (clientId) headers["X-Rhtmx-Client-Id"] = clientId;
    const token = csrfToken();
    if (token) headers[csrfHeader] = token;
    let body = null;
    if (entry.body) {
      if (entry.encoding === "multipart") {
        body = new FormData();
        for (const [k, v] of entry.body) body.append(k, v);
        delete headers["Content-Type"];
      } else {
        body = new URLSearchParams(entry.body.map(([k, v]) => [k, String(v)]));
      }
    }
    const init = { method: entry.method, headers, body, credentials: "same-origin", redirect: "follow" };
    const detail = { entry, init };
    emit("replay-request", detail); // the app may refresh auth headers here
    return detail.init;
  }

  async function refreshPending() {
    const db = await getDb();
    if (db) {
      try {
        pendingCount = await promised(db.transaction("_pending").objectStore("_pending").count());
      } catch (error) {
        storageFailed(error);
      }
    }
    const root = document.documentElement;
    root.classList.toggle("rhtmx-pending", pendingCount > 0);
    root.classList.toggle("rhtmx-offline", !online());
    root.setAttribute("data-rhtmx-pending-count", String(pendingCount));
    for (const el of document.querySelectorAll("[data-rhtmx-pending-count]")) {
      if (el !== root) el.setAttribute("data-rhtmx-pending-count", String(pendingCount));
    }
  }

  // ---- outbox: replay (leader only; strict FIFO; one request in flight) -------------------
  let replaying = false;
  let paused = null; // the CSRF token that was refused, while paused for auth
  let backoff = 0;
  let timer = 0;

  function kick() {
    if (!isLeader) return tell({ type: "kick" });
    if (paused !== null && csrfToken() !== paused) paused = null; // token refreshed
    if (!replaying && paused === null && online()) replay();
  }

  function retryLater(res) {
    let delay = Math.min(60000, 1000 * 2 ** backoff++) * (0.5 + Math.random());
    const after = res && res.headers.get("Retry-After");
    if (after) {
      const seconds = Number(after);
      const at = isNaN(seconds) ? Date.parse(after) - Date.now() : seconds * 1000;
      if (at > 0) delay = Math.max(delay / 4, Math.min(at, 3600e3));
    }
    clearTimeout(timer);
    timer = setTimeout(kick, delay);
    log("retrying in", Math.round(delay), "ms");
  }

  async function replay() {
    replaying = true;
    try {
      for (;;) {
        const db = await getDb();
        if (!db) return;
        const cursor = await promised(db.transaction("_pending").objectStore("_pending").openCursor());
        if (!cursor) return;
        const entry = cursor.value;
        if (Date.now() - entry.created > retentionMs) {
          await deadLetter(entry, { reason: "expired" });
          continue;
        }
        let res;
        try {
          res = await fetch(entry.url, request(entry));
        } catch (error) {
          log("replay: network error", error);
          return retryLater(null);
        }
        const status = res.status;
        // A login page, however it is named: a followed redirect, HX-Redirect, or
        // HX-Location (a path, or JSON with `path`) — the same rule as the server's.
        let location = res.headers.get("HX-Location") || "";
        try {
          if (location.startsWith("{")) location = JSON.parse(location).path || "";
        } catch {}
        const login = (res.redirected && loginPattern.test(new URL(res.url).pathname)) ||
          [res.headers.get("HX-Redirect"), location].some((to) => to && loginPattern.test(to));
        if (login || status === 401 || status === 403 || status === 419) {
          paused = csrfToken() || "";
          emit("auth-required", { entry, status });
          tell({ type: "auth-required", status });
          return;
        }
        if (status === 408 || status === 429 || status === 425 || status >= 500 ||
            (status === 409 && res.headers.has("Retry-After"))) {
          return retryLater(res);
        }
        backoff = 0;
        if (status >= 400) {
          await deadLetter(entry, { reason: "rejected", status, response: (await res.text()).slice(0, 2000) });
          continue;
        }
        const tx = db.transaction("_pending", "readwrite");
        tx.objectStore("_pending").delete(entry.seq);
        await finished(tx);
        dispatchTriggers(res.headers.get("HX-Trigger"));
        const detail = { entry, status };
        emit("replayed", detail);
        tell({ type: "replayed", detail });
        await refreshPending();
      }
    } catch (error) {
      storageFailed(error);
    } finally {
      replaying = false;
    }
  }

  async function deadLetter(entry, why) {
    const db = await getDb();
    const tx = db.transaction(["_pending", "_dead"], "readwrite");
    tx.objectStore("_pending").delete(entry.seq);
    const dead = { ...entry, ...why, failed: Date.now() };
    delete dead.seq;
    tx.objectStore("_dead").add(dead);
    await finished(tx);
    const detail = { entry, ...why };
    emit("rejected", detail);
    tell({ type: "rejected", detail });
    await refreshPending();
  }

  function dispatchTriggers(header) {
    if (!header) return;
    let events;
    try {
      events = JSON.parse(header);
    } catch {
      events = Object.fromEntries(header.split(",").map((n) => [n.trim(), null]));
    }
    for (const [name, detail] of Object.entries(events)) {
      if (name) document.body.dispatchEvent(new CustomEvent(name, { detail, bubbles: true }));
    }
  }

  // ---- hybrid logical clock ------------------------------------------------------------------
  // "When the user acted", comparable with the server's clock: `PPPPPPPPPPPPPPP-CCCCC-NODE`
  // (15-digit ms, 5-digit counter, 16 hex node), so string order is clock order.
  const node = [...crypto.getRandomValues(new Uint8Array(8))].map((b) => b.toString(16).padStart(2, "0")).join("");
  let clockMs = 0;
  let clockCount = 0;
  const stamp = () => `${String(clockMs).padStart(15, "0")}-${String(clockCount).padStart(5, "0")}-${node}`;
  function tick() {
    const now = Date.now();
    if (now > clockMs) {
      clockMs = now;
      clockCount = 0;
    } else if (++clockCount > 99999) {
      clockMs++;
      clockCount = 0;
    }
    return stamp();
  }
  /** Moves the clock past a timestamp seen from elsewhere. */
  function observe(hlc) {
    const m = /^(\d{15})-(\d{5})-[0-9a-f]{16}$/.exec(hlc || "");
    if (!m) return;
    const ms = Number(m[1]);
    const count = Number(m[2]);
    if (ms > Date.now() + 864e5) return; // absurdly far ahead: ignore, as the server does
    if (ms > clockMs || (ms === clockMs && count > clockCount)) {
      clockMs = ms;
      clockCount = count;
    }
  }

  // ---- htmx integration --------------------------------------------------------------------
  const verbOf = (detail) => String((detail.requestConfig || detail).verb || "").toUpperCase();
  const optedOut = (elt) => elt && elt.closest && elt.closest('[data-rhtmx-offline="false"]');

  /** A UUIDv7: time-ordered, so client-generated ids sort by creation. */
  function uuid() {
    const b = crypto.getRandomValues(new Uint8Array(16));
    let t = Date.now();
    for (let i = 5; i >= 0; i--, t = Math.floor(t / 256)) b[i] = t & 255;
    b[6] = (b[6] & 15) | 112;
    b[8] = (b[8] & 63) | 128;
    const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  document.addEventListener("htmx:configRequest", (e) => {
    if (!UNSAFE.has(verbOf(e.detail))) return;
    // <form data-rhtmx-new-id="id">: the browser names the new row, so a replayed create
    // cannot make a second one.
    const named = e.detail.elt && e.detail.elt.closest && e.detail.elt.closest("[data-rhtmx-new-id]");
    if (named) {
      const field = named.getAttribute("data-rhtmx-new-id") || "id";
      if (!e.detail.parameters[field]) e.detail.parameters[field] = uuid();
    }
    // One key per user action, created before the first attempt, reused on replay. An
    // opted-out write is never queued or replayed, so it gets none: the server then
    // treats it exactly as it would without rhtmx-sync.
    if (!optedOut(e.detail.elt)) e.detail.headers["Idempotency-Key"] ||= crypto.randomUUID();
    if (clientId) e.detail.headers["X-Rhtmx-Client-Id"] = clientId;
    // When the user acted (kept for a replay), and the row version the page showed, so
    // the server can merge a late write field by field instead of by arrival.
    e.detail.headers["X-Rhtmx-Hlc"] ||= tick();
    const versioned = e.detail.elt && e.detail.elt.closest && e.detail.elt.closest("[data-rhtmx-version]");
    if (versioned) e.detail.headers["X-Rhtmx-Base-Version"] = versioned.getAttribute("data-rhtmx-version");
  });

  document.addEventListener("htmx:beforeRequest", (e) => {
    const d = e.detail;
    if (!UNSAFE.has(verbOf(d)) || optedOut(d.elt) || storageBroken) return;
    if (online() && pendingCount === 0) return; // straight to the network
    e.preventDefault();
    const entry = entryFrom(d, d.requestConfig.headers["Idempotency-Key"]);
    enqueue(entry).catch((error) => {
      storageFailed(error);
      sendDirect(entry); // nothing is lost silently
    });
  });

  const requeue = (e) => {
    const d = e.detail;
    if (!UNSAFE.has(verbOf(d)) || optedOut(d.elt) || storageBroken || !d.pathInfo) return;
    // A network error is no answer: the request may or may not have arrived, and the
    // same key lets the server tell.
    enqueue(entryFrom(d, d.requestConfig.headers["Idempotency-Key"])).catch(storageFailed);
  };
  document.addEventListener("htmx:sendError", requeue);
  document.addEventListener("htmx:timeout", requeue);

  // ---- leadership (Web Locks), tabs (BroadcastChannel) ---------------------------------------
  let isLeader = false;
  let clientId = null;

  async function lead() {
    isLeader = true;
    log("leader");
    const db = await getDb();
    if (db) {
      for (const e of entities) versions[e] = (await metaGet(db, "version:" + e)) || 0;
      const stored = await metaGet(db, "lastEventId");
      if (stored !== undefined) lastEventId = stored;
    }
    await syncAll();
    connect();
    kick();
  }

  if (channel) {
    channel.onmessage = ({ data: m }) => {
      if (m.type === "changed") m.details.forEach(markChanged);
      else if (m.type === "kick") isLeader && kick();
      else if (m.type === "queued" || m.type === "replayed" || m.type === "rejected") {
        emit(m.type, m.detail);
        refreshPending();
      } else if (m.type === "auth-required") emit("auth-required", { status: m.status });
      else if (m.type === "conflict") emit("conflict", m.detail);
    };
  }

  async function start() {
    const db = await getDb();
    if (db) {
      clientId = await metaGet(db, "clientId");
      if (!clientId) {
        clientId = crypto.randomUUID();
        const tx = db.transaction("_meta", "readwrite");
        tx.objectStore("_meta").put({ key: "clientId", value: clientId });
        await finished(tx).catch(storageFailed);
      }
    }
    await refreshPending();
    if (window.htmx && String(htmx.version || "").startsWith("4")) {
      console.error("[rhtmx-sync] htmx 4 is not supported yet: pin htmx 2.x. Offline writes are off.");
      storageBroken = new Error("htmx 4");
    }
    if (navigator.locks) {
      // Held until the tab goes away; the next tab in line takes over at once.
      navigator.locks.request("rhtmx-sync-leader", () => lead().then(() => new Promise(() => {})));
    } else {
      lead();
    }
  }

  // ---- offline app shell (opt-in service worker) ----------------------------------------------
  function markStale(since) {
    document.documentElement.classList.add("rhtmx-stale");
    emit("stale", { since });
  }
  if (data.serviceWorker !== undefined && data.serviceWorker !== "false" && "serviceWorker" in navigator) {
    navigator.serviceWorker
      .register(base + "/sw.js", { scope: data.serviceWorkerScope || "/" })
      .then(() => navigator.serviceWorker.ready)
      .then((reg) => {
        // The page that registered the worker was fetched before it existed: cache it
        // and its assets now so the next offline visit has them.
        const urls = [location.href];
        for (const el of document.querySelectorAll("script[src], link[rel=stylesheet][href]")) urls.push(el.src || el.href);
        reg.active && reg.active.postMessage({ type: "warm", urls });
      })
      .catch((e) => log("service worker not registered", e));
  }
  const staleMeta = document.querySelector('meta[name="rhtmx-stale"]');
  if (staleMeta) markStale(staleMeta.content);
  document.addEventListener("htmx:afterRequest", (e) => {
    const stale = e.detail.xhr && e.detail.xhr.getResponseHeader("X-Rhtmx-Stale");
    if (stale) markStale(stale);
  });

  addEventListener("online", () => {
    emit("online", {});
    refreshPending();
    // Back online: no need to sit out a backoff grown while offline.
    if (isLeader && !source) {
      clearTimeout(sourceTimer);
      sourceRetry = 0;
      connect();
    }
    // A page from the offline cache refreshes its live fragments.
    if (document.documentElement.classList.contains("rhtmx-stale")) {
      document.documentElement.classList.remove("rhtmx-stale");
      for (const entity of entities) markChanged({ entity, action: "refresh" });
    }
    kick();
  });
  addEventListener("offline", () => { emit("offline", {}); refreshPending(); });
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && kick());
  addEventListener("pagehide", disconnect);
  addEventListener("pageshow", (e) => e.persisted && isLeader && connect());

  // ---- public API ----------------------------------------------------------------------------
  async function all(store) {
    const db = await getDb();
    return db ? promised(db.transaction(store).objectStore(store).getAll()) : [];
  }

  window.RhtmxSync = {
    entities,
    get clientId() { return clientId; },
    get isLeader() { return isLeader; },
    get source() { return source; },
    get pendingCount() { return pendingCount; },
    uuid,
    /** A fresh hybrid-logical-clock timestamp (for app code that writes by fetch). */
    hlc: tick,
    /** The mirrored rows of an entity (tombstones left out). */
    async get(entity) { return (await all(entity)).filter((r) => !r._deleted); },
    /** The queued requests, oldest first. */
    pending: () => all("_pending"),
    /** Requests the server refused for good (or that expired), with why. */
    deadLetters: () => all("_dead"),
    /** Moves a dead letter back to the end of the queue. */
    async retry(seq) {
      const db = await getDb();
      const tx = db.transaction(["_pending", "_dead"], "readwrite");
      const entry = await promised(tx.objectStore("_dead").get(seq));
      if (entry) {
        tx.objectStore("_dead").delete(seq);
        delete entry.seq;
        tx.objectStore("_pending").add({ ...entry, created: Date.now(), attempts: 0 });
      }
      await finished(tx);
      await refreshPending();
      kick();
    },
    /** Deletes a dead letter. */
    async discard(seq) {
      const db = await getDb();
      const tx = db.transaction("_dead", "readwrite");
      tx.objectStore("_dead").delete(seq);
      await finished(tx);
    },
    /** Tries the queue now (after a login, say). */
    replay() { paused = null; backoff = 0; kick(); },
  };

  start().catch((error) => storageFailed(error));
})();
