// Scopes in a real browser, on the teams example (alice in Acme, bob in Globex): each
// mirror holds its own team's rows only, and a user removed from their team — while
// their browser is open, or while it is offline with writes queued — ends with no row
// of the team in their mirror, and their queued writes are dead letters, not applied.
import { test, before, after, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, dbQuery, eventually } from "./harness.js";
import { openApp, addTodo, events, waitInPage, waitPending } from "./app.js";

let browser, server;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});
beforeEach(async () => {
  server = await startServer({ example: "teams" });
});
afterEach(async () => {
  await server?.stop();
});

/** A browser context signed in as `user`, with the app open. */
async function signedIn(user) {
  const context = await browser.newContext();
  const res = await context.request.post(server.base + "/login", { form: { user }, maxRedirects: 0 });
  assert.equal(res.status(), 303);
  const page = await openApp(context, server.base);
  return { context, page };
}

const mirror = (page) => page.evaluate(async () => (await RhtmxSync.get("todos")).map((r) => r.title).sort());
const todos = () => dbQuery(server.dbPath, "SELECT title, team_id FROM todos ORDER BY title");

test("each user's mirror holds its own team's rows, live", async () => {
  const alice = await signedIn("alice");
  const bob = await signedIn("bob");
  await addTodo(alice.page, "acme plan");
  await addTodo(bob.page, "globex plan");
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 1);
  await waitInPage(bob.page, async () => (await RhtmxSync.get("todos")).length === 1);
  // One more of alice's: it reaches her mirror live; bob's never gets it.
  await addTodo(alice.page, "acme second");
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 2);
  assert.deepEqual(await mirror(alice.page), ["acme plan", "acme second"]);
  assert.deepEqual(await mirror(bob.page), ["globex plan"]);
  assert.equal(await bob.page.locator("#todo-list li").count(), 1);
  await alice.context.close();
  await bob.context.close();
});

test("a user removed from their team while their browser is open drops the team's rows", async () => {
  const alice = await signedIn("alice");
  await addTodo(alice.page, "acme plan");
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 1);
  // Removed elsewhere (her other device): the open page's stream resets.
  const other = await signedIn("alice");
  const left = await other.context.request.post(server.base + "/team/leave", { maxRedirects: 0 });
  assert.equal(left.status(), 303);
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 0);
  // And stays so: a new change of the team does not reach her.
  const bob = await signedIn("bob");
  await addTodo(bob.page, "globex plan");
  await waitInPage(bob.page, async () => (await RhtmxSync.get("todos")).length === 1);
  assert.deepEqual(await mirror(alice.page), []);
  for (const c of [alice, other, bob]) await c.context.close();
});

test("a user removed from their team while offline: mirror emptied, queued writes dead letters", async () => {
  const alice = await signedIn("alice");
  await addTodo(alice.page, "acme plan");
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 1);
  const id = await alice.page.getAttribute("#todo-list li", "data-id");
  await alice.context.setOffline(true);
  await alice.page.waitForFunction(() => !navigator.onLine);
  // Two writes queued offline: a rename and a new todo.
  await alice.page.fill(`li[data-id="${id}"] form.rename input`, "renamed offline");
  await alice.page.press(`li[data-id="${id}"] form.rename input`, "Enter");
  await addTodo(alice.page, "added offline");
  await waitPending(alice.page, 2);
  // Meanwhile she is removed from the team.
  const other = await signedIn("alice");
  await other.context.request.post(server.base + "/team/leave", { maxRedirects: 0 });
  await alice.context.setOffline(false);
  await eventually(async () => (await events(alice.page, "rejected")).length === 2, { what: "two dead letters" });
  const statuses = (await events(alice.page, "rejected")).map((e) => e.detail.status);
  assert.deepEqual(statuses, [403, 403]);
  await waitPending(alice.page, 0);
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 0);
  assert.deepEqual(todos(), [{ title: "acme plan", team_id: "acme" }], "nothing of the queue applied");
  await alice.context.close();
  await other.context.close();
});
