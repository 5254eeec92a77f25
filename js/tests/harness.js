// Test harness: the real todo_sync example binary on a free loopback port over a fresh
// SQLite file, and Debian's headless Chromium driven by playwright-core.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const exampleBin = join(root, "target", "debug", "examples", "todo_sync");

/** Starts the example; resolves once it prints its address. */
export async function startServer({ dir } = {}) {
  if (!existsSync(exampleBin)) {
    throw new Error(`${exampleBin} is missing: run \`cargo build --example todo_sync\` first`);
  }
  const ownDir = !dir;
  dir ??= mkdtempSync(join(tmpdir(), "rhtmx-"));
  const child = spawn(exampleBin, [], {
    env: { ...process.env, PORT: "0", DATABASE_URL: `sqlite://${join(dir, "app.db")}`, RUST_LOG: "warn" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const base = await new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/listening on (http:\/\/\S+)/);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`todo_sync exited with ${code}`)));
  });
  return {
    base,
    dir,
    child,
    async stop() {
      child.kill("SIGKILL");
      await new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", r)));
      if (ownDir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

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
