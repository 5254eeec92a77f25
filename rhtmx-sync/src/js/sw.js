// rhtmx-sync service worker: the offline app shell. Opt in with
// <script src="/api/sync/client.js" data-service-worker ...>.
//
// Navigations, htmx GETs and static assets are network-first: a good response is cached,
// and without a network the last good one is served, marked stale (a <meta> in pages, an
// `X-Rhtmx-Stale` header on fragments) so the page can say so. The sync API, the event
// stream and every non-GET request pass through untouched: the client's outbox owns
// writes. A response marked `Cache-Control: no-store` is never kept (and drops an older
// copy); bodies are kept and served byte for byte. The client deletes these caches when
// the browser's user changes and at `RhtmxSync.clear()`. `VERSION` is prepended by the
// server; a new version deletes older caches.
/* global VERSION */
const CACHE = "rhtmx-shell-" + VERSION;
const SYNC_PREFIX = new URL(self.location.href).pathname.replace(/\/sw\.js$/, "");

self.addEventListener("install", () => self.skipWaiting());

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) {
      if (key.startsWith("rhtmx-shell-") && key !== CACHE) await caches.delete(key);
    }
    await self.clients.claim();
  })());
});

// htmx GETs and navigations may share a URL (hx-boost): keep them apart in the cache.
const keyFor = (request, url) => {
  if (!request.headers.has("HX-Request")) return url.href;
  const u = new URL(url.href);
  u.searchParams.set("_rhtmx_hx", "1");
  return u.href;
};

function handled(request, url) {
  if (request.method !== "GET" || url.origin !== self.location.origin) return false;
  if (url.pathname.startsWith(SYNC_PREFIX + "/") && !url.pathname.endsWith("/client.js")) return false;
  if ((request.headers.get("Accept") || "").includes("text/event-stream")) return false;
  return request.mode === "navigate" || request.headers.has("HX-Request") ||
    ["script", "style", "font", "image", "manifest"].includes(request.destination);
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (handled(event.request, url)) event.respondWith(networkFirst(event.request, url));
});

async function networkFirst(request, url) {
  const cache = await caches.open(CACHE);
  const key = keyFor(request, url);
  try {
    const response = await fetch(request);
    if (noStore(response)) await cache.delete(key);
    else if (response.ok && response.type === "basic") await cache.put(key, response.clone());
    return response;
  } catch (error) {
    const hit = await cache.match(key, { ignoreVary: true });
    if (!hit) {
      if (request.mode === "navigate") {
        return new Response("<!doctype html><title>Offline</title><p>You are offline and this page was never loaded before.</p>",
          { status: 503, headers: { "Content-Type": "text/html; charset=utf-8" } });
      }
      throw error;
    }
    return stale(hit, request.mode === "navigate");
  }
}

const noStore = (response) => /no-store/i.test(response.headers.get("Cache-Control") || "");

async function stale(hit, page) {
  const since = hit.headers.get("Date") || "";
  const headers = new Headers(hit.headers);
  headers.set("X-Rhtmx-Stale", since || "unknown");
  // Only an HTML page is read as text (to mark it); anything else (images, fonts) is
  // passed on as the bytes it was.
  let body = hit.body;
  if (page && /html/i.test(hit.headers.get("Content-Type") || "")) {
    const meta = `<meta name="rhtmx-stale" content="${since.replace(/"/g, "")}">`;
    body = await hit.text();
    body = /<head[^>]*>/i.test(body) ? body.replace(/<head[^>]*>/i, (m) => m + meta) : meta + body;
  }
  return new Response(body, { status: hit.status, statusText: hit.statusText, headers });
}

// The registering page asks for itself and its assets to be cached.
self.addEventListener("message", (event) => {
  if (!event.data || event.data.type !== "warm") return;
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    for (const href of event.data.urls) {
      const url = new URL(href, self.location.href);
      if (url.origin !== self.location.origin) continue;
      try {
        const response = await fetch(url.href, { credentials: "same-origin" });
        if (response.ok && !noStore(response)) await cache.put(url.href, response);
      } catch (_) {
        // offline already: nothing to warm
      }
    }
  })());
});
