// The opt-in service worker: a reload without a network shows the last good page, marked
// stale, with the outbox intact; the queue drains after reconnect.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, dbTodos, postForm } from "./harness.js";
import { readFileSync } from "node:fs";
import { startProxy, cut, answer } from "./proxy.js";
import { openApp, addTodo, waitPending, waitInPage } from "./app.js";

let browser;
let server;
let proxy;

before(async () => {
  browser = await launchBrowser();
  server = await startServer();
  proxy = await startProxy(server.base);
});
after(async () => {
  await browser?.close();
  await proxy?.close();
  await server?.stop();
});

// A row made before going offline (the example takes UUIDs only as ids).
const KNOWN = "0192f0a0-0000-7000-8000-00000000000a";

test("offline reload shows the last-known page from the service worker; the queue survives and drains", async () => {
  await postForm(server.base, "/todos", { id: KNOWN, title: "seen before going offline" });
  const context = await browser.newContext();
  const page = await openApp(context, proxy.base);
  await waitInPage(page, async () => {
    const reg = await navigator.serviceWorker.getRegistration();
    return reg && reg.active && navigator.serviceWorker.controller;
  });
  // Load once under the worker's control so the page and its assets are cached.
  await page.reload();
  await page.waitForFunction(() => window.RhtmxSync && RhtmxSync.clientId);

  // Cut the network both ways: the browser's view and the server side (a service
  // worker's own fetches are not always covered by setOffline).
  await context.setOffline(true);
  const down = proxy.rule({ match: () => true, respond: cut() });
  await addTodo(page, "queued before the reload");
  await waitPending(page, 1);

  await page.reload();
  await page.waitForFunction(() => window.RhtmxSync && RhtmxSync.clientId);
  assert.ok(await page.evaluate(() => document.documentElement.classList.contains("rhtmx-stale")));
  assert.equal(await page.inputValue(`li[data-id="${KNOWN}"] input`), "seen before going offline");
  await waitPending(page, 1);
  assert.equal(dbTodos(server.dbPath).length, 1);

  proxy.state.rules.splice(proxy.state.rules.indexOf(down), 1);
  await context.setOffline(false);
  await waitPending(page, 0);
  assert.deepEqual(dbTodos(server.dbPath).map((r) => r.title).sort(), ["queued before the reload", "seen before going offline"]);
  await context.close();
});

test("the worker is served with Service-Worker-Allowed and leaves the sync API alone", async () => {
  const res = await fetch(server.base + "/api/sync/sw.js");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("service-worker-allowed"), "/");
  assert.match(res.headers.get("content-type"), /^text\/javascript/);
  const body = await res.text();
  assert.match(body, /^const VERSION = "[0-9a-f]{16}";/);
});

test("offline, a cached image arrives byte for byte and a no-store page is never shown", async () => {
  const png = readFileSync(new URL("../../docs/screenshots/offline-pending.png", import.meta.url));
  const image = proxy.rule({
    match: (r) => r.url === "/assets/logo.png",
    respond: (req, res) => {
      // no-cache: offline, the browser's own cache cannot answer, the worker must.
      res.writeHead(200, { "Content-Type": "image/png", "Cache-Control": "no-cache" });
      res.end(png);
      return true;
    },
  });
  const secret = proxy.rule({
    match: (r) => r.url === "/account",
    respond: answer(200, "<!doctype html><html><head></head><body>alice's account</body></html>",
      { "Content-Type": "text/html", "Cache-Control": "no-store" }),
  });
  const context = await browser.newContext();
  const page = await openApp(context, proxy.base);
  await page.waitForFunction(() => navigator.serviceWorker.controller);
  const show = (p, src) => p.evaluate((s) => new Promise((ok, fail) => {
    const img = new Image();
    img.onload = () => ok(img.naturalWidth);
    img.onerror = () => fail(new Error("image failed"));
    img.src = s;
    document.body.append(img);
  }), src);
  assert.ok((await show(page, "/assets/logo.png")) > 0);
  const account = await context.newPage();
  await account.goto(proxy.base + "/account");
  assert.match(await account.content(), /alice's account/);

  await context.setOffline(true);
  // First in line: the rules above must not answer for the network now.
  const down = { match: () => true, respond: cut() };
  proxy.state.rules.unshift(down);
  // A new page (no image in memory) loads the image from the worker's cache.
  const viewer = await context.newPage();
  await viewer.goto(proxy.base + "/");
  const served = viewer.waitForResponse((r) => r.url().endsWith("/assets/logo.png"));
  const width = show(viewer, "/assets/logo.png");
  const response = await served;
  assert.ok(Buffer.from(await response.body()).equals(png), "the offline copy is the same bytes");
  assert.ok((await width) > 0);
  const again = await context.newPage();
  await again.goto(proxy.base + "/account").catch(() => {});
  assert.doesNotMatch(await again.content(), /alice's account/);

  for (const rule of [down, image, secret]) proxy.state.rules.splice(proxy.state.rules.indexOf(rule), 1);
  await context.setOffline(false);
  await context.close();
});
