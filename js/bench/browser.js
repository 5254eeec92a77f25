// Browser benchmarks (section 5 of BENCHMARKS.md): Debian's headless Chromium driven by
// playwright-core, against the Rust bench binary's server (`--serve`, release build, the
// example app plus a bare page at /bench/blank that loads htmx and the client only).
//
//   node js/bench/browser.js --bin PATH [--full] [--out results.jsonl] [--only size,pull,replay]
//
// Run by ./scripts/bench.sh, which builds the binary and passes it. Not a test: nothing
// here asserts on time; rows (one JSON object per line) go to --out and stderr.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, readFileSync, appendFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync, brotliCompressSync, constants as zlib } from "node:zlib";
import { minify } from "terser";
import { launchBrowser, dbQuery } from "../tests/harness.js";

const SECTION = "5. browser";
const args = process.argv.slice(2);
const option = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const full = args.includes("--full");
const out = option("--out");
const bin = option("--bin") ?? process.env.RHTMX_BENCH_BIN;
if (!bin) throw new Error("pass --bin PATH (the bench binary; ./scripts/bench.sh does)");

const fmt = (v) => (v >= 1000 ? Math.round(v).toLocaleString("en-US") : v >= 10 ? v.toFixed(1) : v.toFixed(2));

/** Emits one result row (same shape as the Rust rows). */
function emit(row) {
  const full = {
    section: SECTION,
    baseline: null,
    ratio: null,
    target: "",
    pass: null,
    note: "",
    ...row,
  };
  const ratio = full.ratio == null ? "" : ` (${full.ratio.toFixed(2)}×)`;
  const status = full.pass == null ? "info" : full.pass ? "pass" : "MISS";
  console.error(`  ${SECTION} | ${full.metric} | ${full.size}: ${fmt(full.value)} ${full.unit}${ratio}  target ${full.target} [${status}] ${full.note}`);
  if (out) appendFileSync(out, JSON.stringify(full) + "\n");
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const human = (n) => (n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n));

/** A database directory seeded with `rows` todos (through the engine's triggers). */
function seeded(rows) {
  const dir = mkdtempSync(join(tmpdir(), "rhtmx-bench-"));
  const db = join(dir, "app.db");
  execFileSync(bin, ["--seed", "--db", db, "--rows", String(rows)], { stdio: "inherit" });
  return { dir, db };
}

