import { execFileSync } from "node:child_process";
import { afterAll, describe, expect, it } from "vitest";
import { ListenConnection } from "../server/store/listen-connection.js";
import { SessionLocks } from "../server/store/session-locks.js";
import { freshSchema, PG_PORT, PG_URL, TEST_DATABASE, withPostgres } from "./support/databases.js";

/**
 * The long-lived sessions notice a dead peer within seconds on both ends: their sockets, the
 * process's and PostgreSQL's backend's, probe an idle peer after 10 s, not after Linux's default
 * two hours (read from the kernel with `ss`, whose keepalive timers count down from the delay).
 */

/**
 * Seconds until the first keepalive probe of the established socket from `local` to `remote`, as
 * `ss` shows it ("timer:(keepalive,119min,0)"; iproute2 6.1 prints seconds as "8.484ms").
 */
function keepaliveSeconds(local: number, remote: number): number | undefined {
  const out = execFileSync(
    "ss",
    ["-tnoH", "state", "established", `( sport = :${local} and dport = :${remote} )`],
    { encoding: "utf8" },
  );
  const [, value, unit] = /timer:\(keepalive,([\d.]+)(min|sec|ms),/.exec(out) ?? [];
  if (value === undefined) return undefined;
  if (unit === "min") return Number(value) * 60;
  return unit === "ms" && !value.includes(".") ? Number(value) / 1000 : Number(value);
}

/** Both ends of the session's connection probe an idle peer within 10 s. */
async function expectKeepalives(port: number): Promise<void> {
  // Idle for a moment, so that the timer shown is the keepalive, not a retransmission's.
  await new Promise((r) => setTimeout(r, 300));
  for (const [local, remote] of [
    [port, PG_PORT],
    [PG_PORT, port],
  ] as const) {
    const seconds = keepaliveSeconds(local, remote);
    expect(seconds, `keepalive of ${local} -> ${remote}`).toBeDefined();
    expect(seconds).toBeGreaterThan(0);
    expect(seconds).toBeLessThanOrEqual(10);
  }
}

/** The client port of the backend, found by what it runs or holds. */
async function clientPort(where: string, parameters: unknown[]): Promise<number> {
  return withPostgres(TEST_DATABASE, async (client) => {
    const { rows } = await client.query<{ client_port: number }>(
      `SELECT client_port FROM pg_stat_activity WHERE ${where}`,
      parameters,
    );
    expect(rows).toHaveLength(1);
    return (rows[0] as { client_port: number }).client_port;
  });
}

const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups) await cleanup().catch(() => {});
});

describe("long-lived PostgreSQL sessions", () => {
  it("the lock session probes a silent peer after 10 s on both ends", async () => {
    const locks = new SessionLocks(PG_URL, freshSchema("ka"));
    cleanups.push(() => locks.close());
    const held = await locks.tryAcquire("keepalive-test");
    expect(held).toBeDefined();
    const port = await clientPort(
      `pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
         AND ((classid::int8 << 32) | objid::int8) = hashtextextended($1, 0))`,
      [locks.keyText("keepalive-test")],
    );
    await expectKeepalives(port);
  });

  it("the LISTEN connection does too", async () => {
    const channel = `ka_${freshSchema("ch")}`;
    let up: () => void = () => {};
    const listening = new Promise<void>((resolve) => {
      up = resolve;
    });
    const listen = new ListenConnection({
      url: PG_URL,
      channel,
      retryMs: 1_000,
      onNotice: () => {},
      onUp: () => up(),
      onError: () => {},
    });
    cleanups.push(() => listen.close());
    await listening;
    const port = await clientPort("query = $1", [`LISTEN ${channel}`]);
    await expectKeepalives(port);
  });
});
