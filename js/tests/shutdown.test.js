// Ctrl-C stops the example even while tabs hold their event streams open.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser } from "./harness.js";

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

test("SIGINT stops the example with two tabs open", async () => {
  const context = await browser.newContext();
  const pages = [];
  for (let i = 0; i < 2; i++) {
    const page = await context.newPage();
    await page.goto(server.base + "/");
    pages.push(page);
  }
  // One tab leads and holds the stream for both (Web Locks); wait until it is open.
  await Promise.any(
    pages.map((p) => p.waitForFunction(() => window.RhtmxSync?.source?.readyState === EventSource.OPEN)),
  );
  const exited = new Promise((resolve) => server.child.once("exit", (code, signal) => resolve({ code, signal })));
  const sent = Date.now();
  server.child.kill("SIGINT");
  // Before the engine could end its streams this never settled while a tab was open;
  // the race only keeps a failing run from hanging the suite.
  const outcome = await Promise.race([exited, new Promise((r) => setTimeout(() => r("still running"), 10000))]);
  assert.deepEqual(outcome, { code: 0, signal: null }, "the example exited cleanly on SIGINT");
  console.log(`# exited ${Date.now() - sent} ms after SIGINT`);
  await context.close();
});
