// A throwaway PostgreSQL server for browser tests, from the machine's own binaries (as
// the Rust tests' tests/pg/mod.rs): initdb into a temp dir, started on a free port on
// 127.0.0.1. `initdb` refuses root: as root it runs as the `postgres` user.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, existsSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

function binDir() {
  if (process.env.RHTMX_TEST_PG_BIN) return process.env.RHTMX_TEST_PG_BIN;
  const versions = existsSync("/usr/lib/postgresql")
    ? readdirSync("/usr/lib/postgresql").filter((v) => existsSync(`/usr/lib/postgresql/${v}/bin/initdb`))
    : [];
  versions.sort((a, b) => Number(a) - Number(b));
  if (!versions.length) throw new Error("PostgreSQL is not installed (apt-get install -y postgresql)");
  return `/usr/lib/postgresql/${versions.at(-1)}/bin`;
}

const freePort = () =>
  new Promise((ok) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });

/** Starts a server; resolves with `{ url, query(sql), stop() }`. */
export async function startPostgres() {
  const bin = binDir();
  const dir = mkdtempSync(join(tmpdir(), "rhtmx-pg-"));
  const root = process.getuid() === 0;
  if (root) execFileSync("chown", ["-R", "postgres:", dir]);
  const port = await freePort();
  const run = (cmd, args) =>
    root
      ? execFileSync("runuser", ["-u", "postgres", "--", join(bin, cmd), ...args], { stdio: "pipe" })
      : execFileSync(join(bin, cmd), args, { stdio: "pipe" });
  run("initdb", ["-D", join(dir, "data"), "-U", "test", "--auth=trust", "-E", "UTF8", "--locale=C"]);
  run("pg_ctl", [
    "-D", join(dir, "data"), "-w", "-l", join(dir, "server.log"),
    "-o", `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, "start",
  ]);
  const url = `postgres://test@127.0.0.1:${port}/postgres`;
  return {
    url,
    /** Rows of `sql` as objects, through psql. */
    query(sql) {
      const out = execFileSync("psql", [url, "-At", "-c", `SELECT coalesce(json_agg(t), '[]') FROM (${sql}) AS t`], {
        encoding: "utf8",
      });
      return JSON.parse(out);
    },
    stop() {
      try {
        run("pg_ctl", ["-D", join(dir, "data"), "-m", "immediate", "stop"]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
