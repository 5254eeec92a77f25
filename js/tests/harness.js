// Test harness: the real todo_sync example binary on a free loopback port over a fresh
// SQLite file, and Debian's headless Chromium driven by playwright-core.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, openSync, appendFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { before, after, beforeEach, afterEach } from "node:test";
import { startProxy } from "./proxy.js";
import { startPostgres } from "./postgres.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const targetDir = process.env.CARGO_TARGET_DIR ? resolve(root, process.env.CARGO_TARGET_DIR) : join(root, "target");
const exampleBin = (name) => join(targetDir, "debug", "examples", name);

/** The htmx the examples serve to the pages: `HTMX=2` (the default), `4` or `4-compat`
 *  (htmx 4 with its htmx-2-compat extension), passed on to the example binaries. */
export const HTMX = process.env.HTMX || "2";
/** The `htmx.version` the pages run. */
export const HTMX_VERSION = HTMX.startsWith("4") ? "4.0.1" : "2.0.11";

/** `RHTMX_TEST_DB=postgres` runs every example on PostgreSQL (a throwaway server per
 *  test file, a fresh database per server). */
export const ON_POSTGRES = process.env.RHTMX_TEST_DB === "postgres";

let cluster = null;
let databases = 0;

/** A new, empty database on this process's PostgreSQL server (started on first use,
 *  stopped when the process exits). */
export async function freshPostgresDatabase() {
  if (!cluster) {
    cluster = await startPostgres();
    process.on("exit", () => cluster.stop());
  }
  const name = `t_${process.pid}_${databases++}`;
  execFileSync("psql", [cluster.url, "-q", "-c", `CREATE DATABASE ${name}`]);
  return cluster.url.replace(/\/postgres$/, `/${name}`);
}

/** Starts the example; resolves once it prints its address. */
export async function startServer({ dir, port = 0, example = "todo_sync", databaseUrl, env = {} } = {}) {
  if (ON_POSTGRES && !databaseUrl && !dir) {
    databaseUrl = await freshPostgresDatabase();
  }
  const bin = exampleBin(example);
  if (!existsSync(bin)) {
    throw new Error(`${bin} is missing: run \`cargo build --example ${example}\` first`);
  }
  const ownDir = !dir;
  dir ??= mkdtempSync(join(tmpdir(), "rhtmx-"));
  // A database URL on PostgreSQL: `dbQuery` reads either.
  const dbPath = databaseUrl ?? join(dir, "app.db");
  const child = spawn(bin, [], {
    env: {
      ...process.env,
      PORT: String(port),
      DATABASE_URL: databaseUrl ?? `sqlite://${dbPath}`,
      RUST_LOG: process.env.RUST_LOG ?? "warn",
      ...env,
    },
    // SERVER_LOG=path keeps the server's log for debugging a failure.
    stdio: ["ignore", "pipe", process.env.SERVER_LOG ? openSync(process.env.SERVER_LOG, "a") : "inherit"],
  });
  const base = await new Promise((ok, fail) => {
    let out = "";
    child.stdout.on("data", (chunk) => {
      if (process.env.SERVER_LOG) appendFileSync(process.env.SERVER_LOG, chunk);
      out += chunk;
      const m = out.match(/listening on (http:\/\/\S+)/);
      if (m) ok(m[1]);
    });
    child.on("exit", (code) => fail(new Error(`${example} exited with ${code}`)));
  });
  return {
    base,
    dir,
    dbPath,
    child,
    /** SIGKILL: no graceful anything. */
    async kill() {
      if (child.exitCode === null && child.signalCode === null) {
        const gone = new Promise((r) => child.once("exit", r));
        child.kill("SIGKILL");
        await gone;
      }
    },
    /** Starts the same example again over the same database. */
    restart() {
      return startServer({ dir, example, databaseUrl, env });
    },
    async stop() {
      await this.kill();
      if (ownDir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Rows of a query as objects, straight from the database file (Node 20 has no SQLite
 *  module; the machine's python3 has one), or through psql from a PostgreSQL URL. */
export function dbQuery(dbPath, sql) {
  if (dbPath.startsWith("postgres")) {
    const out = execFileSync("psql", [dbPath, "-At", "-c", `SELECT coalesce(json_agg(t), '[]') FROM (${sql}) AS t`], {
      encoding: "utf8",
    });
    return JSON.parse(out);
  }
  const script = [
    "import json, sqlite3, sys",
    "c = sqlite3.connect(sys.argv[1])",
    "cur = c.execute(sys.argv[2])",
    "names = [d[0] for d in cur.description]",
    "print(json.dumps([dict(zip(names, row)) for row in cur.fetchall()]))",
  ].join("\n");
  return JSON.parse(execFileSync("python3", ["-c", script, dbPath, sql], { encoding: "utf8" }));
}

/** Runs one statement on the database (a SQLite file, or a PostgreSQL URL through psql),
 *  as another program writing to it would. */
export function dbExec(dbPath, sql) {
  if (dbPath.startsWith("postgres")) {
    execFileSync("psql", [dbPath, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    return;
  }
  const script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute(sys.argv[2])\nc.commit()";
  execFileSync("python3", ["-c", script, dbPath, sql]);
}

/** The todos table, ordered by id. */
export const dbTodos = (dbPath) =>
  dbQuery(dbPath, "SELECT id, title, completed FROM todos ORDER BY id").map((r) => ({ ...r, completed: !!r.completed }));

/** Launches headless Chromium; fails (never skips) when it is not installed. */
export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(executablePath)) {
    throw new Error(`Chromium not found at ${executablePath}: apt-get install -y chromium`);
  }
  return chromium.launch({
    executablePath,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** POSTs a form to the app, as a second client would. */
export async function postForm(base, path, fields) {
  const res = await fetch(base + path, { method: "POST", body: new URLSearchParams(fields) });
  if (!res.ok) throw new Error(`POST ${path}: ${res.status}`);
  return res;
}

/** Polls `fn` until it returns a truthy value (for state outside the browser). */
export async function eventually(fn, { timeout = 10000, what = "condition" } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Registers hooks that give every test of the file a fresh example server, a proxy in
 *  front of it and a new browser context (one browser for the file). */
export function freshWorldPerTest() {
  const w = {};
  before(async () => {
    w.browser = await launchBrowser();
  });
  after(async () => {
    await w.browser?.close();
  });
  beforeEach(async () => {
    w.server = await startServer();
    w.proxy = await startProxy(w.server.base);
    w.context = await w.browser.newContext();
  });
  afterEach(async () => {
    await w.context?.close();
    await w.proxy?.close();
    await w.server?.stop();
  });
  return w;
}
