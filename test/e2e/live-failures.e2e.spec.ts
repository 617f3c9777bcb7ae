import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Event,
  type Position,
  SaveEventsRequestSchema,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { eventStoreClient, readAllEvents } from "../support/clients.js";
import {
  dropSchema,
  freshDataDir,
  freshSchema,
  PG_HOST,
  PG_PORT,
  pgUrlVia,
} from "../support/databases.js";
import { type OwnNatsServer, startOwnNatsServer } from "../support/nats-server.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";

const client = eventStoreClient;

/**
 * Follows a boundary through whatever goes wrong, as a careful client does: when its stream
 * ends with an error it resubscribes after the last position it received, on the first server
 * in `servers()` that is still up.
 */
function resumableSubscriber(boundary: string, servers: () => SpawnedServer[]) {
  const received: Event[] = [];
  const errors: Code[] = [];
  const abort = new AbortController();
  const done = (async () => {
    while (!abort.signal.aborted) {
      const server = servers()[0];
      if (!server) return;
      const last = received.at(-1)?.position;
      try {
        const stream = client(server).subscribeToEvents(
          { boundary, ...(last ? { afterPosition: last } : {}) },
          { signal: abort.signal },
        );
        for await (const event of stream) received.push(event);
      } catch (error) {
        if (abort.signal.aborted) return;
        errors.push(ConnectError.from(error).code);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  })();
  return { received, errors, done, stop: () => abort.abort() };
}

const key = (p: Position | undefined) => `${p?.commitPosition}:${p?.preparePosition}`;

describe("live subscriptions through failures (two servers, PostgreSQL and NATS)", () => {
  const schema = freshSchema("fail");
  let nats: OwnNatsServer;
  let pgProxy: TcpProxy;
  let a: SpawnedServer;
  let b: SpawnedServer;

  beforeAll(async () => {
    nats = await startOwnNatsServer();
    pgProxy = await startTcpProxy(PG_HOST, PG_PORT);
    const env = {
      ORISUN_PG_URL: pgUrlVia(pgProxy.port),
      ORISUN_PG_SCHEMA: schema,
      ORISUN_NATS_URL: nats.url,
    };
    a = await spawnServer({ ...env, ORISUN_DATA_DIR: freshDataDir() });
    b = await spawnServer({ ...env, ORISUN_DATA_DIR: freshDataDir() });
  });
  afterAll(async () => {
    await a?.stop("SIGKILL");
    await b?.stop("SIGKILL");
    await nats?.stop();
    await pgProxy?.close();
    await dropSchema(schema);
  });

  it("kill -9 of a server, a NATS restart and a PostgreSQL outage lose nothing and never reorder", async () => {
    const boundary = "orders";
    let alive = [a, b];
    // Each starts on its own server and moves to the other only if its server dies.
    const onA = resumableSubscriber(boundary, () => alive);
    const onB = resumableSubscriber(boundary, () => [...alive].reverse());
    let writing = true;
    let written = 0;
    const writer = (async () => {
      for (let i = 0; writing; i++) {
        const target = alive[i % alive.length] as SpawnedServer;
        try {
          await client(target).saveEvents(
            create(SaveEventsRequestSchema, {
              boundary,
              events: [{ eventId: `e${i}`, eventType: "Placed", data: `{"i":${i}}` }],
            }),
          );
          written++;
        } catch {
          // Writes fail while PostgreSQL is away; the client would retry, this one moves on.
          await new Promise((r) => setTimeout(r, 50));
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const phase = (ms: number) => new Promise((r) => setTimeout(r, ms));

    await phase(1_500);
    // Kill the process that publishes the boundary to JetStream: the other must take over.
    const publishing = (log: string) =>
      log.includes('"boundary":"orders","msg":"publishing the boundary to JetStream"');
    const elected = Date.now() + 15_000;
    while (![a, b].some((s) => publishing(s.output())) && Date.now() < elected) await phase(100);
    expect([a, b].filter((s) => publishing(s.output())).length).toBe(1);
    const victim = publishing(a.output()) ? a : b;
    const survivor = victim === a ? b : a;
    const survivorLogBefore = survivor.output().length;
    await victim.stop("SIGKILL");
    alive = [survivor];
    await phase(2_000);
    await nats.stop();
    await phase(1_000);
    await nats.start();
    await phase(2_000);
    pgProxy.cut();
    await phase(2_000);
    pgProxy.restore();
    await phase(2_500);
    writing = false;
    await writer;

    const log = await readAllEvents(client(survivor), boundary);
    expect(log.length).toBeGreaterThanOrEqual(written);
    expect(written).toBeGreaterThan(100);
    const deadline = Date.now() + 20_000;
    while (
      (onA.received.length < log.length || onB.received.length < log.length) &&
      Date.now() < deadline
    ) {
      await new Promise((r) => setTimeout(r, 100));
    }
    onA.stop();
    onB.stop();
    await Promise.all([onA.done, onB.done]);
    const expected = log.map((e) => key(e.position));
    expect(onA.received.map((e) => key(e.position))).toEqual(expected);
    expect(onB.received.map((e) => key(e.position))).toEqual(expected);
    // The survivor took over publishing within seconds of the kill.
    expect(publishing(survivor.output().slice(survivorLogBefore))).toBe(true);
    // The survivor never died: its own subscriber may only have been told to resume.
    const own = survivor === a ? onA : onB;
    expect(
      own.errors.every((c) => c === Code.Unavailable),
      String(own.errors),
    ).toBe(true);
  }, 90_000);
});
