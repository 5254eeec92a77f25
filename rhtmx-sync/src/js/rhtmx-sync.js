// rhtmx-sync browser client. No build step, no dependencies; works with htmx 2.x and 4.x.
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
  // Requests that change who is signed in are never queued (a login queued behind the
  // writes that wait for it would never be sent); nor is a form with a password.
  const sessionPattern = new RegExp(data.sessionPattern || "/(log[-_]?(in|out)|sign[-_]?(in|out)|sessions?|auth)\\b", "i");
  const replayTimeout = Number(data.replayTimeout || 30) * 1000;
  const keyRetentionMs = Number(data.keyRetentionHours || 24) * 36e5;
  const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
  const SYSTEM_STORES = ["_meta", "_pending", "_dead"];
  const log = (...args) => debug && console.debug("[rhtmx-sync]", ...args);

  // ---- events -------------------------------------------------------------------------
  const recent = []; // with data-debug: the last events, for the overlay
  const emit = (name, detail) => {
    if (debug) recent.push({ name, detail, at: Date.now() }) > 50 && recent.shift();
    const fire = () => document.body.dispatchEvent(new CustomEvent("rhtmx:" + name, { detail }));
    document.body ? fire() : addEventListener("DOMContentLoaded", fire, { once: true });
  };
  let channel = null; // one per principal, opened at start
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
      dropSent(); // the changes replayed writes made have arrived
    }, Math.max(0, Math.min(30, dirtySince + 250 - now)));
  };

  // ---- whose data: the principal -------------------------------------------------------
  // The app names the signed-in user (<meta name="rhtmx-principal" content="...">, or
  // data-principal on this script; none means one shared scope). Each principal has its
  // own database, leader and channel; the last principal to load a page is recorded in
  // localStorage, and a page of any other principal stops sending (its cookies are gone).
  // With hx-boost the body is swapped but the head is not: name it on the body then.
  function readPrincipal() {
    const el = document.querySelector("[data-rhtmx-principal]");
    const meta = document.querySelector('meta[name="rhtmx-principal"]');
    return el ? el.getAttribute("data-rhtmx-principal") : meta ? meta.content : data.principal ?? "";
  }
  let principal = "";
  const LOGGED_OUT = "-"; // the marker after RhtmxSync.clear(): nobody's
  const PRINCIPAL_KEY = "rhtmx-sync:principal";
  let scope = ""; // "" or a hash of the principal: names the database, lock and channel
  let scopeKnown;
  // Nothing opens a database before the scope is known (an early RhtmxSync.pending()
  // would otherwise open the shared one for good).
  const scoped = new Promise((r) => (scopeKnown = r));
  let retired = false; // another principal's page loaded after this one
  let started = false; // the scope is known
  const dbName = (s) => "rhtmx-sync" + (s ? "-" + s : "");
  const lastPrincipal = () => { try { return localStorage.getItem(PRINCIPAL_KEY); } catch { return null; } };

  async function scopeOf(name) {
    if (!name) return "";
    try {
      const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(name));
      return [...new Uint8Array(digest).slice(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join("");
    } catch {
      return encodeURIComponent(name); // no SubtleCrypto outside secure contexts
    }
  }

  // ---- IndexedDB ----------------------------------------------------------------------
  const promised = (r) => new Promise((ok, fail) => { r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
  const finished = (tx) => new Promise((ok, fail) => {
    tx.oncomplete = () => ok();
    tx.onerror = tx.onabort = () => fail(tx.error || new DOMException("transaction aborted", "AbortError"));
  });
  let dbPromise = null;
  let storageBroken = null;

  // Entity stores are keyed out of line by the change's `id` (the key column may have any
  // name); a store of an older client keyed by an `id` field is made again at upgrade.
  const inline = (db, name) => db.transaction(name).objectStore(name).keyPath !== null;

  function openVersion(name, version, create) {
    return new Promise((ok, fail) => {
      const r = version ? indexedDB.open(name, version) : indexedDB.open(name);
      r.onupgradeneeded = () => {
        const db = r.result;
        for (const store of create) {
          if (db.objectStoreNames.contains(store)) {
            if (store[0] === "_") continue;
            db.deleteObjectStore(store);
            if (db.objectStoreNames.contains("_meta")) r.transaction.objectStore("_meta").delete("version:" + store);
          }
          if (store === "_meta") db.createObjectStore(store, { keyPath: "key" });
          else if (store[0] === "_") db.createObjectStore(store, { keyPath: "seq", autoIncrement: true });
          else db.createObjectStore(store);
        }
      };
      r.onsuccess = () => ok(r.result);
      r.onerror = () => fail(r.error);
      r.onblocked = () => log("upgrade blocked by another tab; it will close its connection");
    });
  }

  async function openDb() {
    if (!window.indexedDB) throw new Error("IndexedDB is unavailable");
    const wanted = [...SYSTEM_STORES, ...entities];
    // Another tab may upgrade between our look and our upgrade, without our stores:
    // look again until everything is there.
    for (let attempt = 0; attempt < 10; attempt++) {
      let db;
      try {
        db = await openVersion(dbName(scope), 0, []);
      } catch (e) {
        // An open caught by the browser wiping the database ("the connection was
        // closed") fails that once: open again, rather than turn storage off for good.
        if (!e || e.name !== "AbortError" || attempt === 9) throw e;
        await new Promise((r) => setTimeout(r, 20 * (attempt + 1)));
        continue;
      }
      const names = db.objectStoreNames;
      const missing = wanted.filter((s) => !names.contains(s) || (s[0] !== "_" && inline(db, s)));
      if (!missing.length) {
        // Another tab needs a newer schema: let it, and reopen on next use.
        db.onversionchange = () => { db.close(); dbPromise = null; };
        db.onclose = () => { dbPromise = null; }; // the browser closed it (data cleared, say)
        await noticeWipe(db);
        return db;
      }
      db.close();
      try {
        (await openVersion(dbName(scope), db.version + 1, missing)).close();
      } catch (e) {
        if (!e || (e.name !== "VersionError" && e.name !== "AbortError")) throw e;
      }
    }
    throw new Error("could not open IndexedDB");
  }

  /** A database without our client id was made anew (site data cleared): the mirror it
   *  held is gone and must be pulled again. */
  async function noticeWipe(db) {
    if (!clientId) return;
    const tx = db.transaction("_meta", "readwrite");
    const seen = await promised(tx.objectStore("_meta").get("clientId"));
    if (seen) return;
    tx.objectStore("_meta").put({ key: "clientId", value: clientId });
    await finished(tx);
    log("database wiped: pulling everything again");
    setTimeout(() => isLeader && onReset(), 0);
  }

  /** The database, or null when storage does not work here (the event says why). */
  async function getDb() {
    await scoped;
    if (storageBroken) return null;
    try {
      return await (dbPromise ||= openDb());
    } catch (error) {
      dbPromise = null;
      storageBroken = error; // cannot be opened at all: writes go to the network
      storageFailed(error);
      return null;
    }
  }

  // A closed or replaced connection, or a store another tab's upgrade has not made yet:
  // reopen and run the transaction again (an aborted one committed nothing).
  const REOPEN = new Set(["InvalidStateError", "TransactionInactiveError", "AbortError", "NotFoundError", "VersionError", "UnknownError"]);

  /** Runs `fn(tx)` in a transaction over `stores`; resolves with what it returned (an
   *  IDBRequest's result, or a value) once committed. Null without storage. */
  async function run(stores, mode, fn) {
    for (let attempt = 0; ; attempt++) {
      const db = await getDb();
      if (!db) return null;
      try {
        const tx = db.transaction(stores, mode);
        const done = finished(tx);
        const out = fn(tx);
        await done;
        return out instanceof IDBRequest ? out.result : out;
      } catch (error) {
        if (attempt > 3 || !REOPEN.has(error && error.name)) throw error;
        log("reopening storage after", error.name);
        db.close();
        dbPromise = null;
      }
    }
  }

  /** Says that storage failed. Only an `open` that fails turns storage off (above); a
   *  failed write (a full disk, say) fails that write alone. */
  function storageFailed(error) {
    console.warn("[rhtmx-sync] storage unavailable:", error);
    emit("storage-error", { error: String(error && error.message || error) });
  }

  const metaGet = (key) => run("_meta", "readonly", (tx) => tx.objectStore("_meta").get(key)).then((row) => row && row.value);

  /** Empties the mirror of a scope (and, with `outbox`, its queue): its rows are readable
   *  by whoever uses the browser next. */
  async function forget(db, outbox) {
    const stores = [...db.objectStoreNames].filter((s) => s !== "_meta" && (outbox || s[0] !== "_"));
    const tx = db.transaction([...stores, "_meta"], "readwrite");
    for (const s of stores) tx.objectStore(s).clear();
    const meta = tx.objectStore("_meta");
    const keys = await promised(meta.getAllKeys());
    for (const key of keys) if (key !== "clientId") meta.delete(key);
    await finished(tx);
  }

  /** Runs `fn(db)` on another scope's database if it exists (never creating one). */
  function withExisting(other, fn) {
    return new Promise((ok) => {
      const r = indexedDB.open(dbName(other));
      r.onupgradeneeded = () => r.transaction.abort(); // did not exist: leave it so
      r.onerror = () => ok();
      r.onsuccess = () => Promise.resolve().then(() => fn(r.result)).catch(log).finally(() => { r.result.close(); ok(); });
    });
  }

  /** Forgets another scope's mirror: its rows are readable by whoever uses the browser. */
  const forgetScope = (other) => withExisting(other, (db) => forget(db, false));

  /** Moves another scope's queue to the end of ours. */
  function adopt(other) {
    if (other === scope) return Promise.resolve();
    return withExisting(other, async (db) => {
      if (!db.objectStoreNames.contains("_pending")) return;
      const entries = await promised(db.transaction("_pending").objectStore("_pending").getAll());
      await run("_pending", "readwrite", (ours) => {
        for (const { seq, ...entry } of entries) ours.objectStore("_pending").add(entry);
      });
      // Our copy is committed: theirs can go (a crash in between keeps both; the keys
      // make a second replay harmless).
      const done = db.transaction("_pending", "readwrite");
      done.objectStore("_pending").clear();
      await finished(done);
    });
  }

  /** Deletes the offline shell's cached pages (they show one principal's data). */
  async function forgetPages() {
    if (!window.caches) return;
    for (const key of await caches.keys()) if (key.startsWith("rhtmx-shell-")) await caches.delete(key);
  }

  // ---- mirror: pull, apply, read --------------------------------------------------------
  // Cursors are "version.tag" strings from the server (the tag ties them to one history
  // of its log); compare them by version.
  const versions = {}; // entity -> cursor of the highest version applied
  let lastEventId = null; // cursor of the last event
  const num = (cursor) => parseInt(String(cursor ?? 0), 10) || 0;

  /** Applies changes of possibly several entities in one transaction. */
  function applyChanges(changes, meta) {
    if (retired) return Promise.resolve(); // this page's user is gone: keep nothing
    const names = [...new Set(changes.map((c) => c.entity))].filter((e) => entities.includes(e));
    return run([...names, "_meta"], "readwrite", (tx) => {
      for (const c of changes) {
        if (!names.includes(c.entity)) continue;
        // Deletes leave a tombstone so a late older change cannot resurrect the row.
        const row = c.action === "delete" ? { _deleted: true, _version: c.version } : { ...c.data, _version: c.version };
        tx.objectStore(c.entity).put(row, c.id);
      }
      for (const [key, value] of Object.entries(meta)) tx.objectStore("_meta").put({ key, value });
    });
  }

  const unknown = new Set(); // entities the server does not sync (the stream says so)

  // ---- first-sync progress ----------------------------------------------------------------
  // Measured in log versions: a pull covers (cursor, head], so the share of that span
  // behind the page's cursor is exact at the end and monotone on the way.
  const progress = { phase: "idle", fraction: 0, received: 0, pending: 0, failed: 0 };
  const spans = {}; // entity -> [from, at, head]
  function showProgress(change) {
    Object.assign(progress, change, { online: online() });
    const parts = Object.values(spans);
    const total = parts.reduce((n, [from, , head]) => n + Math.max(0, head - from), 0);
    const done = parts.reduce((n, [from, at, head]) => n + Math.max(0, Math.min(at, head) - from), 0);
    if (progress.phase === "syncing" && parts.length) progress.fraction = total ? done / total : 0;
    const detail = { ...progress };
    emit("sync-progress", detail);
    renderProgress(detail);
    return detail;
  }
  /** Elements with `data-rhtmx-progress`: attributes, a CSS variable, and (when the app
   *  gave none) a <progress> and a line of text. */
  function renderProgress(p) {
    const text = p.phase === "syncing" ? `Syncing… ${Math.floor(p.fraction * 100)}% (${p.received} rows)`
      : p.phase === "failed" ? "Sync failed; retrying"
      : p.failed ? `${p.failed} change${p.failed > 1 ? "s" : ""} refused`
      : p.pending ? `${p.pending} change${p.pending > 1 ? "s" : ""} waiting${p.online ? "" : " (offline)"}`
      : !p.online ? "Offline" : p.phase === "synced" ? "Up to date" : "";
    for (const el of document.querySelectorAll("[data-rhtmx-progress]")) {
      if (!el.firstChild) el.append(document.createElement("progress"), document.createElement("span"));
      el.setAttribute("data-phase", p.phase);
      el.setAttribute("data-online", p.online);
      el.setAttribute("data-pending", p.pending);
      el.setAttribute("data-failed", p.failed);
      el.style.setProperty("--rhtmx-progress", String(p.fraction));
      const bar = el.querySelector("progress");
      if (bar) (bar.max = 1), (bar.value = p.fraction);
      const line = el.querySelector("span");
      if (line) line.textContent = text;
    }
  }

  async function pull(entity) {
    for (;;) {
      const since = encodeURIComponent(versions[entity] || 0);
      // Big pages: each costs a round trip and an IndexedDB commit (the server caps it).
      // `latest`: each changed row once, however often it changed (no history to replay).
      const res = await fetch(`${base}/${encodeURIComponent(entity)}?since=${since}&limit=5000&latest=true`, { credentials: "same-origin" });
      // 409 + reset: our cursor is from another history (the database was restored).
      if (res.status === 409) throw { reset: (await res.json()).reset };
      if (res.status === 404) return void unknown.add(entity); // not synced: the others still are
      if (res.status === 403) { // not readable by this user (scopes): the others still are
        log("not readable:", entity);
        return void unknown.add(entity);
      }
      if (!res.ok) throw new Error(`pull ${entity}: ${res.status}`);
      const page = await res.json();
      const changes = page.changes.map((c) => ({ ...c, entity }));
      const cursor = page.cursor ?? page.version;
      await applyChanges(changes, { ["version:" + entity]: cursor });
      const from = spans[entity] ? spans[entity][0] : num(versions[entity]);
      versions[entity] = cursor;
      spans[entity] = [from, num(cursor), page.head ?? num(cursor)];
      if (page.has_more || changes.length) {
        const detail = showProgress({ phase: "syncing", received: progress.received + changes.length });
        tell({ type: "progress", detail });
      }
      if (changes.length) {
        const detail = { entity, action: "pull", version: page.version };
        markChanged(detail);
        tell({ type: "changed", details: [detail] });
      }
      if (!page.has_more) return cursor;
    }
  }

  async function resetMirror() {
    await run([...entities, "_meta"], "readwrite", (tx) => {
      for (const e of entities) {
        tx.objectStore(e).clear();
        tx.objectStore("_meta").delete("version:" + e);
      }
    });
    for (const e of entities) versions[e] = 0;
  }

  // ---- integrity: state digests (docs/ARCHITECTURE.md §13) -----------------------------------
  // After a sync, the mirror's digest at its cursor is compared with the server's; a bucket
  // that differs is replaced by the server's rows of that bucket, and nothing else.
  // `data-sync-verify="false"` turns it off; without WebCrypto (a page not served over
  // HTTPS or localhost) it is skipped.
  const verifyOn = data.syncVerify !== "false";
  const BUCKETS = 64;
  const utf8 = new TextEncoder();
  const tagged = (tag, n) => {
    const b = new Uint8Array(5);
    b[0] = tag;
    new DataView(b.buffer).setUint32(1, n);
    return b;
  };
  const byBytes = (a, b) => {
    for (let i = 0; i < a[0].length && i < b[0].length; i++) if (a[0][i] !== b[0][i]) return a[0][i] - b[0][i];
    return a[0].length - b[0].length;
  };
  /** The canonical encoding of a JSON value, as byte arrays appended to `out`. */
  function encode(v, out) {
    if (v === null || v === undefined) out.push(Uint8Array.of(0x6e));
    else if (typeof v === "boolean") out.push(Uint8Array.of(v ? 0x74 : 0x66));
    else if (typeof v === "number") {
      const b = new Uint8Array(9);
      b[0] = 0x64;
      new DataView(b.buffer).setFloat64(1, v === 0 ? 0 : v);
      out.push(b);
    } else if (typeof v === "string") {
      const bytes = utf8.encode(v);
      out.push(tagged(0x73, bytes.length), bytes);
    } else if (Array.isArray(v)) {
      out.push(tagged(0x61, v.length));
      for (const x of v) encode(x, out);
    } else {
      const keys = Object.keys(v).map((k) => [utf8.encode(k), k]).sort(byBytes);
      out.push(tagged(0x6f, keys.length));
      for (const [bytes, k] of keys) out.push(tagged(0x73, bytes.length), bytes), encode(v[k], out);
    }
    return out;
  }
  const sha256 = async (parts) => {
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    parts.reduce((at, p) => (all.set(p, at), at + p.length), 0);
    return new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  };
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const rowHash = (entity, id, row) =>
    sha256(encode(row, encode(id, encode(entity, [utf8.encode("rhtmx-sync row v1\n")]))));
  const bucketOf = async (id) => (await sha256(encode(id, [utf8.encode("rhtmx-sync bucket v1\n")])))[0] % BUCKETS;

  /** The mirror's rows of an entity as [id, row, bucket], and their digest. */
  async function localDigest(entity) {
    const [keys, values] = await run(entity, "readonly", (tx) => {
      const store = tx.objectStore(entity);
      return [store.getAllKeys(), store.getAll()];
    });
    const digest = Array.from({ length: BUCKETS }, () => new Uint8Array(16));
    const rows = [];
    await Promise.all(keys.result.map(async (id, i) => {
      const { _version, _deleted, ...row } = values.result[i];
      if (_deleted) return;
      const [hash, bucket] = await Promise.all([rowHash(entity, id, row), bucketOf(id)]);
      for (let j = 0; j < 16; j++) digest[bucket][j] ^= hash[j];
      rows.push([id, bucket]);
    }));
    return { rows, buckets: digest.map(hex) };
  }

  /** Checks an entity's mirror against the server at its cursor; repairs what differs. */
  async function verify(entity) {
    const at = versions[entity];
    const q = `${base}/${encodeURIComponent(entity)}`;
    const get = async (path) => {
      const res = await fetch(`${q}/${path}`, { credentials: "same-origin" });
      if (res.status === 409) throw { reset: (await res.json()).reset };
      if (!res.ok) throw new Error(`${path.split("?")[0]} ${entity}: ${res.status}`);
      return res.json();
    };
    const answer = await get(`digest?at=${encodeURIComponent(at)}`);
    // `null`: compaction passed our cursor, the state there is gone; the next sync checks.
    const theirs = answer.buckets;
    const mine = theirs ? await localDigest(entity) : { buckets: [], rows: [] };
    const bad = mine.buckets.flatMap((h, i) => (h === theirs[i] ? [] : [i]));
    const version = num(at);
    let rows = [];
    let checked = !!theirs;
    if (bad.length) {
      log("integrity: buckets differ", entity, bad);
      const got = await get(`rows?at=${encodeURIComponent(at)}&buckets=${bad.join(",")}`);
      // Cut short by a compaction pass: nothing applied, checked again at the next sync.
      checked = got.complete;
      if (checked) rows = got.rows;
    }
    if (bad.length && checked) {
      await run(entity, "readwrite", (tx) => {
        const store = tx.objectStore(entity);
        for (const [id, bucket] of mine.rows) if (bad.includes(bucket)) store.delete(id);
        for (const r of rows) store.put({ ...r.data, _version: version }, r.id);
      });
      const detail = { entity, action: "repair", version };
      markChanged(detail);
      tell({ type: "changed", details: [detail] });
    }
    // The server found its own log damaged and logged those rows as they are, after
    // our cursor: pulling now refetches exactly them (after the repair, which is of
    // the state at our cursor).
    const corrected = answer.corrected || 0;
    if (corrected) {
      log("integrity: the server corrected its log", entity, corrected);
      await pull(entity);
    }
    const detail = { entity, ok: checked ? !bad.length : null, version, corrected };
    if (bad.length) Object.assign(detail, { buckets: bad, repaired: rows.length });
    emit("integrity", detail);
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
    const fresh = change.version > num(versions[change.entity]);
    moveCursors();
    queue.push(fresh ? change : null);
    applying ||= new Promise((r) => setTimeout(r, 10)).then(flushQueue);
  }

  /** `cursor`: the stream moved on past changes this page does not get (rows it may
   *  not read, entities it did not ask for). */
  function onCursor(message) {
    if (resyncing) return void held.push(message);
    if (lastEventId !== null && num(message.lastEventId) <= num(lastEventId)) return;
    lastEventId = message.lastEventId;
    moveCursors();
    queue.push(null); // the cursors are stored with the next batch, in order
    applying ||= new Promise((r) => setTimeout(r, 10)).then(flushQueue);
  }

  /** The stream carries every entity of the page, in order: each holds everything up to
   *  its last id, so every cursor moves there — a quiet one would otherwise fall behind
   *  the server's compaction horizon and reset the mirror on the next load. */
  function moveCursors() {
    for (const e of entities) if (!unknown.has(e) && num(versions[e]) < num(lastEventId)) versions[e] = lastEventId;
  }

  async function flushQueue() {
    const batch = queue.filter(Boolean);
    queue = [];
    const meta = { lastEventId };
    for (const e of entities) if (!unknown.has(e)) meta["version:" + e] = versions[e];
    try {
      await applyChanges(batch, meta);
    } catch (error) {
      storageFailed(error);
      // Nothing of the batch was stored: pull it again from the stored cursors.
      for (const e of entities) versions[e] = (await metaGet("version:" + e).catch(() => 0)) || 0;
      syncAll();
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
    if (batch.length) tell({ type: "changed", details: Object.values(latest) });
    if (queue.length) applying = flushQueue();
  }

  let synced = false; // every entity pulled at least once since the page loaded

  /** Pulls every entity while live changes wait, then applies the ones not covered. */
  async function syncAll() {
    if (resyncing) return resyncing;
    let done;
    resyncing = new Promise((r) => (done = r));
    let reset = null;
    // A sync that resumes one cut short (offline, a failed pull) goes on counting.
    if (progress.phase !== "failed" && progress.phase !== "offline") {
      for (const e in spans) delete spans[e];
      progress.received = 0;
    }
    try {
      const heads = (await Promise.all(entities.filter((e) => !unknown.has(e)).map(pull))).filter(Boolean);
      if (verifyOn && globalThis.crypto && crypto.subtle) {
        for (const e of entities.filter((e) => !unknown.has(e))) {
          await verify(e).catch((error) => {
            if (error && error.reset) throw error;
            log("integrity check failed", e, error);
          });
        }
      }
      synced = true;
      // Everything up to the lowest head is held now.
      const lowest = heads.reduce((a, b) => (num(b) < num(a) ? b : a), heads[0]);
      // Even at 0 (an empty log): the stream then resumes from here, and a write
      // made while it opens comes as its event, not through a second pull.
      if (heads.length && (lastEventId === null || num(lowest) > num(lastEventId))) lastEventId = lowest;
      tell({ type: "progress", detail: showProgress({ phase: "synced", fraction: 1 }) });
    } catch (error) {
      if (error && error.reset) reset = error.reset;
      else {
        log("pull failed", error);
        // Offline, a pull that stopped is no failure: it runs again on reconnecting.
        tell({ type: "progress", detail: showProgress({ phase: online() ? "failed" : "offline" }) });
      }
    } finally {
      resyncing = null;
      done();
    }
    if (reset) {
      held = [];
      lastEventId = reset.cursor;
      return onReset(reset.reason);
    }
    const waiting = held;
    held = [];
    waiting.forEach((m) => (m.type === "cursor" ? onCursor(m) : onChange(m)));
  }

  async function onReset(reason) {
    log("reset: resyncing everything", reason);
    await resetMirror();
    if (reason === "access_changed") {
      // What this user may read changed (a team left, a session ended): the pages shown
      // and cached were made under the old access. Forget them, keep the new cursor (the
      // next page must not reset again), and load every tab afresh.
      await forgetPages().catch(log);
      await applyChanges([], { lastEventId }).catch(log);
      tell({ type: "reload" });
      return location.reload();
    }
    await syncAll();
    for (const entity of entities) {
      markChanged({ entity, action: "reset" });
      tell({ type: "changed", details: [{ entity, action: "reset" }] });
    }
  }

  function connect() {
    if (source || !isLeader || retired) return;
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
    source.addEventListener("cursor", onCursor);
    // Entities the server does not sync: said always, not only in debug mode.
    source.addEventListener("warning", (e) => {
      const detail = JSON.parse(e.data);
      console.warn("[rhtmx-sync]", detail.message, detail.unknown_entities);
      emit("warning", detail);
    });
    source.addEventListener("reset", (e) => {
      lastEventId = e.lastEventId;
      synced = false;
      onReset(JSON.parse(e.data).reason);
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

  // The leader may be a background tab whose page holds an old token: a tab that asks
  // for a replay sends its own, and the leader uses the one it heard last.
  let heardToken = null;
  let ownWhenHeard = null;
  const ownToken = () => {
    const meta = document.querySelector(`meta[name="${csrfMeta}"]`);
    return meta ? meta.content : null;
  };
  function csrfToken() {
    if (heardToken !== null && ownToken() !== ownWhenHeard) heardToken = null; // ours is newer
    return heardToken ?? ownToken();
  }

  /** The request's parameters as [name, text] pairs (files by name): for labels. A body
   *  an extension encoded as text is read as JSON, or else as a query string. */
  function fieldsOf(params) {
    if (!params) return [];
    if (typeof params === "string") {
      try {
        params = JSON.parse(params);
      } catch {
        params = new URLSearchParams(params);
      }
      if (!params || typeof params !== "object") return [];
    }
    const pairs = typeof params[Symbol.iterator] === "function"
      ? [...params]
      : Object.entries(params).flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((x) => [k, x]));
    return pairs.map(([k, v]) => [k, v instanceof Blob ? v.name || "file" : String(v)]);
  }

  /** What the user did, in words: the `data-rhtmx-label` template of the element (or an
   *  ancestor) with `{field}` filled in, or else the values sent. */
  function labelOf(elt, fields, method, url) {
    const labelled = elt && elt.closest && elt.closest("[data-rhtmx-label]");
    const values = Object.fromEntries(fields);
    if (labelled) {
      return labelled.getAttribute("data-rhtmx-label").replace(/\{([^}]+)\}/g, (_, k) => (Object.hasOwn(values, k) ? values[k] : ""));
    }
    // What the user typed or chose, not hidden fields (tokens, the new row's id).
    const form = elt && elt.closest && elt.closest("form");
    const hidden = (k) => form && [...form.querySelectorAll("[name]")].some((c) => c.name === k && c.type === "hidden");
    const newId = elt && elt.closest && elt.closest("[data-rhtmx-new-id]");
    const skip = newId && (newId.getAttribute("data-rhtmx-new-id") || "id");
    const shown = fields.filter(([k, v]) => k !== skip && !hidden(k) && v.trim()).map(([, v]) => v);
    return shown.length ? shown.join(" · ") : `${method} ${new URL(url).pathname}`;
  }

  /** The request exactly as it went (or would have gone) on the wire, storable: the
   *  body an extension encoded (json-enc's JSON, say) is kept as it is, a FormData as
   *  pairs (files included). */
  function entryFrom(elt, verb, path, headers, body, fields) {
    const kept = {};
    for (const [name, value] of Object.entries(headers)) {
      const lower = name.toLowerCase();
      // Re-read at replay time, never replayed stale; a form's boundary is the browser's.
      // Credentials (Authorization) are not stored: the app sets them again in
      // `rhtmx:replay-request`.
      if (lower === csrfHeader.toLowerCase() || lower === "idempotency-key" || lower === "authorization") continue;
      if (lower === "content-type" && body instanceof FormData) continue;
      kept[name] = value;
    }
    // fetch (htmx 4) names a URLSearchParams body's type itself; the stored body is text.
    const typed = Object.keys(kept).some((name) => name.toLowerCase() === "content-type");
    if (body instanceof URLSearchParams && !typed) kept["Content-Type"] = "application/x-www-form-urlencoded;charset=UTF-8";
    const method = String(verb).toUpperCase();
    const url = new URL(path, document.baseURI).href;
    return {
      key: headers["Idempotency-Key"],
      method,
      url,
      headers: kept,
      form: body instanceof FormData,
      body: body instanceof FormData ? [...body] : body instanceof URLSearchParams ? body.toString() : body ?? null,
      fields,
      label: labelOf(elt, fields, method, url),
      created: Date.now(),
      attempts: 0,
      source: elt && elt.id ? "#" + elt.id : null,
    };
  }

  async function enqueue(entry, elt) {
    entry.seq = await run("_pending", "readwrite", (tx) => tx.objectStore("_pending").add(entry));
    if (entry.seq == null) throw storageBroken || new Error("no storage");
    log("queued", entry);
    // Kept is as good as sent: a form that adds (POST) is cleared, so the user neither
    // loses it nor sends it twice; one that edits keeps the new values on show.
    // data-rhtmx-reset="true|false" says otherwise.
    const form = elt && elt.closest && elt.closest("form");
    const reset = form && form.closest("[data-rhtmx-reset]");
    if (form && (reset ? reset.getAttribute("data-rhtmx-reset") !== "false" : entry.method === "POST")) form.reset();
    await refreshPending(); // the count includes it when the event fires
    emit("queued", { entry });
    tell({ type: "queued", detail: { entry } });
    kick();
  }

  function request(entry) {
    const headers = { ...entry.headers, "Idempotency-Key": entry.key, "X-Rhtmx-Replay": "1" };
    if (clientId) headers["X-Rhtmx-Client-Id"] = clientId;
    if (principal) headers["X-Rhtmx-Principal"] = encodeURIComponent(principal);
    const token = csrfToken();
    if (token) headers[csrfHeader] = token;
    let body = entry.body;
    // Entries of older clients: `encoding` and the parameters as pairs.
    if (entry.form || entry.encoding === "multipart") {
      body = new FormData();
      for (const [k, v] of entry.body) body.append(k, v);
      delete headers["Content-Type"];
    } else if (entry.encoding === "urlencoded" && body) {
      body = new URLSearchParams(body.map(([k, v]) => [k, String(v)]));
    }
    const init = { method: entry.method, headers, body, credentials: "same-origin", redirect: "follow" };
    const detail = { entry, init };
    emit("replay-request", detail); // the app may refresh auth headers here
    return detail.init;
  }

  /** What an answer means for a write, the same for a first attempt and a replay: "done",
   *  "retry" (later, same key), "auth" (log in again, then retry) or "refused" (for good).
   *  A login page is recognised however it is reached: a followed redirect to a login
   *  path or to another origin, HX-Redirect, or HX-Location (a path or JSON with `path`). */
  function verdict(status, header, redirectedTo) {
    let to = header("HX-Location") || "";
    try {
      if (to.startsWith("{")) to = JSON.parse(to).path || "";
    } catch {}
    const away = redirectedTo && new URL(redirectedTo);
    const login = (away && (away.origin !== location.origin || loginPattern.test(away.pathname))) ||
      [header("HX-Redirect"), to].some((path) => path && loginPattern.test(path));
    // A 403 the server marks final (X-Rhtmx-Forbidden) is "not yours", not "sign in again".
    if (status === 403 && header("X-Rhtmx-Forbidden")) return "refused";
    if (login || status === 401 || status === 403 || status === 419) return "auth";
    if (status === 408 || status === 429 || status === 425 || status >= 500 ||
        (status === 409 && header("Retry-After") !== null)) return "retry";
    return status >= 400 ? "refused" : "done";
  }

  const sentItems = new Map(); // key -> label: replayed, shown until the server's change arrives
  let sentTimer = 0;

  async function refreshPending() {
    // The entries themselves only where a list shows them (a long queue is read whole).
    const lists = document.querySelectorAll("[data-rhtmx-pending-list]");
    const root = document.documentElement;
    // At once, before any await: whoever hears `rhtmx:online` next sees the class gone.
    root.classList.toggle("rhtmx-offline", !online());
    let entries = [];
    try {
      // One transaction, and the counts set together after it: a `rhtmx:rejected`
      // fired after this resolves never trails a pendingCount that already dropped.
      const read = await run(["_pending", "_dead"], "readonly", (tx) => ({
        pending: lists.length ? tx.objectStore("_pending").getAll() : tx.objectStore("_pending").count(),
        dead: tx.objectStore("_dead").count(),
      }));
      if (lists.length) entries = (read && read.pending.result) || [];
      pendingCount = lists.length ? entries.length : (read && read.pending.result) || 0;
      progress.failed = (read && read.dead.result) || 0;
    } catch (error) {
      storageFailed(error);
    }
    showProgress({ pending: pendingCount });
    root.classList.toggle("rhtmx-pending", pendingCount > 0);
    root.setAttribute("data-rhtmx-pending-count", String(pendingCount));
    for (const el of document.querySelectorAll("[data-rhtmx-pending-count]")) {
      if (el !== root) el.setAttribute("data-rhtmx-pending-count", String(pendingCount));
    }
    // <ul data-rhtmx-pending-list>: what waits, in words, oldest first.
    const items = new Map(entries.map((e) => [e.key, e.label || `${e.method} ${e.url}`]));
    for (const [key, label] of sentItems) if (!items.has(key)) items.set(key, label);
    for (const list of lists) {
      list.replaceChildren(...[...items].map(([key, label]) => {
        const li = document.createElement("li");
        li.textContent = label;
        li.dataset.rhtmxKey = key;
        if (sentItems.has(key)) li.className = "rhtmx-sent";
        return li;
      }));
    }
  }

  /** A replayed write stays listed (as sent) until the change it made reaches this tab. */
  function sentUntilChanged(entry) {
    sentItems.set(entry.key, entry.label || `${entry.method} ${entry.url}`);
    clearTimeout(sentTimer);
    sentTimer = setTimeout(dropSent, 5000); // a write that changed nothing
  }
  function dropSent() {
    if (!sentItems.size) return;
    sentItems.clear();
    refreshPending();
  }

  // ---- outbox: replay (leader only; strict FIFO; one request in flight) -------------------
  let replaying = null; // the running replay
  let paused; // while paused for a login: the CSRF token then (null without one)
  let isPaused = false;
  let backoff = 0;
  let timer = 0;

  /** Still this browser's current principal? (Another's cookies would go with a replay.) */
  function current() {
    if (!started) return true;
    const last = lastPrincipal();
    if (!retired && last !== null && last !== scope) retire();
    return !retired;
  }

  function kick() {
    if (!isLeader) return tell({ type: "kick", token: ownToken() });
    if (isPaused && csrfToken() !== paused) isPaused = false; // token refreshed
    if (!replaying && !isPaused && online() && current()) replaying = replay().finally(() => (replaying = null));
    return replaying;
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

  /** Sends an entry; a redirect that could not be followed (to a login on another
   *  origin) comes back as "auth", never as a network error. */
  async function send(entry) {
    // A replay that hangs would hold the queue: it is given up after the timeout and
    // retried like a network error (the key makes that safe).
    const ask = (redirect) => fetch(entry.url, { ...request(entry), redirect, signal: AbortSignal.timeout && AbortSignal.timeout(replayTimeout) });
    try {
      return await ask("follow");
    } catch (error) {
      // A redirect to another origin fails like a network error. Ask without following
      // redirects, and if that is a redirect, once more following it: a same-origin one
      // (a post answered 303 once the network is back) then succeeds; one we still
      // cannot follow is a login elsewhere.
      if ((await ask("manual")).type !== "opaqueredirect") throw error;
      try {
        return await ask("follow");
      } catch {
        return { auth: true, status: 0 };
      }
    }
  }

  async function replay() {
    try {
      for (;;) {
        const entry = await run("_pending", "readonly", (tx) => tx.objectStore("_pending").openCursor())
          .then((cursor) => cursor && cursor.value);
        if (!entry || !current()) return;
        // A write that may have reached the server is replayed only while the server
        // still remembers its key (its idempotency retention): after that a replay could
        // apply it twice, so it goes to the dead letters for the user to decide.
        if (entry.attempted ? Date.now() - entry.attempted > keyRetentionMs : Date.now() - entry.created > retentionMs) {
          await deadLetter(entry, { reason: "expired" });
          continue;
        }
        if (!entry.attempted) {
          entry.attempted = Date.now();
          await run("_pending", "readwrite", (tx) => tx.objectStore("_pending").put(entry));
        }
        let res;
        try {
          res = await send(entry);
        } catch (error) {
          log("replay: network error", error);
          return retryLater(null);
        }
        const status = res.status;
        const v = res.auth ? "auth" : verdict(status, (h) => res.headers.get(h), res.redirected && res.url);
        if (v === "auth") {
          paused = csrfToken();
          isPaused = true;
          emit("auth-required", { entry, status });
          tell({ type: "auth-required", status });
          return;
        }
        if (v === "retry") return retryLater(res);
        backoff = 0;
        if (v === "refused") {
          const response = await res.text().catch(() => ""); // the body may be cut short
          await deadLetter(entry, { reason: "rejected", status, response: response.slice(0, 2000) });
          continue;
        }
        await run("_pending", "readwrite", (tx) => tx.objectStore("_pending").delete(entry.seq));
        dispatchTriggers(res.headers.get("HX-Trigger"));
        const detail = { entry, status };
        sentUntilChanged(entry);
        await refreshPending();
        emit("replayed", detail);
        tell({ type: "replayed", detail });
      }
    } catch (error) {
      storageFailed(error);
    }
  }

  async function deadLetter(entry, why) {
    const dead = { ...entry, ...why, failed: Date.now() };
    delete dead.seq;
    await run(["_pending", "_dead"], "readwrite", (tx) => {
      tx.objectStore("_pending").delete(entry.seq);
      tx.objectStore("_dead").add(dead);
    });
    const detail = { entry, ...why };
    await refreshPending();
    emit("rejected", detail);
    tell({ type: "rejected", detail });
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

  // ---- htmx integration: what both htmx versions share ------------------------------------
  // htmx 2 sends with XMLHttpRequest and names its events `htmx:configRequest`; htmx 4
  // sends with fetch and names them `htmx:config:request` (and its htmx-2-compat extension
  // fires the old names too, with the new details). Which one runs is read when an event
  // comes, so the scripts may load in any order, and each adapter below ignores the
  // other's events.
  const htmx4 = () => !!window.htmx && /^4\./.test(String(htmx.version || ""));

  /** Whether a write may be kept and replayed: not opted out, not a sign-in or sign-out
   *  (see `sessionPattern`), no password in it (never stored). */
  function keepable(elt, path) {
    const el = elt && elt.closest ? elt : null;
    if (el && (el.closest('[data-rhtmx-offline="false"]') || el.matches("input[type=password]"))) return false;
    const form = el && el.closest("form");
    if (form && form.querySelector("input[type=password]")) return false;
    return !sessionPattern.test(new URL(path || "", location.href).pathname);
  }

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

  /** What every unsafe htmx request carries, whichever htmx sends it: the new row's id
   *  (`field(name)` reads a parameter, `field(name, value)` sets it), the idempotency
   *  key, who and when, and the row version the page showed. */
  function stampRequest(elt, path, headers, field) {
    // <form data-rhtmx-new-id="id">: the browser names the new row, so a replayed create
    // cannot make a second one.
    const named = elt && elt.closest && elt.closest("[data-rhtmx-new-id]");
    if (named) {
      const name = named.getAttribute("data-rhtmx-new-id") || "id";
      if (!field(name)) field(name, uuid());
    }
    // One key per user action, created before the first attempt, reused on replay. An
    // opted-out write is never queued or replayed, so it gets none: the server then
    // treats it exactly as it would without rhtmx-sync.
    if (keepable(elt, path)) headers["Idempotency-Key"] ||= uuid();
    if (clientId) headers["X-Rhtmx-Client-Id"] = clientId;
    if (principal) headers["X-Rhtmx-Principal"] = encodeURIComponent(principal);
    // When the user acted (kept for a replay), and the row version the page showed, so
    // the server can merge a late write field by field instead of by arrival.
    headers["X-Rhtmx-Hlc"] ||= tick();
    const versioned = elt && elt.closest && elt.closest("[data-rhtmx-version]");
    if (versioned) headers["X-Rhtmx-Base-Version"] = versioned.getAttribute("data-rhtmx-version");
  }

  /** How an unsafe request leaving now is handled: "send" it (kept if the network or
   *  the server fails it), "queue" it, "stop" it, or "reload" the page first; null when
   *  rhtmx-sync leaves it alone. */
  function route(elt, path, canKeep) {
    if (!keepable(elt, path)) return null;
    // The page now names another user (an hx-boost navigation swapped the body): start
    // again as that user rather than keep this write for the previous one.
    if (started && readPrincipal() !== principal) return "reload";
    // Another user's page loaded since this one: with nowhere to keep it, the write is
    // stopped rather than sent with that user's cookies.
    if (storageBroken || !canKeep) return current() ? null : "stop";
    // Offline, behind earlier writes, or in a tab whose user has changed: queue it.
    return !online() || pendingCount > 0 || !current() ? "queue" : "send";
  }

  /** Whether an answer to a direct attempt means "keep it for the queue" (the queue
   *  would retry or pause on it); then the page is not given the answer, and a login
   *  page it names is opened once the write is stored. Only the status and a followed
   *  redirect decide: a 2xx that names a login page (`HX-Redirect`) was handled by the
   *  app, and htmx follows it. */
  function keptAnswer(status, header, redirectedTo, keep) {
    const v = verdict(status, header, redirectedTo);
    if (v !== "retry" && v !== "auth") return false;
    let to = header("HX-Redirect") || header("HX-Location") || "";
    try {
      if (to.startsWith("{")) to = JSON.parse(to).path || "";
    } catch {}
    keep().then(() => to && location.assign(to));
    return true;
  }

  // ---- htmx 2: XMLHttpRequest ----------------------------------------------------------------
  const verbOf = (detail) => String((detail.requestConfig || detail).verb || "").toUpperCase();

  document.addEventListener("htmx:configRequest", (e) => {
    const d = e.detail;
    if (htmx4() || !UNSAFE.has(verbOf(d))) return;
    stampRequest(d.elt, d.path, d.headers, (name, value) => (value === undefined ? d.parameters[name] : (d.parameters[name] = value)));
  });

  const kept = new WeakMap(); // xhr -> keep()
  function decide(xhr) {
    const keep = xhr && kept.get(xhr);
    if (!keep) return false;
    kept.delete(xhr);
    return keptAnswer(xhr.status, (h) => xhr.getResponseHeader(h), xhr.responseURL, keep);
  }
  document.addEventListener("htmx:beforeOnLoad", (e) => !htmx4() && decide(e.detail.xhr) && e.preventDefault());

  // Every unsafe request is watched at the wire: htmx's XMLHttpRequest `send` is wrapped
  // so the body kept is the one an extension encoded, with every header set on it.
  document.addEventListener("htmx:beforeRequest", (e) => {
    const d = e.detail;
    if (htmx4() || !UNSAFE.has(verbOf(d))) return;
    const how = route(d.elt, d.requestConfig.path, !!d.xhr);
    if (how === "reload") location.reload();
    if (how === "reload" || how === "stop") return void e.preventDefault();
    if (!how) return;
    const xhr = d.xhr;
    const native = xhr.send;
    const setHeader = xhr.setRequestHeader;
    const headers = { ...d.requestConfig.headers };
    xhr.setRequestHeader = function (name, value) {
      headers[name] = value;
      return setHeader.call(this, name, value);
    };
    xhr.send = function (body) {
      const config = d.requestConfig;
      const entry = entryFrom(d.elt, config.verb, d.pathInfo.finalRequestPath, headers, body, fieldsOf(config.parameters || config.formData));
      if (how === "queue") {
        // Queued is done, as far as htmx is concerned: end its request (indicators,
        // hx-sync) as an abort would, `htmx:sendAbort` (an empty `error` keeps htmx from
        // logging it as one). Without storage it goes to the network after all.
        return void enqueue(entry, d.elt).then(() => {
          d.error = "";
          if (xhr.onabort) xhr.onabort();
        }, (error) => {
          storageFailed(error);
          // Sent as the page's user only: another user's cookies are the browser's now.
          if (current()) native.call(xhr, body);
          else if (xhr.onabort) xhr.onabort();
        });
      }
      // No answer, or one the replay loop would retry: kept with its key. The request may
      // or may not have arrived; the same key lets the server tell. Sent once already: it
      // may have been applied, so it is replayed only while the server remembers its key.
      const keep = () => enqueue({ ...entry, attempted: Date.now() }, d.elt).catch(storageFailed);
      xhr.addEventListener("error", keep);
      xhr.addEventListener("timeout", keep);
      kept.set(xhr, keep);
      xhr.addEventListener("load", () => decide(xhr)); // when htmx swapped nothing
      native.call(xhr, body);
    };
  });

  // ---- htmx 4: fetch -------------------------------------------------------------------------
  // htmx 4 calls `ctx.fetch(action, ctx.request)`, set before `htmx:before:request`: the
  // wrapper put there sees the body an extension encoded and every header. A write kept
  // for the queue ends htmx's request as an abort does (indicators off, hx-sync goes on,
  // no `htmx:error`), and its answer is never swapped (htmx 4 swaps 4xx and 5xx).
  const aborted = () => new DOMException("kept by rhtmx-sync", "AbortError");

  document.addEventListener("htmx:config:request", (e) => {
    const ctx = e.detail.ctx;
    if (!htmx4() || !ctx || !UNSAFE.has(String(ctx.request.method).toUpperCase())) return;
    const body = ctx.request.body;
    const field = (name, value) => {
      if (!body || typeof body.get !== "function") return value === undefined ? "" : undefined;
      return value === undefined ? body.get(name) : body.set(name, value);
    };
    stampRequest(ctx.sourceElement, ctx.request.action, ctx.request.headers, field);
    ctx.rhtmxFields = fieldsOf(body); // before an extension encodes it: for labels
  });

  document.addEventListener("htmx:before:request", (e) => {
    const ctx = e.detail.ctx;
    if (!htmx4() || !ctx) return;
    const elt = ctx.sourceElement;
    const next = ctx.fetch;
    // Sign-out controls forget this user's data before the request goes.
    if (signOut(elt)) ctx.fetch = (url, init) => window.RhtmxSync.clear().catch(log).then(() => next(url, init));
    const method = String(ctx.request.method).toUpperCase();
    if (!UNSAFE.has(method)) return;
    const how = route(elt, ctx.request.action, true);
    if (how === "reload") location.reload();
    if (how === "reload" || how === "stop") return void e.preventDefault();
    if (!how) return;
    ctx.fetch = async (url, init) => {
      const entry = entryFrom(elt, method, url, init.headers || {}, init.body, ctx.rhtmxFields || fieldsOf(init.body));
      if (how === "queue") {
        try {
          await enqueue(entry, elt);
        } catch (error) {
          // Without storage it goes to the network after all, as the page's user only.
          storageFailed(error);
          if (current()) return next(url, init);
        }
        throw aborted();
      }
      const keep = () => enqueue({ ...entry, attempted: Date.now() }, elt).catch(storageFailed);
      let res;
      try {
        res = await next(url, init);
      } catch (error) {
        // A network failure or htmx's timeout; not an abort the page asked for (hx-sync).
        if (error?.name !== "AbortError" || init.signal?.reason === "timeout") await keep();
        throw error;
      }
      if (keptAnswer(res.status, (h) => res.headers.get(h), res.redirected && res.url, keep)) throw aborted();
      return res;
    };
  });

  // ---- both: the stale-page marker, a changed user, sign-out ---------------------------------
  document.addEventListener("htmx:afterRequest", (e) => {
    const stale = !htmx4() && e.detail.xhr && e.detail.xhr.getResponseHeader("X-Rhtmx-Stale");
    if (stale) markStale(stale);
  });
  document.addEventListener("htmx:after:request", (e) => {
    const headers = e.detail.ctx && e.detail.ctx.response && e.detail.ctx.response.headers;
    const stale = headers && headers.get("X-Rhtmx-Stale");
    if (stale) markStale(stale);
  });

  // An hx-boost navigation (a login, a logout) may swap in a body naming another user.
  const principalSwapped = () => started && readPrincipal() !== principal && location.reload();
  // A swap may bring a progress element in: it shows the figures at once.
  const settled = () => principalSwapped() || renderProgress(progress);
  document.addEventListener("htmx:afterSettle", settled);
  document.addEventListener("htmx:after:settle", settled);

  // Sign-out controls (`data-rhtmx-logout` on the form or button): this user's mirror and
  // offline pages are forgotten before the request goes, as `RhtmxSync.clear()` does.
  const signOut = (el) => el && el.closest && el.closest("[data-rhtmx-logout]");
  document.addEventListener("htmx:confirm", (e) => {
    if (htmx4() || !signOut(e.target)) return; // htmx 4: in its fetch, above
    e.preventDefault();
    window.RhtmxSync.clear().catch(log).finally(() => e.detail.issueRequest(true));
  });
  document.addEventListener("submit", (e) => {
    const form = e.target;
    // htmx's own forms go through htmx:confirm above.
    if (!signOut(form) || e.defaultPrevented || [...form.attributes].some((a) => /^(hx|data-hx)-(post|put|patch|delete|get)$/.test(a.name))) return;
    e.preventDefault();
    window.RhtmxSync.clear().catch(log).finally(() => form.submit());
  });

  // ---- leadership (Web Locks), tabs (BroadcastChannel), principal changes -------------------
  let isLeader = false;
  let clientId = null;
  let resign = null; // ends this tab's leadership: the next tab in line takes over

  async function lead() {
    isLeader = true;
    log("leader");
    for (const e of entities) versions[e] = (await metaGet("version:" + e)) || 0;
    const stored = await metaGet("lastEventId");
    if (stored != null) lastEventId = stored;
    await syncAll();
    connect();
    kick();
  }

  /** This tab's user is no longer the browser's: stop streaming and sending. Its queue is
   *  kept for its user's next page; new writes made here are queued too. */
  function retire() {
    if (retired) return;
    retired = true;
    isLeader = false;
    disconnect();
    clearTimeout(timer);
    clearTimeout(sourceTimer);
    if (resign) resign();
    // What this user's mirror holds is not the next user's to read.
    getDb().then((db) => db && forget(db, false)).catch(log);
    emit("principal-changed", { principal });
  }

  function onMessage({ data: m }) {
    if (m.type === "changed") m.details.forEach(markChanged);
    else if (m.type === "kick" || m.type === "resume") {
      if (!isLeader) return;
      if (m.token != null) (heardToken = m.token), (ownWhenHeard = ownToken());
      if (m.type === "resume") (isPaused = false), (backoff = 0);
      kick();
    }
    else if (m.type === "queued" || m.type === "replayed" || m.type === "rejected") {
      if (m.type === "replayed") sentUntilChanged(m.detail.entry);
      refreshPending().then(() => emit(m.type, m.detail));
    } else if (m.type === "auth-required") emit("auth-required", { status: m.status });
    else if (m.type === "conflict") emit("conflict", m.detail);
    else if (m.type === "progress") showProgress(m.detail);
    else if (m.type === "reload") location.reload();
  }

  async function start() {
    // The principal may be named on the body: wait for it to be parsed.
    if (document.readyState === "loading") await new Promise((r) => addEventListener("DOMContentLoaded", r, { once: true }));
    principal = readPrincipal();
    scope = await scopeOf(principal);
    scopeKnown();
    // The newest page names the browser's user; what an earlier user left readable (the
    // mirror, the offline pages) goes. Their queue stays for their next visit.
    const last = lastPrincipal();
    try {
      localStorage.setItem(PRINCIPAL_KEY, scope);
    } catch {}
    if (last !== null && last !== scope) {
      await forgetScope(last);
      await forgetPages();
    }
    // Writes queued before the app named its users (one shared outbox) are this
    // user's now, as they would have been the next page's: not stranded.
    if (scope && !last) await adopt("");
    addEventListener("storage", (e) => e.key === PRINCIPAL_KEY && e.newValue !== scope && retire());
    started = true;
    registerWorker();
    if ("BroadcastChannel" in window) {
      channel = new BroadcastChannel(dbName(scope));
      channel.onmessage = onMessage;
    }
    clientId = await metaGet("clientId");
    if (!clientId && !storageBroken) {
      clientId = uuid(); // crypto.randomUUID exists in secure contexts only
      await run("_meta", "readwrite", (tx) => tx.objectStore("_meta").put({ key: "clientId", value: clientId })).catch(storageFailed);
    }
    await refreshPending();
    if (!navigator.locks) return lead();
    // Held until the tab goes away (or its user changes); the next tab takes over at once.
    navigator.locks.request(dbName(scope) + "-leader", () =>
      retired ? null : lead().then(() => retired || new Promise((r) => (resign = r))));
  }

  // ---- offline app shell (opt-in service worker) ----------------------------------------------
  function markStale(since) {
    document.documentElement.classList.add("rhtmx-stale");
    emit("stale", { since });
  }
  function registerWorker() {
    if (data.serviceWorker === undefined || data.serviceWorker === "false" || !("serviceWorker" in navigator)) return;
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

  addEventListener("online", () => {
    refreshPending();
    emit("online", {});
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
  addEventListener("offline", () => { refreshPending(); emit("offline", {}); });
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && kick());
  addEventListener("pagehide", disconnect);
  addEventListener("pageshow", (e) => e.persisted && isLeader && connect());


  // ---- public API ----------------------------------------------------------------------------
  const all = async (store) => (await run(store, "readonly", (tx) => tx.objectStore(store).getAll())) || [];

  window.RhtmxSync = {
    entities,
    /** The principal this page was served for ("" when the app names none). */
    get principal() { return principal; },
    get clientId() { return clientId; },
    get isLeader() { return isLeader; },
    get source() { return source; },
    get pendingCount() { return pendingCount; },
    /** The live-event stream: "connecting", "open", "closed", "follower" (another tab
     *  streams) or "stopped". */
    get connection() {
      if (retired) return "stopped";
      if (!isLeader) return "follower";
      return source ? ["connecting", "open", "closed"][source.readyState] : "closed";
    },
    /** First-sync progress, pending and refused writes: the last `rhtmx:sync-progress`. */
    get progress() { return { ...progress }; },
    /** The cursor of every entity's mirror, as stored. */
    async cursors() {
      const out = {};
      for (const e of entities) out[e] = (await metaGet("version:" + e).catch(() => null)) ?? null;
      return out;
    },
    /** With `data-debug="true"`: the last 50 `rhtmx:*` events, oldest first. */
    recentEvents: () => recent.slice(),
    uuid,
    /** A fresh hybrid-logical-clock timestamp (for app code that writes by fetch). */
    hlc: tick,
    /** The state-digest hashing of docs/ARCHITECTURE.md §13 (hex row hash, bucket
     *  number), for checking another implementation against this one. */
    integrity: { rowHash: async (entity, id, row) => hex(await rowHash(entity, id, row)), bucket: bucketOf },
    /** The mirrored rows of an entity (tombstones left out). */
    async get(entity) { return (await all(entity)).filter((r) => !r._deleted); },
    /** The queued requests, oldest first. */
    pending: () => all("_pending"),
    /** Requests the server refused for good (or that expired), with why. */
    deadLetters: () => all("_dead"),
    /** Moves a dead letter back to the end of the queue. */
    async retry(seq) {
      await run(["_pending", "_dead"], "readwrite", (tx) => {
        const r = tx.objectStore("_dead").get(seq);
        r.onsuccess = () => {
          const entry = r.result;
          if (!entry) return;
          tx.objectStore("_dead").delete(seq);
          delete entry.seq;
          // The user's decision to send it again: a fresh key (the server may have forgotten
          // the old one, or refused it for good).
          delete entry.attempted;
          tx.objectStore("_pending").add({ ...entry, key: uuid(), created: Date.now(), attempts: 0 });
        };
      });
      await refreshPending();
      kick();
    },
    /** Deletes a dead letter. */
    discard: (seq) => run("_dead", "readwrite", (tx) => tx.objectStore("_dead").delete(seq)),
    /** Tries the queue now (after a login, say); resolves when this tab's run ends. */
    replay() {
      isPaused = false;
      backoff = 0;
      if (!isLeader) tell({ type: "resume", token: ownToken() });
      return Promise.resolve(isLeader && kick());
    },
    /** Moves a queued write that cannot go through (the server keeps refusing it) to
     *  the dead letters, so the writes behind it can go. */
    async skip(seq) {
      const entry = await run("_pending", "readonly", (tx) => tx.objectStore("_pending").get(seq));
      if (entry) await deadLetter(entry, { reason: "skipped" });
      kick();
    },
    /** At logout: forgets the mirror and the offline pages, and this page stops syncing.
     *  The queue is kept for the user's next visit unless `{ outbox: true }`. Resolves
     *  with `{ pending }`, the writes still kept. */
    async clear({ outbox = false } = {}) {
      // Nobody's now: this user's other tabs stop too (and forget their mirror).
      try {
        localStorage.setItem(PRINCIPAL_KEY, LOGGED_OUT);
      } catch {}
      retire();
      const db = await getDb();
      if (db) await forget(db, outbox);
      await forgetPages();
      await refreshPending();
      return { pending: pendingCount };
    },
  };

  start().catch((error) => storageFailed(error));
  // The developer overlay is a file of its own, fetched only when asked for.
  if (debug) document.head.append(Object.assign(document.createElement("script"), { src: base + "/debug.js" }));
})();
