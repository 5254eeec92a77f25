// The second example (examples/inventory): what the todo list does not exercise — an
// integer key of another name assigned by the database, a relation deleted by
// ON DELETE CASCADE, and a file upload kept offline and replayed once, bytes intact.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { startServer, launchBrowser, dbQuery, dbExec, eventually, ON_POSTGRES } from "./harness.js";
import { waitInPage } from "./app.js";

let browser;
let server;

before(async () => {
  browser = await launchBrowser();
  server = await startServer({ example: "inventory" });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const q = (sql) => dbQuery(server.dbPath, sql);
// A blob as hexadecimal digits, in either database's words.
const hex = (column) => (ON_POSTGRES ? `encode(${column}, 'hex')` : `hex(${column})`);
const sha = (buffer) => createHash("sha256").update(buffer).digest("hex");
// A 1×1 PNG; the bytes, not the picture, are what must arrive.
const PNG = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
  "base64",
);

async function open(context) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.log("PAGE ERROR", e.message));
  await page.goto(server.base + "/");
  await page.waitForFunction(() => window.RhtmxSync?.connection === "open" && RhtmxSync.progress.phase === "synced");
  return page;
}

test("integer keys, a cascade and a file upload, offline and live", async () => {
  const a = await browser.newContext();
  const b = await browser.newContext();
  try {
    const pageA = await open(a);
    const pageB = await open(b);

    // Online: A adds an item with opening stock (two entities, one transaction); B sees it.
    await pageA.fill("#new-item input[name=name]", "Crate");
    await pageA.fill("#new-item input[name=stock]", "5");
    await pageA.click("#new-item button");
    await pageB.waitForSelector("li.item:has-text('Crate') .stock:text-is('5')");
    const [{ item_no: no }] = q("SELECT item_no FROM items WHERE name = 'Crate'");
    assert.equal(typeof no, "number");
    // The mirror keys rows by the integer key, under its own name.
    await waitInPage(pageB, async (n) => (await RhtmxSync.get("items")).some((r) => r.item_no === n), no);

    // Offline in A: a new item (its number unknown until the server assigns it), a
    // movement and a photo are kept, nothing reaches the server.
    await a.setOffline(true);
    await pageA.fill("#new-item input[name=name]", "Barrel");
    await pageA.click("#new-item button");
    await pageA.click(`li[data-item-no="${no}"] button.less`);
    await pageA.setInputFiles(`li[data-item-no="${no}"] .photo-form input[type=file]`, { name: "crate.png", mimeType: "image/png", buffer: PNG });
    await pageA.click(`li[data-item-no="${no}"] .photo-form button`);
    await pageA.waitForFunction(() => RhtmxSync.pendingCount === 3);
    assert.deepEqual(q("SELECT name FROM items ORDER BY item_no").map((r) => r.name), ["Crate"]);
    assert.deepEqual(q("SELECT COUNT(*) AS n FROM item_photos"), [{ n: 0 }]);

    // Online again: each applied once, in order; the file arrives byte for byte.
    await a.setOffline(false);
    await pageA.waitForFunction(() => RhtmxSync.pendingCount === 0);
    assert.deepEqual(q("SELECT name FROM items ORDER BY item_no").map((r) => r.name), ["Crate", "Barrel"]);
    assert.deepEqual(q(`SELECT SUM(delta) AS s, COUNT(*) AS n FROM movements WHERE item_no = ${no}`), [{ s: 4, n: 2 }]);
    const [photo] = q(`SELECT content_type, ${hex("bytes")} AS hex FROM item_photos WHERE item_no = ${no}`);
    assert.equal(photo.content_type, "image/png");
    const served = await fetch(`${server.base}/items/${no}/photo`);
    assert.equal(served.headers.get("x-content-type-options"), "nosniff");
    assert.match(served.headers.get("content-security-policy"), /sandbox/);
    assert.equal(sha(Buffer.from(photo.hex, "hex")), sha(PNG));
    // B refreshed live: the new item, the stock, and the photo it can load.
    await pageB.waitForSelector("li.item:has-text('Barrel')");
    await pageB.waitForSelector(`li[data-item-no="${no}"] .stock:text-is('4')`);
    await pageB.waitForFunction((n) => {
      const img = document.querySelector(`li[data-item-no="${n}"] img.photo`);
      return img && img.complete && img.naturalWidth === 1;
    }, no);

    // Deleting the item deletes its movements by cascade: each is logged, and B's mirror
    // drops them as it drops the item.
    const movements = q(`SELECT movement_id FROM movements WHERE item_no = ${no}`).map((r) => r.movement_id);
    await pageA.click(`li[data-item-no="${no}"] button.delete`);
    await pageB.waitForSelector(`li[data-item-no="${no}"]`, { state: "detached" });
    assert.deepEqual(q(`SELECT COUNT(*) AS n FROM movements WHERE item_no = ${no}`), [{ n: 0 }]);
    const logged = q("SELECT entity_id FROM _rhtmx_sync_log WHERE entity = 'movements' AND action = 'delete' ORDER BY version")
      .map((r) => Number(r.entity_id));
    assert.deepEqual(logged, movements);
    await waitInPage(pageB, async (n) => {
      const [items, moves] = await Promise.all([RhtmxSync.get("items"), RhtmxSync.get("movements")]);
      return !items.some((r) => r.item_no === n) && !moves.some((r) => r.item_no === n);
    }, no);
  } finally {
    await a.close();
    await b.close();
  }
});

