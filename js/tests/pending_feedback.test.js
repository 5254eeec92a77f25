// Offline, a form gives feedback without app JavaScript: it is reset once its write is
// safely queued, the write is listed in words where the app marks
// `data-rhtmx-pending-list`, and the entry goes once the server's change arrives.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser } from "./harness.js";
import { openApp, addTodo, waitPending } from "./app.js";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

const listed = (page) => page.$$eval("[data-rhtmx-pending-list] li", (items) => items.map((li) => li.textContent));

test("a plain notes app: offline Add clears the form and lists the note until it is synced", async () => {
  const server = await startServer({ example: "minimal_notes" });
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await page.goto(server.base + "/");
    await page.waitForFunction(() => window.RhtmxSync?.source?.readyState === EventSource.OPEN);
    await context.setOffline(true);
    await page.fill("input[name=body]", "buy milk");
    await page.click("button");
    await page.waitForFunction(() => RhtmxSync.pendingCount === 1);
    await page.waitForFunction(() => document.querySelector("input[name=body]").value === "");
    assert.deepEqual((await listed(page)).map((t) => t.includes("buy milk")), [true]);
    await context.setOffline(false);
    await page.waitForSelector("#notes li:has-text('buy milk')");
    await page.waitForFunction(() => document.querySelectorAll("[data-rhtmx-pending-list] li").length === 0);
  } finally {
    await context.close();
    await server.stop();
  }
});

test("todo_sync lists queued writes by what they do, and drops each when it is synced", async () => {
  const server = await startServer();
  const context = await browser.newContext();
  try {
    const page = await openApp(context, server.base);
    await context.setOffline(true);
    await addTodo(page, "written offline");
    await waitPending(page, 1);
    assert.deepEqual(await listed(page), ["Add “written offline”"]);
    // Without a label, what the user typed is shown, never hidden fields (tokens).
    await page.evaluate(() => {
      const holder = document.createElement("div");
      holder.innerHTML = `<form id="n" hx-post="/notes-elsewhere" hx-swap="none"><input type="hidden" name="_csrf" value="s3cr3t">
        <input name="note" value="call the bank"><button>go</button></form>`;
      document.body.append(holder);
      htmx.process(holder);
    });
    await page.click("#n button");
    await waitPending(page, 2);
    assert.deepEqual(await listed(page), ["Add “written offline”", "call the bank"]);
    await page.evaluate(async () => RhtmxSync.skip((await RhtmxSync.pending())[1].seq));
    await waitPending(page, 1);
    await context.setOffline(false);
    await page.waitForSelector('li.todo input[value="written offline"]');
    // An edit kept offline leaves the form showing what the user typed.
    await context.setOffline(true);
    await page.fill("li.todo form.rename input", "renamed offline");
    await page.press("li.todo form.rename input", "Enter");
    await waitPending(page, 1);
    assert.equal(await page.inputValue("li.todo form.rename input"), "renamed offline");
    assert.deepEqual(await listed(page), ["Rename to “renamed offline”"]);
    await context.setOffline(false);
    await page.waitForSelector('li.todo input[value="renamed offline"]');
    await page.waitForFunction(() => document.querySelectorAll("[data-rhtmx-pending-list] li").length === 0);
  } finally {
    await context.close();
    await server.stop();
  }
});
