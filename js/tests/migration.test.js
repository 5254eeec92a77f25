// The README's migration steps, applied to an app that is not the showcase
// (examples/minimal_notes: plain sqlx handlers, integer keys, no client-generated ids),
// give it offline writes and live refresh with no change to its handlers.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, dbQuery, eventually } from "./harness.js";

let browser;
let server;

before(async () => {
  browser = await launchBrowser();
  server = await startServer({ example: "minimal_notes" });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const notes = () => dbQuery(server.dbPath, "SELECT body FROM notes ORDER BY note_id").map((r) => r.body);

test("an unchanged app gets offline writes (applied once) and live refresh", async () => {
  const a = await browser.newContext();
  const b = await browser.newContext();
  const pageA = await a.newPage();
  const pageB = await b.newPage();
  for (const page of [pageA, pageB]) {
    await page.goto(server.base + "/");
    await page.waitForFunction(() => window.RhtmxSync?.source?.readyState === EventSource.OPEN);
  }

  // Online: B refreshes live when A adds a note.
  await pageA.fill("input[name=body]", "first");
  await pageA.click("button");
  await pageB.waitForSelector("#notes li:has-text('first')");

  // Offline: kept in A's outbox, nothing reaches the server or B.
  await a.setOffline(true);
  await pageA.fill("input[name=body]", "written offline");
  await pageA.click("button");
  await pageA.waitForFunction(() => RhtmxSync.pendingCount === 1);
  assert.deepEqual(notes(), ["first"]);

  // Back online: replayed once, and B sees it without a reload.
  await a.setOffline(false);
  await pageA.waitForFunction(() => RhtmxSync.pendingCount === 0);
  await pageB.waitForSelector("#notes li:has-text('written offline')");
  await eventually(() => notes().length === 2, { what: "two notes" });
  assert.deepEqual(notes(), ["first", "written offline"]);
  await a.close();
  await b.close();
});
