// Concurrent offline edits of one todo in two browsers: different fields both survive;
// the same field goes to the user who acted last, even when that edit is replayed
// first; the conflict is shown on the page.
import { test } from "node:test";
import assert from "node:assert/strict";
import { freshWorldPerTest, launchBrowser, dbTodos, eventually } from "./harness.js";
import { openApp, addTodo, waitPending } from "./app.js";

const w = freshWorldPerTest();

/** Browser A is `w.context`; browser B is a second Chromium. */
async function twoBrowsers() {
  const other = await launchBrowser();
  const a = await openApp(w.context, w.proxy.base);
  const contextB = await other.newContext();
  const b = await openApp(contextB, w.proxy.base);
  await addTodo(a, "Shared");
  await b.waitForSelector('li.todo input[value="Shared"]');
  const id = await a.$eval("li.todo", (li) => li.dataset.id);
  return { a, b, contextB, id, close: () => other.close() };
}

const rename = async (page, id, title) => {
  await page.fill(`li[data-id="${id}"] form.rename input`, title);
  await page.press(`li[data-id="${id}"] form.rename input`, "Enter");
};

test("different fields edited offline in two browsers: both edits survive, no conflict", async () => {
  const { a, b, contextB, id, close } = await twoBrowsers();
  try {
    await w.context.setOffline(true);
    await contextB.setOffline(true);
    await rename(a, id, "Renamed by A");
    await waitPending(a, 1);
    await b.click(`li[data-id="${id}"] button.toggle`);
    await waitPending(b, 1);
    await w.context.setOffline(false);
    await waitPending(a, 0);
    await contextB.setOffline(false);
    await waitPending(b, 0);
    await eventually(() => {
      const [row] = dbTodos(w.server.dbPath);
      return row.title === "Renamed by A" && row.completed;
    }, { what: "both edits in the database" });
    for (const page of [a, b]) {
      await page.waitForSelector(`li.done[data-id="${id}"] input[value="Renamed by A"]`);
      assert.ok(await page.$eval("#conflict-panel", (el) => el.hidden), "no conflict shown");
    }
  } finally {
    await close();
  }
});

test("the same field edited offline: the later action wins even when replayed first, and the conflict is shown", async () => {
  const { a, b, contextB, id, close } = await twoBrowsers();
  try {
    await w.context.setOffline(true);
    await contextB.setOffline(true);
    await rename(a, id, "A, earlier");
    await waitPending(a, 1);
    await rename(b, id, "B, later");
    await waitPending(b, 1);
    // B's later edit reaches the server first; A's earlier one arrives after it.
    await contextB.setOffline(false);
    await waitPending(b, 0);
    await eventually(() => dbTodos(w.server.dbPath)[0].title === "B, later", { what: "B's edit" });
    await w.context.setOffline(false);
    await waitPending(a, 0);
    for (const page of [a, b]) {
      await page.waitForFunction(() => window.__events !== undefined);
      await page.waitForSelector("#conflict-panel:not([hidden])");
      const text = await page.$eval("#conflict-list", (el) => el.textContent);
      assert.match(text, /title: kept “B, later”/);
      await page.waitForSelector(`li[data-id="${id}"] input[value="B, later"]`);
    }
    assert.equal(dbTodos(w.server.dbPath)[0].title, "B, later");
    if (process.env.UPDATE_SCREENSHOTS) {
      await a.setViewportSize({ width: 440, height: 420 });
      await a.screenshot({ path: new URL("../../docs/screenshots/conflict.png", import.meta.url).pathname });
    }
  } finally {
    await close();
  }
});
