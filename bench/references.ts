/**
 * What Orisun's numbers are compared with, measured on the same machine and database: PostgreSQL's
 * own limit for event-like inserts (pgbench), its COPY rate for a boundary's events (psql), and a
 * peer event store, Emmett on PostgreSQL (bench/peers/emmett, installed apart from Orisun).
 */
import { spawn, spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdtempSync,
  openSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { ROOT } from "./server.js";

/** Runs a command to its end; its stdout, or an error with its stderr. */
function run(command: string, args: string[], cwd?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      err += d.toString();
    });
    child.on("error", reject);
    child.on("close", (code) => {
      if (code === 0) resolve(out);
      else reject(new Error(`${command} exited with ${code}: ${err.trim()}`));
    });
  });
}

export async function sql(url: string, text: string): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await client.query(text);
  } finally {
    await client.end();
  }
}

/**
 * Waits until PostgreSQL is quiet before a timed run: a CHECKPOINT first, since the WAL of earlier
 * work (the million-event load writes gigabytes) otherwise triggers one mid-run, and every page's
 * first change after it writes a full-page image (the pgbench reference measured 5,911 and 3,646
 * rows/s at 16 and 64 clients so, against 10,731 and 12,670 alone); then until no autovacuum
 * worker runs, for at most `maxMs`.
 */
export async function quiesce(url: string, maxMs = 30_000): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query("CHECKPOINT");
    const until = performance.now() + maxMs;
    while (performance.now() < until) {
      const { rows } = await client.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
      );
      if (rows[0]?.n === 0) return;
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    await client.end();
  }
}

/** The reference tables: `lean` is the best case, `orisun` has Orisun's columns and indexes. */
export type PgbenchTable = "lean" | "orisun";

/**
 * pgbench against tables shaped like an event log (its own schema, made here and dropped by
 * `drop`): each transaction inserts `rows` events in one statement. Two tables, so that the
 * reference is both the best this PostgreSQL does and a like-for-like twin of Orisun's log:
 * - `lean`: a bigserial primary key and a unique uuid, no other index (jsonb tags and data);
 * - `orisun`: orisun_events' columns and its four indexes: primary key (boundary, commit,
 *   prepare), unique (boundary, event_id), (boundary, type, commit, prepare), GIN on tags.
 */
export class Pgbench {
  private readonly dir = mkdtempSync(join(tmpdir(), "orisun-pgbench-"));

  private constructor(
    private readonly url: string,
    private readonly schema: string,
  ) {}

  static async create(url: string, schema: string): Promise<Pgbench> {
    await sql(
      url,
      `CREATE SCHEMA "${schema}";
       CREATE TABLE "${schema}".events (
         position bigserial PRIMARY KEY,
         id uuid NOT NULL UNIQUE,
         type text NOT NULL,
         tags jsonb NOT NULL,
         data jsonb NOT NULL,
         date_created timestamptz NOT NULL DEFAULT now()
       );
       CREATE SEQUENCE "${schema}".positions;
       CREATE TABLE "${schema}".orisun_events (
         boundary text NOT NULL,
         commit_position int8 NOT NULL,
         prepare_position int8 NOT NULL,
         event_id text NOT NULL,
         event_type text NOT NULL,
         tags text[] NOT NULL,
         data json NOT NULL,
         metadata json,
         date_created timestamptz NOT NULL DEFAULT now(),
         PRIMARY KEY (boundary, commit_position, prepare_position),
         UNIQUE (boundary, event_id)
       );
       CREATE INDEX ON "${schema}".orisun_events
         (boundary, event_type, commit_position, prepare_position);
       CREATE INDEX ON "${schema}".orisun_events USING gin (tags);`,
    );
    return new Pgbench(url, schema);
  }

  /**
   * Rows per second with `clients` connections, each inserting `rows` rows per transaction, after
   * quiesce() unless `quiet` is false (bursts a few seconds apart, as bench/interleaved.ts runs
   * them, would spend more time in CHECKPOINT than in pgbench). pgbench runs min(clients, cores)
   * threads: more threads than cores measured slower (16 clients: 10,731 rows/s with -j 2, 8,283
   * with -j 16; 64: 12,670 and 11,058).
   */
  async rowsPerSecond(
    clients: number,
    rows: number,
    seconds: number,
    table: PgbenchTable = "lean",
    quiet = true,
  ): Promise<number> {
    const s = `"${this.schema}"`;
    const script = join(this.dir, `${table}-${rows}.sql`);
    const series = `generate_series(1, ${rows})`;
    const lean = `gen_random_uuid(), 'Deposited', jsonb_build_array(jsonb_build_object('key', 'account', 'value', 'c' || :client_id)), '{"amount": 1}'`;
    const text =
      table === "lean"
        ? `INSERT INTO ${s}.events (id, type, tags, data) ${rows === 1 ? `VALUES (${lean})` : `SELECT ${lean} FROM ${series}`};\n`
        : `INSERT INTO ${s}.orisun_events (boundary, commit_position, prepare_position, event_id, event_type, tags, data) SELECT 'b', p, p, gen_random_uuid()::text, 'Deposited', ARRAY['["account","c' || :client_id || '"]'], '{"amount": 1}' FROM (SELECT nextval('${s}.positions') AS p FROM ${series}) AS x;\n`;
    writeFileSync(script, text);
    if (quiet) await quiesce(this.url);
    const out = await run("pgbench", [
      "-n",
      "-f",
      script,
      "-c",
      String(clients),
      "-j",
      String(Math.min(clients, cpus().length)),
      "-T",
      String(seconds),
      this.url,
    ]);
    const tps = /^tps = ([\d.]+)/m.exec(out);
    if (!tps) throw new Error(`no tps in pgbench output:\n${out}`);
    return Number(tps[1]) * rows;
  }

