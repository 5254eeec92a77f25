// The client's size, minified and gzipped, against its budget (the benchmarks track it;
// Replicache's client is ~18 KB min+brotli).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { minify } from "terser";

const BUDGET = 12 * 1024;

for (const file of ["rhtmx-sync.js", "sw.js"]) {
  test(`${file} minified + gzip fits the budget`, async () => {
    const source = readFileSync(new URL(`../../rhtmx-sync/src/js/${file}`, import.meta.url), "utf8");
    const { code } = await minify(source, { compress: true, mangle: true });
    const gz = gzipSync(code, { level: 9 }).length;
    console.log(`# ${file}: ${source.length} B source, ${code.length} B minified, ${gz} B min+gzip`);
    assert.ok(gz <= BUDGET, `${gz} B > ${BUDGET} B`);
  });
}
