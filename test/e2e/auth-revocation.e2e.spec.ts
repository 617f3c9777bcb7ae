import { Code, ConnectError } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { basic, bearer, clientsWith, oneEvent } from "../support/auth.js";
import { dropSchema, freshDataDir, freshSchema, NATS_URL, PG_URL } from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const ADMIN = basic("admin", "adm1n-Secret-pw");
const schema = freshSchema("authr");
let a: SpawnedServer;
let b: SpawnedServer;
/** Every password and key secret the scenario used: none may reach either server's log. */
const secrets = [
  "adm1n-Secret-pw",
  "bob-Secret-pw",
  "carol-Secret-pw",
  "dave-Old-pw",
  "dave-New-pw",
];

/**
 * Resolves with the code the stream ended with and when; rejects if it ends without an error, or
 * has not ended 5 s after `armed()` is called (the change it waits for was made).
 */
function ending(stream: AsyncIterable<unknown>): Promise<{ code: Code; at: number }> & {
  armed(): Promise<{ code: Code; at: number }>;
} {
  const ended = (async () => {
    try {
      for await (const _ of stream) {
        // events are not the point: the stream must end with an error
      }
    } catch (error) {
      return { code: ConnectError.from(error).code, at: Date.now() };
    }
    throw new Error("the stream ended without an error");
  })();
  return Object.assign(ended, {
    armed: () =>
      Promise.race([
        ended,
        new Promise<never>((_, fail) =>
          setTimeout(() => fail(new Error("the stream still runs 5 s after the change")), 5_000),
        ),
      ]),
  });
}