  async drop(): Promise<void> {
    rmSync(this.dir, { recursive: true, force: true });
    await sql(this.url, `DROP SCHEMA IF EXISTS "${this.schema}" CASCADE`);
  }
}

/**
 * Rows/s of `COPY (SELECT what GetEvents returns, in position order) TO STDOUT` for one boundary,
 * through psql into /dev/null: the rate at which PostgreSQL alone hands the events out.
 */
export async function copyRate(
  url: string,
  schema: string,
  boundary: string,
  rows: number,
): Promise<number> {
  const query = `COPY (SELECT event_id, event_type, tags, data, metadata, commit_position, prepare_position, date_created, boundary FROM "${schema}".orisun_events WHERE boundary = '${boundary}' ORDER BY commit_position, prepare_position) TO STDOUT`;
  const started = performance.now();
  await new Promise<void>((resolve, reject) => {
    const child = spawn("psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", query, url], {
      stdio: ["ignore", "ignore", "inherit"],
    });
    child.on("error", reject);
    child.on("close", (code) =>
      code === 0 ? resolve() : reject(new Error(`psql exited with ${code}`)),
    );
  });
  return rows / ((performance.now() - started) / 1_000);
}

/**
 * Durable writes/s the disk under `dir` takes one at a time: an 8 kB write (a WAL page) then its
 * fsync, over and over for `seconds`, as pg_test_fsync measures it. An embedded append waits for
 * one such sync per group-commit batch, so this bounds one client's appends/s.
 */
export function diskSyncRate(dir: string, seconds: number): number {
  const path = join(dir, "fsync-probe");
  const page = Buffer.alloc(8192, 1);
  const fd = openSync(path, "w");
  try {
    writeSync(fd, Buffer.alloc(1 << 20));
    fsyncSync(fd);
    const started = performance.now();
    let syncs = 0;
    while (performance.now() - started < seconds * 1_000) {
      writeSync(fd, page, 0, page.length, (syncs % 128) * page.length);
      fsyncSync(fd);
      syncs++;
    }
    return syncs / ((performance.now() - started) / 1_000);
  } finally {
    closeSync(fd);
    rmSync(path, { force: true });
  }
}

const EMMETT = `${ROOT}bench/peers/emmett`;

/** Installs the Emmett peer from its lock file when a fresh clone has no node_modules for it. */
export function ensureEmmett(): void {
  if (existsSync(`${EMMETT}/node_modules/@event-driven-io/emmett-postgresql`)) return;
  console.log("installing the Emmett peer (npm ci --prefix bench/peers/emmett)…");
  const result = spawnSync("npm", ["ci", "--prefix", EMMETT, "--no-audit", "--no-fund"], {
    stdio: "inherit",
  });
  if (result.status !== 0) throw new Error("npm ci for bench/peers/emmett failed");
}

/** Emmett's event store in a database of its own, made here and dropped by `drop`. */
export class Emmett {
  private constructor(
    private readonly adminUrl: string,
    private readonly database: string,
    private readonly url: string,
  ) {}

  static async create(adminUrl: string, database: string): Promise<Emmett> {
    await sql(adminUrl, `CREATE DATABASE "${database}"`);
    const url = new URL(adminUrl);
    url.pathname = `/${database}`;
    return new Emmett(adminUrl, database, url.toString());
  }

  /**
   * `clients` loops, each appending one event per call to its own stream with the version it last
   * got as expectedStreamVersion; events/s, and the Emmett process's CPU time over the run as a
   * percentage of one core (Emmett is a library: this process is both the client and the store).
   */
  async appends(clients: number, seconds: number): Promise<{ rate: number; cpuPercent: number }> {
    const out = await run(
      process.execPath,
      [`${EMMETT}/append.mjs`, this.url, String(clients), String(seconds)],
      EMMETT,
    );
    const result = JSON.parse(out.trim().split("\n").at(-1) ?? "") as {
      events: number;
      ms: number;
      cpuMs: number;
    };
    return {
      rate: result.events / (result.ms / 1_000),
      cpuPercent: (100 * result.cpuMs) / result.ms,
    };
  }

  async drop(): Promise<void> {
    await sql(this.adminUrl, `DROP DATABASE IF EXISTS "${this.database}" WITH (FORCE)`);
  }
}
