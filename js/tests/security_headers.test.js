// The example sends the usual protective headers, and rhtmx-sync's client works under
// its content security policy: no violation while it syncs, queues, replays and
// registers its service worker.
import { test } from "node:test";
import assert from "node:assert/strict";
import { freshWorldPerTest, dbTodos } from "./harness.js";
import { openApp, addTodo, waitPending, waitInPage } from "./app.js";

const w = freshWorldPerTest();

test("the page's headers hold, and the client runs under its CSP without a violation", async () => {
  const page = await w.context.newPage();
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const response = await page.goto(w.proxy.base + "/");
  const headers = response.headers();
  assert.match(headers["content-security-policy"], /script-src 'self'/);
  assert.equal(headers["x-content-type-options"], "nosniff");
  assert.equal(headers["x-frame-options"], "DENY");
  assert.equal(headers["referrer-policy"], "same-origin");
  await openApp(w.context, w.proxy.base, page);
  await page.waitForFunction(() => RhtmxSync.source?.readyState === EventSource.OPEN);
  await waitInPage(page, async () => !!(await navigator.serviceWorker.getRegistration())?.active);
  await addTodo(page, "online");
  await w.context.setOffline(true);
  await addTodo(page, "offline");
  await waitPending(page, 1);
  await w.context.setOffline(false);
  await waitPending(page, 0);
  await page.waitForSelector('li.todo input[value="offline"]');
  assert.deepEqual(dbTodos(w.server.dbPath).map((r) => r.title).sort(), ["offline", "online"]);
  assert.deepEqual(await page.evaluate(() => window.__csp), []);
});