async function codeOf(work: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await work;
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

/**
 * Polls `work` until it answers `code`; resolves to when (after `since`) the first call that got
 * it was sent: a refused credential may take a slow hash to answer, but it was refused then.
 */
async function until(work: () => Promise<Code | "ok">, code: Code, since: number): Promise<number> {
  for (;;) {
    const sent = Date.now();
    if ((await work()) === code) return sent - since;
    if (Date.now() - since > 5_000) throw new Error(`not ${Code[code]} after 5 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  const env = {
    ORISUN_PG_URL: PG_URL,
    ORISUN_PG_SCHEMA: schema,
    ORISUN_NATS_URL: NATS_URL,
    ORISUN_AUTH: "on",
    ORISUN_ADMIN_PASSWORD: "adm1n-Secret-pw",
  };
  a = await spawnServer({ ...env, ORISUN_DATA_DIR: freshDataDir() });
  b = await spawnServer({ ...env, ORISUN_DATA_DIR: freshDataDir() });
}, 120_000);

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await dropSchema(schema);
});

describe("changes of principals on one server reach the other within a second", () => {
  it("a revoked key stops working on the other server, and its running subscriptions end", async () => {
    const onA = clientsWith(createGrpcTransport({ baseUrl: a.url }), ADMIN);
    await onA.admin.createUser(
      {
        name: "bob",
        password: "bob-Secret-pw",
        grants: [
          { boundary: "orders_*", access: "read" },
          { subject: "orders.>", access: "subscribe" },
        ],
      },
      { headers: onA.headers },
    );
    await onA.store.saveEvents(oneEvent("orders_r", "r1"), { headers: onA.headers });
    const made = await onA.admin.createApiKey(
      { user: "bob", name: "ci" },
      { headers: onA.headers },
    );
    const keyOnB = clientsWith(createGrpcTransport({ baseUrl: b.url }), bearer(made.secret));
    const read = () =>
      codeOf(keyOnB.store.getEvents({ boundary: "orders_r" }, { headers: keyOnB.headers }));
    expect(await read()).toBe("ok");
    const stop = new AbortController();
    const events = ending(
      keyOnB.store.subscribeToEvents(
        { boundary: "orders_r" },
        { headers: keyOnB.headers, signal: stop.signal },
      ),
    );
    const messages = ending(
      keyOnB.store.subscribeToPubSub(
        { subject: "orders.>" },
        { headers: keyOnB.headers, signal: stop.signal },
      ),
    );
    // Both streams are running on B (a refused one would have ended at once).
    await new Promise((r) => setTimeout(r, 500));

    await onA.admin.revokeApiKey({ id: made.key?.id ?? "" }, { headers: onA.headers });
    const revokedAt = Date.now();
    const [e, m] = await Promise.all([events.armed(), messages.armed()]);
    expect(e.code).toBe(Code.PermissionDenied);
    expect(m.code).toBe(Code.PermissionDenied);
    expect(e.at - revokedAt).toBeLessThan(1_000);
    expect(m.at - revokedAt).toBeLessThan(1_000);
    expect(await until(read, Code.Unauthenticated, revokedAt)).toBeLessThan(1_000);
    stop.abort();
  }, 60_000);

  it("a deleted user stops working on the other server, with its keys, and its streams end", async () => {
    const onA = clientsWith(createGrpcTransport({ baseUrl: a.url }), ADMIN);
    await onA.admin.createUser(
      { name: "carol", password: "carol-Secret-pw", grants: [{ boundary: "*", access: "read" }] },
      { headers: onA.headers },
    );
    const key = await onA.admin.createApiKey(
      { user: "carol", name: "reader", grants: [{ boundary: "orders_*", access: "read" }] },
      { headers: onA.headers },
    );
    secrets.push(key.secret);
    const userOnB = clientsWith(
      createGrpcTransport({ baseUrl: b.url }),
      basic("carol", "carol-Secret-pw"),
    );
    const keyOnB = clientsWith(createGrpcTransport({ baseUrl: b.url }), bearer(key.secret));
    const read = (c: typeof userOnB) => () =>
      codeOf(c.store.getEvents({ boundary: "orders_r" }, { headers: c.headers }));
    expect(await read(userOnB)()).toBe("ok");
    expect(await read(keyOnB)()).toBe("ok");
    const stop = new AbortController();
    const stream = ending(
      userOnB.store.subscribeToEvents(
        { boundary: "orders_r" },
        { headers: userOnB.headers, signal: stop.signal },
      ),
    );
    await new Promise((r) => setTimeout(r, 500));
    await onA.admin.deleteUser({ name: "carol" }, { headers: onA.headers });
    const deletedAt = Date.now();
    const ended = await stream.armed();
    expect(ended.code).toBe(Code.PermissionDenied);
    expect(ended.at - deletedAt).toBeLessThan(1_000);
    expect(await until(read(userOnB), Code.Unauthenticated, deletedAt)).toBeLessThan(1_000);
    expect(await until(read(keyOnB), Code.Unauthenticated, deletedAt)).toBeLessThan(1_000);
    const keys = await onA.admin.listApiKeys({ user: "carol" }, { headers: onA.headers });
    expect(keys.keys).toEqual([]);
    stop.abort();
  }, 60_000);

  it("a changed password stops the old one on the other server, and the new one works", async () => {
    const onA = clientsWith(createGrpcTransport({ baseUrl: a.url }), ADMIN);
    await onA.admin.createUser(
      { name: "dave", password: "dave-Old-pw", grants: [{ boundary: "*", access: "read" }] },
      { headers: onA.headers },
    );
    const oldOnB = clientsWith(
      createGrpcTransport({ baseUrl: b.url }),
      basic("dave", "dave-Old-pw"),
    );
    const read = () =>
      codeOf(oldOnB.store.getEvents({ boundary: "orders_r" }, { headers: oldOnB.headers }));
    expect(await read()).toBe("ok");
    // Dave changes his own password, signed in with the old one.
    const self = clientsWith(createGrpcTransport({ baseUrl: a.url }), basic("dave", "dave-Old-pw"));
    expect(
      await codeOf(
        self.admin.changePassword(
          { name: "dave", oldPassword: "not-his-pw", newPassword: "dave-New-pw" },
          { headers: self.headers },
        ),
      ),
    ).toBe(Code.PermissionDenied);
    await self.admin.changePassword(
      { name: "dave", oldPassword: "dave-Old-pw", newPassword: "dave-New-pw" },
      { headers: self.headers },
    );
    const changedAt = Date.now();
    expect(await until(read, Code.Unauthenticated, changedAt)).toBeLessThan(1_000);
    const newOnB = clientsWith(
      createGrpcTransport({ baseUrl: b.url }),
      basic("dave", "dave-New-pw"),
    );
    expect(await codeOf(newOnB.admin.whoAmI({}, { headers: newOnB.headers }))).toBe("ok");
    // Not someone else's password without admin.
    expect(
      await codeOf(
        newOnB.admin.changePassword(
          { name: "admin", newPassword: "taken-over-pw" },
          { headers: newOnB.headers },
        ),
      ),
    ).toBe(Code.PermissionDenied);
  }, 60_000);

  it("wrote no password or key secret to either server's log", () => {
    const logs = a.output() + b.output();
    expect(logs).toMatch(
      /"boundary":"orders_r".*"msg":"stream ended: its user or key was removed"/,
    );
    for (const secret of secrets) expect(logs.includes(secret), "a secret in the log").toBe(false);
  });
});
