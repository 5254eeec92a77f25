// Two instances of the example on one PostgreSQL database, behind a proxy that sends
// each request to the next instance in turn (a load balancer): a page refreshes live
// from writes another browser made through the other instance, and a write made offline
// is replayed exactly once, whichever instance each request reaches.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, startServer, eventually } from "./harness.js";
import { startProxy } from "./proxy.js";
import { startPostgres } from "./postgres.js";
import { openApp, addTodo, waitPending } from "./app.js";

let pg, servers, proxy, browser;

before(async () => {
  pg = await startPostgres();
  servers = [await startServer({ databaseUrl: pg.url }), await startServer({ databaseUrl: pg.url })];
  proxy = await startProxy(servers.map((s) => s.base));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  for (const s of servers ?? []) await s.stop();
  pg?.stop();
});

const rows = () => pg.query("SELECT id, title, completed FROM todos ORDER BY id");
const served = (server) => proxy.seen((r) => r.target === server.base).length;

test("two browsers through two instances: live refresh and an offline write replayed once", async () => {
  // Two browsers (separate storage), as two people would use it.
  const [one, two] = [await browser.newContext(), await browser.newContext()];
  const a = await openApp(one, proxy.base);
  const b = await openApp(two, proxy.base);

  await addTodo(a, "from a");
  await b.waitForSelector('li.todo input[value="from a"]');
  await addTodo(b, "from b");
  await a.waitForSelector('li.todo input[value="from b"]');
  assert.ok(served(servers[0]) > 0 && served(servers[1]) > 0, "both instances answered");

  // Offline in b: the write waits in its outbox, then is replayed once.
  await two.setOffline(true);
  await addTodo(b, "written offline");
  await waitPending(b, 1);
  await two.setOffline(false);
  await waitPending(b, 0);
  await a.waitForSelector('li.todo input[value="written offline"]');
  await eventually(() => rows().filter((r) => r.title === "written offline").length === 1, {
    what: "the offline write stored",
  });
  assert.deepEqual(
    rows().map((r) => r.title).sort(),
    ["from a", "from b", "written offline"],
  );
  // A rename made on a is merged and reaches b, wherever each request went.
  const [row] = rows().filter((r) => r.title === "from b");
  await a.fill(`li[data-id="${row.id}"] form.rename input`, "from b, renamed by a");
  await a.press(`li[data-id="${row.id}"] form.rename input`, "Enter");
  await b.waitForSelector('li.todo input[value="from b, renamed by a"]');
  await one.close();
  await two.close();
});
