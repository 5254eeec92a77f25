// The embedded client turns server changes into coalesced DOM events.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, postForm, HTMX_VERSION } from "./harness.js";

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function openPage() {
  const page = await browser.newPage();
  await page.addInitScript(() => {
    window.__changes = [];
    addEventListener("DOMContentLoaded", () =>
      document.body.addEventListener("rhtmx:todos:changed", (e) => window.__changes.push({ ...e.detail, at: performance.now() })),
    );
  });
  await page.goto(server.base + "/");
  await page.waitForFunction(() => window.RhtmxSync?.source?.readyState === EventSource.OPEN);
  return page;
}

test("a change made by another client fires rhtmx:todos:changed", async () => {
  const page = await openPage();
  const id = "0192f0a0-0000-7000-8000-00000000f00d"; // the example takes UUIDs only
  await postForm(server.base, "/todos", { id, title: "hello" });
  await page.waitForFunction(() => window.__changes.length > 0);
  const [detail] = await page.evaluate(() => window.__changes);
  assert.equal(detail.entity, "todos");
  assert.equal(detail.id, id);
  assert.equal(detail.action, "create");
  await page.close();
});

test("a burst of 500 changes causes at most 2 refresh events", async () => {
  const page = await openPage();
  const changes = Array.from({ length: 500 }, (_, i) => ({
    id: `00000000-0000-7000-8000-${String(i).padStart(12, "0")}`,
    action: "create",
    data: { title: `t${i}` },
  }));
  const res = await fetch(server.base + "/api/sync/todos", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ changes }),
  });
  assert.equal(res.status, 200);
  const { version } = await res.json();
  await page.waitForFunction((v) => window.__changes.some((c) => c.version === v), version);
  // The page's own first pull (rows of earlier tests) is not part of the burst.
  const burst = (await page.evaluate(() => window.__changes)).filter((c) => c.action !== "pull");
  // One refresh per 250 ms at most while changes keep coming: 1 or 2 for a burst that
  // arrives at once, a few more only if a loaded machine spreads its delivery out.
  const span = burst.at(-1).at - burst[0].at;
  const allowed = Math.max(2, 1 + Math.ceil(span / 250));
  assert.ok(burst.length >= 1 && burst.length <= allowed && burst.length <= 10,
    `expected at most ${allowed} refreshes over ${Math.round(span)} ms, got ${burst.length}`);
  await page.close();
});

test("the example serves the pinned htmx 2 and 4 from npm, byte for byte, and the page runs the one chosen", async () => {
  const { readFileSync } = await import("node:fs");
  const npm = (path) => readFileSync(new URL("../node_modules/" + path, import.meta.url), "utf8");
  for (const [asset, file] of [
    ["htmx-2.0.11.min.js", "htmx.org/dist/htmx.min.js"],
    ["htmx-4.0.1.min.js", "htmx4/dist/htmx.min.js"],
    ["htmx-2-compat-4.0.1.min.js", "htmx4/dist/ext/htmx-2-compat.min.js"],
  ]) {
    const served = await (await fetch(server.base + "/assets/" + asset)).text();
    assert.equal(served, npm(file), asset);
  }
  const page = await browser.newPage();
  await page.goto(server.base + "/");
  assert.equal(await page.evaluate(() => htmx.version), HTMX_VERSION);
  await page.close();
});