test("a photo that is not an image, or too large, is refused with a 4xx and changes nothing", async () => {
  const context = await browser.newContext();
  try {
    const page = await open(context);
    await page.fill("#new-item input[name=name]", "Box");
    await page.click("#new-item button");
    await page.waitForSelector("li.item:has-text('Box')");
    const [{ item_no: no }] = q("SELECT item_no FROM items WHERE name = 'Box'");
    const upload = (name, type, bytes) => page.evaluate(async ([url, name, type, bytes]) => {
      const body = new FormData();
      body.append("photo", new File([new Uint8Array(bytes)], name, { type }));
      return (await fetch(url, { method: "POST", body })).status;
    }, [`/items/${no}/photo`, name, type, [...bytes]]);
    assert.equal(await upload("notes.txt", "text/plain", Buffer.from("hello")), 422);
    // SVG can carry script, and photos are served from the app's origin.
    assert.equal(await upload("x.svg", "image/svg+xml", Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')), 422);
    assert.equal(await upload("huge.png", "image/png", Buffer.alloc(1024 * 1024 + 1)), 413);
    assert.equal(await upload("huger.png", "image/png", Buffer.alloc(2 * 1024 * 1024)), 413); // past the body limit
    // A movement too large to add up is refused, and the page still renders.
    const move = (delta) => page.evaluate(async ([url, delta]) =>
      (await fetch(url, { method: "POST", body: new URLSearchParams({ delta }) })).status, [`/items/${no}/movements`, delta]);
    assert.equal(await move("9223372036854775807"), 422);
    assert.equal(await move("1000001"), 422);
    assert.equal((await fetch(server.base + "/")).status, 200);
    assert.deepEqual(q(`SELECT photo_bytes FROM items WHERE item_no = ${no}`), [{ photo_bytes: 0 }]);
    assert.deepEqual(q("SELECT COUNT(*) AS n FROM item_photos"), [{ n: 0 }]);
  } finally {
    await context.close();
  }
});

test("a write queued for an item deleted meanwhile is refused, never applied to a newer item", async () => {
  const context = await browser.newContext();
  try {
    const page = await open(context);
    const add = (name) => page.evaluate(async (name) =>
      (await fetch("/items", { method: "POST", body: new URLSearchParams({ name }) })).status, name);
    assert.equal(await add("keep"), 200);
    assert.equal(await add("doomed"), 200);
    await page.waitForSelector("li.item:has-text('doomed')");
    const [{ item_no: doomed }] = q("SELECT item_no FROM items WHERE name = 'doomed'");
    await context.setOffline(true);
    await page.click(`li[data-item-no="${doomed}"] button.more`);
    await page.waitForFunction(() => RhtmxSync.pendingCount === 1);
    // Another client deletes it and adds an item while this one is offline.
    assert.equal((await fetch(`${server.base}/items/${doomed}`, { method: "DELETE" })).status, 200);
    assert.equal((await fetch(`${server.base}/items`, { method: "POST", body: new URLSearchParams({ name: "newer" }) })).status, 200);
    const [{ item_no: newer }] = q("SELECT item_no FROM items WHERE name = 'newer'");
    assert.notEqual(newer, doomed, "a deleted item's number is not given again");
    await context.setOffline(false);
    await waitInPage(page, async () => (await RhtmxSync.deadLetters()).length === 1);
    const [dead] = await page.evaluate(() => RhtmxSync.deadLetters());
    assert.equal(dead.status, 404);
    assert.deepEqual(q(`SELECT COUNT(*) AS n FROM movements WHERE item_no = ${newer}`), [{ n: 0 }]);
  } finally {
    await context.close();
  }
});

test("a quiet entity's cursor moves with the stream's other changes", async () => {
  const context = await browser.newContext();
  try {
    const page = await open(context);
    // Only items change: movements has no event, yet it holds everything up to them too.
    for (let i = 0; i < 3; i++) dbExec(server.dbPath, `INSERT INTO items (name) VALUES ('quiet ${i}')`);
    const [{ head }] = dbQuery(server.dbPath, "SELECT max(version) AS head FROM _rhtmx_sync_log");
    const stored = () => page.evaluate(async () => {
      const out = {};
      for (const { name } of (await indexedDB.databases()).filter((d) => d.name.startsWith("rhtmx-sync"))) {
        const db = await new Promise((ok, fail) => {
          const r = indexedDB.open(name);
          r.onsuccess = () => ok(r.result);
          r.onerror = () => fail(r.error);
        });
        if (db.objectStoreNames.contains("_meta")) {
          for (const key of ["version:items", "version:movements"]) {
            out[key] = await new Promise((ok) => {
              const get = db.transaction("_meta").objectStore("_meta").get(key);
              get.onsuccess = () => ok(get.result?.value);
            });
          }
        }
        db.close();
      }
      return out;
    });
    await eventually(async () => parseInt((await stored())["version:items"], 10) >= Number(head), {
      what: "the items' events stored",
    });
    const cursors = await stored();
    assert.equal(parseInt(cursors["version:movements"], 10), Number(head), JSON.stringify(cursors));
  } finally {
    await context.close();
  }
});
