import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Event,
  EventStore,
  SaveEventsRequestSchema,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const NATS_URL = process.env.ORISUN_TEST_NATS_URL ?? "nats://127.0.0.1:4222";

const targets = [
  { name: "embedded", env: (): Record<string, string> => ({ ORISUN_DATA_DIR: freshDataDir() }) },
  {
    name: "PostgreSQL + NATS",
    env: (): Record<string, string> => ({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: freshSchema("sub"),
      ORISUN_NATS_URL: NATS_URL,
      ORISUN_DATA_DIR: freshDataDir(),
    }),
  },
];

function save(boundary: string, id: string, type = "Opened") {
  return create(SaveEventsRequestSchema, {
    boundary,
    events: [
      { eventId: id, eventType: type, tags: [{ key: "k", value: "v" }], data: `{"id":"${id}"}` },
    ],
  });
}

/** Reads `n` events from a server stream, then cancels it. */
async function take(stream: AsyncIterable<Event>, n: number, abort: AbortController) {
  const got: Event[] = [];
  for await (const event of stream) {
    got.push(event);
    if (got.length === n) break;
  }
  abort.abort();
  return got;
}

describe.each(targets)("SubscribeToEvents end to end on $name", (target) => {
  let server: SpawnedServer;
  let env: Record<string, string>;
  let grpc: Transport;
  let connectH1: Transport;
  beforeAll(async () => {
    env = target.env();
    server = await spawnServer(env);
    grpc = createGrpcTransport({ baseUrl: server.url });
    connectH1 = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" });
  });
  afterAll(async () => {
    await server?.stop();
    if (env.ORISUN_PG_SCHEMA) await dropSchema(env.ORISUN_PG_SCHEMA);
  });

  it("Connect server streaming over HTTP/1.1 (what browsers use) delivers history, then live events", async () => {
    const client = createClient(EventStore, connectH1);
    const writer = createClient(EventStore, grpc);
    await writer.saveEvents(save("h1", "before"));
    const abort = new AbortController();
    const received = take(
      client.subscribeToEvents({ boundary: "h1" }, { signal: abort.signal }),
      3,
      abort,
    );
    // Give the stream a moment to pass history and go live.
    await new Promise((r) => setTimeout(r, 300));
    await writer.saveEvents(save("h1", "live1"));
    await writer.saveEvents(save("h1", "live2", "Closed"));
    const events = await received;
    expect(events.map((e) => e.eventId)).toEqual(["before", "live1", "live2"]);
    expect(events.map((e) => e.position?.commitPosition)).toEqual([1n, 2n, 3n]);
  });

  it("gRPC: resumes after a position with a query; an idle stream stays open", async () => {
    const client = createClient(EventStore, grpc);
    const first = await client.saveEvents(save("resume", "r1"));
    await client.saveEvents(save("resume", "r2", "Closed"));
    const abort = new AbortController();
    const received = take(
      client.subscribeToEvents(
        {
          boundary: "resume",
          afterPosition: first.logPosition,
          criteria: { criteria: [{ eventTypes: ["Closed"] }] },
        },
        { signal: abort.signal },
      ),
      2,
      abort,
    );
    await new Promise((r) => setTimeout(r, 2_000));
    await client.saveEvents(save("resume", "r3"));
    await client.saveEvents(save("resume", "r4", "Closed"));
    expect((await received).map((e) => e.eventId)).toEqual(["r2", "r4"]);
  });

  it("a taken subscriber_name is ALREADY_EXISTS; a malformed one INVALID_ARGUMENT naming the field", async () => {
    const client = createClient(EventStore, grpc);
    const abort = new AbortController();
    const holder = client.subscribeToEvents(
      { boundary: "names", subscriberName: "billing" },
      { signal: abort.signal },
    );
    const iterator = holder[Symbol.asyncIterator]();
    const pending = iterator.next();
    pending.catch(() => {});
    await client.saveEvents(save("names", "n1"));
    await pending;
    const error = await collectError(
      client.subscribeToEvents({ boundary: "names", subscriberName: "billing" }),
    );
    expect(error.code).toBe(Code.AlreadyExists);
    expect(error.rawMessage).toContain("subscriber_name");
    abort.abort();
    const bad = await collectError(
      client.subscribeToEvents({ boundary: "names", subscriberName: "has space" }),
    );
    expect(bad.code).toBe(Code.InvalidArgument);
    expect(bad.rawMessage).toContain("subscriber_name");
    const noBoundary = await collectError(client.subscribeToEvents({ boundary: "" }));
    expect(noBoundary.code).toBe(Code.InvalidArgument);
    expect(noBoundary.rawMessage).toContain("boundary");
  });

  it("SIGTERM ends open subscriptions with UNAVAILABLE, so clients resume elsewhere", async () => {
    const own = await spawnServer({
      ...target.env(),
      ...(env.ORISUN_PG_SCHEMA ? { ORISUN_PG_SCHEMA: env.ORISUN_PG_SCHEMA } : {}),
    });
    const client = createClient(EventStore, createGrpcTransport({ baseUrl: own.url }));
    const stream = client.subscribeToEvents({ boundary: "shutdown" });
    const iterator = stream[Symbol.asyncIterator]();
    const next = iterator.next();
    next.catch(() => {});
    await new Promise((r) => setTimeout(r, 300));
    const exit = own.stop();
    const error = await next.then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(error?.code).toBe(Code.Unavailable);
    expect(await exit).toBe(0);
  });
});

async function collectError(stream: AsyncIterable<Event>): Promise<ConnectError> {
  try {
    for await (const _ of stream) break;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the stream did not fail");
}
