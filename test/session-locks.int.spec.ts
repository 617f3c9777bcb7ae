import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionLocks } from "../server/store/session-locks.js";
import { PG_HOST, PG_PORT, PG_URL, pgUrlVia } from "./support/databases.js";
import { startTcpProxy, type TcpProxy } from "./support/tcp-proxy.js";

async function eventually(condition: () => boolean | Promise<boolean>, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("session locks on PostgreSQL", () => {
  let proxy: TcpProxy;
  beforeAll(async () => {
    proxy = await startTcpProxy(PG_HOST, PG_PORT);
  });
  afterAll(() => proxy.close());

  it("are exclusive across instances, and free again when released", async () => {
    const one = new SessionLocks(PG_URL, "locks_a");
    const two = new SessionLocks(PG_URL, "locks_a");
    const name = `lock-${Date.now()}-exclusive`;
    try {
      const held = await one.tryAcquire(name);
      expect(held).toBeDefined();
      expect(await one.tryAcquire(name)).toBeUndefined();
      expect(await two.tryAcquire(name)).toBeUndefined();
      await held?.release();
      expect(await two.tryAcquire(name)).toBeDefined();
    } finally {
      await Promise.all([one.close(), two.close()]);
    }
  });

  it("are separate per namespace: deployments in other schemas of the database do not collide", async () => {
    const a = new SessionLocks(PG_URL, "schema_a");
    const b = new SessionLocks(PG_URL, "schema_b");
    const name = `orisun-publisher:orders-${Date.now()}`;
    try {
      const heldA = await a.tryAcquire(name);
      const heldB = await b.tryAcquire(name);
      expect(heldA).toBeDefined();
      expect(heldB).toBeDefined();
      await Promise.all([heldA?.release(), heldB?.release()]);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it("tell their holders when the session dies, and work again once the database is back", async () => {
    const url = pgUrlVia(proxy.port);
    const locks = new SessionLocks(url, "locks_a");
    const other = new SessionLocks(PG_URL, "locks_a");
    const name = `lock-${Date.now()}-lost`;
    try {
      const held = await locks.tryAcquire(name);
      expect(held).toBeDefined();
      proxy.cut();
      await eventually(() => held?.lost.aborted === true);
      // PostgreSQL freed it with the session: another process may take it now.
      await eventually(async () => {
        const taken = await other.tryAcquire(name);
        await taken?.release();
        return taken !== undefined;
      });
      proxy.restore();
      await eventually(async () => {
        const again = await locks.tryAcquire(name).catch(() => undefined);
        await again?.release();
        return again !== undefined;
      });
    } finally {
      proxy.restore();
      await Promise.all([locks.close(), other.close()]);
    }
  });
});