/** Starts the bench server over `db`; resolves once it listens. */
async function serve(db, { nodelay = false } = {}) {
  const child = spawn(bin, ["--serve", "--db", db, ...(nodelay ? ["--nodelay"] : [])], {
    env: { ...process.env, RUST_LOG: "warn" },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const base = await new Promise((ok, fail) => {
    let text = "";
    child.stdout.on("data", (chunk) => {
      text += chunk;
      const m = text.match(/listening on (http:\/\/\S+)/);
      if (m) ok(m[1]);
    });
    child.on("exit", (code) => fail(new Error(`bench server exited with ${code}`)));
  });
  return {
    base,
    async stop() {
      const gone = new Promise((r) => child.once("exit", r));
      child.stdin.end(); // the server exits when its stdin closes
      await gone;
    },
  };
}

// ---- client.js size -------------------------------------------------------------------
async function size() {
  for (const [file, target] of [["rhtmx-sync.js", 12], ["sw.js", null]]) {
    const source = readFileSync(new URL(`../../rhtmx-sync/src/js/${file}`, import.meta.url), "utf8");
    const { code } = await minify(source, { compress: true, mangle: true });
    const gz = gzipSync(code, { level: 9 }).length;
    const br = brotliCompressSync(code, { params: { [zlib.BROTLI_PARAM_QUALITY]: 11 } }).length;
    emit({
      metric: `${file} minified + gzip`,
      size: `${(source.length / 1024).toFixed(1)} KB source`,
      value: gz / 1024,
      unit: "KB",
      ...(target ? { target: `≤ ${target} KB`, pass: gz <= target * 1024 } : {}),
      note: `terser + gzip -9 as js/tests/client_size.test.js; min+brotli ${(br / 1024).toFixed(1)} KB` +
        (file === "rhtmx-sync.js" ? " (Replicache: ~18 KB min+brotli)" : ""),
    });
  }
}

// ---- pull into IndexedDB -----------------------------------------------------------------
async function pullInto(browser, n, reps, { nodelay = false } = {}) {
  const runs = [];
  for (let r = 0; r < reps; r++) {
    const { dir, db } = seeded(n);
    const server = await serve(db, { nodelay });
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      // The client announces each applied pull page as `rhtmx:todos:changed` with the
      // page's version; the log holds versions 1..n, so version n means all n are in.
      await page.addInitScript((head) => {
        addEventListener("DOMContentLoaded", () => {
          document.body.addEventListener("rhtmx:todos:changed", (e) => {
            if (e.detail.version >= head && !window.__doneAt) window.__doneAt = performance.now();
          });
          document.body.addEventListener("rhtmx:integrity", (e) => {
            window.__verified = { at: performance.now(), ok: e.detail.ok };
          });
        });
      }, n);
      await page.goto(server.base + "/bench/blank");
      await page.waitForFunction(() => window.__doneAt, null, { timeout: 600000, polling: 50 });
      // Where the time went, from Resource Timing: the pull requests themselves (server,
      // loopback, body download) and the gaps between them (the client parsing a page
      // and writing it to IndexedDB before it asks for the next one).
      const t = await page.evaluate(() => {
        const pulls = performance.getEntriesByType("resource")
          .filter((e) => /\/api\/sync\/todos\?since=/.test(e.name))
          .sort((a, b) => a.startTime - b.startTime);
        let network = 0;
        let client = 0;
        pulls.forEach((e, i) => {
          network += e.responseEnd - e.startTime;
          client += (i + 1 < pulls.length ? pulls[i + 1].startTime : window.__doneAt) - e.responseEnd;
        });
        return { done: window.__doneAt, pullStart: pulls.length ? pulls[0].startTime : NaN, network, client, pages: pulls.length };
      });
      // The state check after the sync (docs/ARCHITECTURE.md §13): digest request, every
      // mirrored row read back and hashed with WebCrypto.
      await page.waitForFunction(() => window.__verified, null, { timeout: 600000, polling: 50 });
      const verified = await page.evaluate(() => window.__verified);
      if (!verified.ok) throw new Error("the mirror failed its integrity check");
      const got = await page.evaluate(async () => (await RhtmxSync.get("todos")).length);
      if (got !== n) throw new Error(`IndexedDB holds ${got} of ${n} rows`);
      // Baseline: the same number of rows of the same shape written straight into
      // IndexedDB in this browser, one transaction per 1000 (the client's page size).
      const raw = await page.evaluate(async (count) => {
        const open = indexedDB.open("bench-baseline", 1);
        open.onupgradeneeded = () => open.result.createObjectStore("todos", { keyPath: "id" });
        const db = await new Promise((ok, fail) => { open.onsuccess = () => ok(open.result); open.onerror = () => fail(open.error); });
        const start = performance.now();
        for (let i = 0; i < count; i += 1000) {
          const tx = db.transaction("todos", "readwrite");
          const store = tx.objectStore("todos");
          for (let j = i; j < Math.min(count, i + 1000); j++) {
            store.put({ id: `0193${String(j).padStart(28, "0")}`, title: "a todo with an ordinary title", completed: false, _version: j + 1 });
          }
          await new Promise((ok, fail) => { tx.oncomplete = ok; tx.onerror = () => fail(tx.error); });
        }
        const ms = performance.now() - start;
        db.close();
        return ms;
      }, n);
      runs.push({ total: t.done, pull: t.done - t.pullStart, raw, network: t.network, client: t.client, pages: t.pages, verify: verified.at - t.done });
    } finally {
      await context.close();
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const total = median(runs.map((x) => x.total));
  const pull = median(runs.map((x) => x.pull));
  const raw = median(runs.map((x) => x.raw));
  const network = median(runs.map((x) => x.network));
  const client = median(runs.map((x) => x.client));
  const pages = runs[0].pages;
  const rate = n / (total / 1000);
  emit({
    metric: "initial sync into IndexedDB (page load → all rows stored)",
    size: `${human(n)} rows${nodelay ? ", server with TCP_NODELAY" : ""}`,
    value: rate,
    unit: "rows/s",
    baseline: n / (raw / 1000),
    ratio: total / raw,
    target: "≥ 25k rows/s",
    pass: rate >= 25000,
    note: `${Math.round(total)} ms from navigation start, of which ${Math.round(pull)} ms from the first pull request: ` +
      `${pages} pull requests ${Math.round(network)} ms, client work between them ${Math.round(client)} ms; ` +
      `baseline: the same rows put straight into IndexedDB in pages of 1000 (${Math.round(raw)} ms); median of ${reps}`,
  });
  if (nodelay) return;
  const verify = median(runs.map((x) => x.verify));
  emit({
    metric: "integrity check after the first sync",
    size: `${human(n)} rows`,
    value: verify,
    unit: "ms",
    baseline: pull,
    ratio: verify / pull,
    target: "≤ 0.5× the sync",
    pass: verify <= 0.5 * pull,
    note: `${((verify * 1000) / n).toFixed(1)} µs per row: the server's digest, every mirrored row read back and ` +
      `hashed (SHA-256, WebCrypto); baseline: the sync itself from its first pull (${Math.round(pull)} ms); median of ${reps}`,
  });
}

// ---- replaying queued forms ----------------------------------------------------------------
async function replay(browser, n) {
  const { dir, db } = seeded(0);
  const server = await serve(db);
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await page.goto(server.base + "/bench/blank");
    await page.waitForFunction(() => window.RhtmxSync && RhtmxSync.clientId && RhtmxSync.isLeader, null, { timeout: 30000 });
    // The bench route: the example's INSERT answered 204, behind the same idempotency
    // layer, so the figure is the client's and the layer's, not the example's list HTML.
    await page.evaluate(() => document.getElementById("f").setAttribute("hx-post", "/bench/todos"));
    await page.evaluate(() => htmx.process(document.getElementById("f")));

    // Baseline: the same forms submitted online, one after another (htmx sends them).
    const online = await page.evaluate(async (count) => {
      const form = document.getElementById("f");
      const input = form.querySelector("input[name=title]");
      const start = performance.now();
      for (let i = 0; i < count; i++) {
        const done = new Promise((r) => form.addEventListener("htmx:afterRequest", r, { once: true }));
        input.value = `online ${i}`;
        htmx.trigger(form, "submit");
        await done;
      }
      return performance.now() - start;
    }, n);

    await context.setOffline(true);
    await page.evaluate(async (count) => {
      const form = document.getElementById("f");
      const input = form.querySelector("input[name=title]");
      for (let i = 0; i < count; i++) {
        const queued = new Promise((r) => document.body.addEventListener("rhtmx:queued", r, { once: true }));
        input.value = `offline ${i}`;
        htmx.trigger(form, "submit");
        await queued;
      }
    }, n);
    await page.waitForFunction((count) => RhtmxSync.pendingCount === count, n, { timeout: 60000 });
    const start = performance.now();
    await context.setOffline(false);
    await page.waitForFunction(() => RhtmxSync.pendingCount === 0, null, { timeout: 600000, polling: 10 });
    const ms = performance.now() - start;
    const rows = dbQuery(db, "SELECT count(*) AS n FROM todos")[0].n;
    if (rows !== 2 * n) throw new Error(`the database holds ${rows} rows, expected ${2 * n}`);
    const budget = 5 * n; // ms: 5 s per 1,000
    emit({
      metric: "replay queued forms (back online → outbox empty)",
      size: `${n} forms`,
      value: ms / 1000,
      unit: "s",
      baseline: online / 1000,
      ratio: ms / online,
      target: "≤ 5 s per 1,000",
      pass: ms <= budget,
      note: `${(ms / n).toFixed(2)} ms/form; baseline: the same forms sent online by htmx one after another (${(online / n).toFixed(2)} ms/form); ` +
        "each replay carries an Idempotency-Key (claimed and stored by the layer)",
    });
  } finally {
    await context.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- main ----------------------------------------------------------------------------------
// `--only size,pull,replay` runs parts (default: all).
const only = (option("--only") ?? "").split(",").filter(Boolean);
const wants = (part) => only.length === 0 || only.includes(part);
console.error(`## ${SECTION}`);
if (wants("size")) await size();
if (wants("pull") || wants("replay")) {
  const browser = await launchBrowser();
  try {
    if (wants("pull")) {
      for (const n of [1000, 10000, 100000]) await pullInto(browser, n, full ? 3 : 1);
      // The example's server does not set TCP_NODELAY; this shows what that costs a pull.
      await pullInto(browser, 100000, full ? 3 : 1, { nodelay: true });
    }
    if (wants("replay")) {
      for (const n of full ? [300, 1000, 3000] : [100, 300, 1000]) await replay(browser, n);
    }
  } finally {
    await browser.close();
  }
}
