import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ListenConnection } from "../server/store/listen-connection.js";
import { PG_URL } from "./support/databases.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(20);
  }
}

let admin: pg.Client;
beforeAll(async () => {
  admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
});
afterAll(async () => {
  await admin?.end();
});

it("reconnects after its backend is terminated, says so, and hears notices again", async () => {
  const channel = `orisun_listen_test_${process.pid}`;
  const notices: string[] = [];
  const errors: Error[] = [];
  let ups = 0;
  const connection = new ListenConnection({
    url: PG_URL,
    channel,
    retryMs: 100,
    onNotice: (payload) => notices.push(payload),
    onUp: () => ups++,
    onError: (error) => errors.push(error),
  });
  try {
    await until(() => connection.listening, "it listens");
    expect(ups).toBe(1);
    await admin.query(`NOTIFY ${channel}, 'one'`);
    await until(() => notices.includes("one"), "the first notice arrives");

    const down: boolean[] = [];
    const watch = setInterval(() => down.push(!connection.listening), 5);
    const { rows } = await admin.query<{ ok: boolean }>(
      `SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE query = $1`,
      [`LISTEN ${channel}`],
    );
    expect(rows.map((r) => r.ok)).toEqual([true]);
    await until(() => errors.length === 1, "the loss is reported");
    await until(() => connection.listening && ups === 2, "it listens again");
    clearInterval(watch);
    // It said it was not listening while it was down: a cache trusting it could tell.
    expect(down).toContain(true);
    await admin.query(`NOTIFY ${channel}, 'two'`);
    await until(() => notices.includes("two"), "a notice after the reconnect arrives");
  } finally {
    await connection.close();
  }
  expect(connection.listening).toBe(false);
  await sleep(300);
  expect([ups, errors.length]).toEqual([2, 1]);
});
