import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { Code, ConnectError } from "@connectrpc/connect";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Message } from "../../gen/orisun/v1/eventstore_pb.js";
import { eventStoreClient } from "../support/clients.js";
import {
  deploymentId,
  dropSchema,
  freshDataDir,
  freshSchema,
  PG_URL,
} from "../support/databases.js";
import { NATS_URL } from "../support/live.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const run = promisify(execFile);
const client = eventStoreClient;

/** Collects a subscription's messages in the background until aborted. */
function member(server: SpawnedServer, subject: string, consumerName: string) {
  const abort = new AbortController();
  const got: Message[] = [];
  const done = (async () => {
    try {
      for await (const r of client(server).subscribeToPubSub(
        { subject, consumerName },
        { signal: abort.signal },
      )) {
        if (r.message) got.push(r.message);
      }
    } catch (error) {
      if (!abort.signal.aborted) throw error;
    }
  })();
  return { got, done, stop: () => abort.abort() };
}

async function until(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe("two server processes on one PostgreSQL and one NATS", () => {
  const schema = freshSchema("ps");
  let a: SpawnedServer;
  let b: SpawnedServer;
  beforeAll(async () => {
    const env = { ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: schema, ORISUN_NATS_URL: NATS_URL };
    [a, b] = await Promise.all([
      spawnServer({ ...env, ORISUN_DATA_DIR: freshDataDir() }),
      spawnServer({ ...env, ORISUN_DATA_DIR: freshDataDir() }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await dropSchema(schema);
  });

  it("members of one group on two processes share the messages exactly once; curl publishes", async () => {
    const onA = member(a, "orders.*", "billing");
    const onB = member(b, "orders.*", "billing");
    const audit = member(a, "orders.>", "audit");
    // A group receives what is published from its creation on: wait until both exist.
    const nc = await connect({ servers: NATS_URL });
    const jsm = await jetstreamManager(nc);
    const stream = `ORISUN_PUBSUB_${await deploymentId(schema)}`;
    const exists = (group: string) =>
      jsm.consumers.info(stream, group).then(
        () => true,
        () => false,
      );
    const deadline = Date.now() + 10_000;
    while (!((await exists("billing")) && (await exists("audit")))) {
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((r) => setTimeout(r, 50));
    }
    await nc.close();
    for (let i = 0; i < 40; i++) {
      const body = JSON.stringify({
        id: `m${i}`,
        subject: "orders.created",
        data: btoa(`{"n":${i}}`),
      });
      const { stdout } = await run("curl", [
        "-s",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        body,
        `${i % 2 ? a.url : b.url}/orisun.v1.EventStore/PublishToPubSub`,
      ]);
      expect(stdout).toBe("{}");
    }
    await until(() => onA.got.length + onB.got.length >= 40 && audit.got.length >= 40);
    await new Promise((r) => setTimeout(r, 300));
    const ids = [...onA.got, ...onB.got].map((m) => m.id).sort();
    expect(ids).toEqual(Array.from({ length: 40 }, (_, i) => `m${i}`).sort());
    expect(onA.got.length).toBeGreaterThan(0);
    expect(onB.got.length).toBeGreaterThan(0);
    expect(audit.got.map((m) => m.id)).toEqual(Array.from({ length: 40 }, (_, i) => `m${i}`));
    expect(new TextDecoder().decode(audit.got[3]?.data)).toBe('{"n":3}');
    for (const m of [onA, onB, audit]) m.stop();
    await Promise.all([onA.done, onB.done, audit.done]);
  });

  it("a subscriber_name held on one process is ALREADY_EXISTS on the other until the holder cancels", async () => {
    const boundary = "exclusive";
    await client(a).saveEvents({ boundary, events: [{ eventType: "Opened", data: "{}" }] });
    const holder = new AbortController();
    const held = client(a).subscribeToEvents(
      { boundary, subscriberName: "projector" },
      { signal: holder.signal },
    );
    const iterator = held[Symbol.asyncIterator]();
    await iterator.next(); // the holder is streaming, so it holds the name
    const refused = await client(b)
      .subscribeToEvents({ boundary, subscriberName: "projector" })
      [Symbol.asyncIterator]()
      .next()
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(refused?.code).toBe(Code.AlreadyExists);
    holder.abort();
    await iterator.next().catch(() => {});
    // The name is free once the holder's server noticed the cancel.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const taken = await client(b)
        .subscribeToEvents({ boundary, subscriberName: "projector" })
        [Symbol.asyncIterator]()
        .next()
        .then(
          (r) => r.value?.eventType,
          (e: unknown) => ConnectError.from(e),
        );
      if (taken === "Opened") break;
      expect((taken as ConnectError).code).toBe(Code.AlreadyExists);
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  it("a wildcard publish subject is INVALID_ARGUMENT naming the field", async () => {
    const error = await client(a)
      .publishToPubSub({ subject: "orders.*", data: new Uint8Array([1]) })
      .catch((e: unknown) => ConnectError.from(e));
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.InvalidArgument);
    expect((error as ConnectError).rawMessage).toContain("subject");
  });
});
