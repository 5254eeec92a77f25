// Page helpers shared by the browser tests.
export const EVENTS = [
  "queued", "replayed", "rejected", "online", "offline", "auth-required", "storage-error", "stale",
  "principal-changed", "warning", "integrity",
];

/** Opens the app in a new page of `context` and waits until the client is running. */
export async function openApp(context, base, page = null) {
  page ??= await context.newPage();
  page.on("pageerror", (e) => console.log("PAGE ERROR", e.message));
  await page.addInitScript((names) => {
    window.__events = [];
    window.__changes = [];
    addEventListener("DOMContentLoaded", () => {
      for (const n of names) {
        document.body.addEventListener("rhtmx:" + n, (e) => window.__events.push({ name: n, detail: JSON.parse(JSON.stringify(e.detail || {})) }));
      }
      document.body.addEventListener("rhtmx:todos:changed", (e) => window.__changes.push(e.detail));
    });
  }, EVENTS);
  await page.goto(base + "/");
  await page.waitForFunction(() => window.RhtmxSync && RhtmxSync.clientId);
  return page;
}

/** Events of one kind seen by the page so far. */
export const events = (page, name) =>
  page.evaluate((n) => window.__events.filter((e) => e.name === n), name);

/** Submits the new-todo form. */
export async function addTodo(page, title) {
  const input = "#new-todo input[name=title]";
  await page.fill(input, title);
  await page.click("#new-todo button");
  // The form clears once the write is sent or queued; typing earlier would race it.
  // (Or the page has gone: a write answered with a login page opens it.)
  await page.waitForFunction((sel) => (document.querySelector(sel)?.value ?? "") === "", input);
}

/** Adds an htmx-powered control to the page (for requests the example does not have). */
export async function inject(page, html) {
  await page.evaluate((markup) => {
    const holder = document.createElement("div");
    holder.className = "injected";
    holder.innerHTML = markup;
    document.body.append(holder);
    htmx.process(holder);
  }, html);
}

/** A form posting a todo with no client-generated id (so only the idempotency key can
 *  stop a replay from creating it twice). */
export const plainForm = (id, title) =>
  `<form id="${id}" hx-post="/todos" hx-swap="none"><input name="title" value="${title}"><button>go</button></form>`;

export const waitPending = (page, n) =>
  page.waitForFunction((count) => RhtmxSync.pendingCount === count, n);

/** Opens the app with its page's HTML rewritten by `rewrite` (html -> html), as an app
 *  that renders other attributes would serve it. */
export async function openRewritten(context, base, rewrite) {
  const page = await context.newPage();
  await page.route(base + "/", async (route) => {
    const response = await route.fetch();
    route.fulfill({ response, body: rewrite(await response.text()) });
  });
  return openApp(context, base, page);
}

/** Waits until the async `fn` (run in the page, with `arg`) resolves truthy. Playwright's
 *  waitForFunction does not await a promise: an async predicate passes at once, so
 *  conditions on IndexedDB or caches are polled from here instead. */
export async function waitInPage(page, fn, arg, { timeout = 30000 } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    if (await page.evaluate(fn, arg)) return true;
    if (Date.now() > end) throw new Error(`timed out waiting for ${fn}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
