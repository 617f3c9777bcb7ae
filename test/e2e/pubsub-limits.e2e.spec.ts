import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import { Code, type ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ServerReflection,
  ServerReflectionRequestSchema,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { Admin } from "../../gen/orisun/v1/admin_pb.js";
import { EventStore, type SubscribeResponse } from "../../gen/orisun/v1/eventstore_pb.js";
import { failure } from "../support/clients.js";
import {
  deploymentId,
  dropSchema,
  freshDataDir,
  freshSchema,
  NATS_URL,
  PG_URL,
} from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const encoder = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** For a stream that must be refused: one that is not ends with DEADLINE_EXCEEDED instead. */
const BOUNDED = { timeoutMs: 15_000 };

/** The error a server stream ends with (it must end with one). */
async function streamError(stream: AsyncIterable<unknown>): Promise<ConnectError> {
  return failure(
    (async () => {
      for await (const _ of stream) {
        // Messages before the error are not what this looks at.
      }
    })(),
  );
}

interface Target {
  readonly name: string;
  env(): Record<string, string>;
}

/** PostgreSQL rather than the embedded store, which starts slowly on a busy machine. */
const onPostgres = () => ({
  ORISUN_PG_URL: PG_URL,
  ORISUN_PG_SCHEMA: freshSchema("psl"),
  ORISUN_DATA_DIR: freshDataDir(),
});

const targets: readonly Target[] = [
  { name: "the in-process broker", env: onPostgres },
  { name: "JetStream", env: () => ({ ...onPostgres(), ORISUN_NATS_URL: NATS_URL }) },
];

async function cleanUp(server: SpawnedServer | undefined, env: Record<string, string>) {
  await server?.stop();
  if (env.ORISUN_PG_SCHEMA) await dropSchema(env.ORISUN_PG_SCHEMA);
  if (env.ORISUN_DATA_DIR) rmSync(env.ORISUN_DATA_DIR, { recursive: true, force: true });
}

/**
 * Durable consumers whose name contains `group` on the pub/sub stream of the deployment in
 * `schema` (only that one: other test files delete their own streams meanwhile).
 */
async function consumersNamed(schema: string, group: string): Promise<string[]> {
  const nc = await connect({ servers: NATS_URL });
  try {
    const jsm = await jetstreamManager(nc);
    const found: string[] = [];
    const stream = `ORISUN_PUBSUB_${await deploymentId(schema)}`;
    for await (const info of jsm.consumers.list(stream)) {
      if (info.config.durable_name?.includes(group)) found.push(info.name);
    }
    return found;
  } finally {
    await nc.close();
  }
}

/**
 * Subscribes, then publishes until the first message arrives: from then on the group exists and
 * the member is connected. Returns the stream's iterator with that message taken.
 */
async function member(
  transport: Transport,
  publisher: ReturnType<typeof createClient<typeof EventStore>>,
  subject: string,
  consumerName: string,
  signal?: AbortSignal,
): Promise<AsyncIterator<SubscribeResponse>> {
  const stream = createClient(EventStore, transport).subscribeToPubSub(
    { subject, consumerName },
    { signal },
  );
  const iterator = stream[Symbol.asyncIterator]();
  const first = iterator.next();
  first.catch(() => {});
  let arrived = false;
  void first.then(() => {
    arrived = true;
  });
  for (let i = 0; i < 100 && !arrived; i++) {
    const id = `${consumerName}-${i}-${randomBytes(6).toString("hex")}`;
    await publisher.publishToPubSub({ subject, id, data: encoder.encode("x") });
    await sleep(100);
  }
  const result = await Promise.race([
    first,
    sleep(5_000).then(() => Promise.reject(new Error("no message reached the member"))),
  ]);
  if (result.done) throw new Error("the stream ended before its first message");
  return iterator;
}

describe.each(targets)("DeleteGroup on $name", (target) => {
  let server: SpawnedServer | undefined;
  let env: Record<string, string>;
  let grpc: Transport;
  let connectH1: Transport;
  beforeAll(async () => {
    env = target.env();
    server = await spawnServer(env);
    grpc = createGrpcTransport({ baseUrl: server.url });
    connectH1 = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" });
  });
  afterAll(() => cleanUp(server, env));

  it("over gRPC: ends the members' streams with NOT_FOUND and removes the group", async () => {
    const group = `g_grpc_${randomBytes(4).toString("hex")}`;
    const publisher = createClient(EventStore, grpc);
    const admin = createClient(Admin, grpc);
    const stream = await member(grpc, publisher, "del.grpc", group);
    const ended = failure(stream.next());
    if (env.ORISUN_NATS_URL)
      expect(await consumersNamed(env.ORISUN_PG_SCHEMA ?? "", group)).toHaveLength(1);
    await admin.deleteGroup({ consumerName: group });
    const error = await ended;
    expect(Code[error.code]).toBe("NotFound");
    expect(error.rawMessage).toMatch(new RegExp(`consumer group "${group}" was deleted`));
    if (env.ORISUN_NATS_URL)
      expect(await consumersNamed(env.ORISUN_PG_SCHEMA ?? "", group)).toEqual([]);
    const again = await failure(admin.deleteGroup({ consumerName: group }));
    expect(Code[again.code]).toBe("NotFound");
    expect(again.rawMessage).toContain("consumer_name");
  });

  it("over Connect: the member's stream ends, and the same name starts an empty group", async () => {
    const group = `g_connect_${randomBytes(4).toString("hex")}`;
    const publisher = createClient(EventStore, grpc);
    const stream = await member(connectH1, publisher, "del.connect", group);
    const ended = failure(stream.next());
    const res = await fetch(`${server?.url}/orisun.v1.Admin/DeleteGroup`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ consumer_name: group }),
    });
    expect([res.status, await res.json()]).toEqual([200, {}]);
    expect(Code[(await ended).code]).toBe("NotFound");
    await publisher.publishToPubSub({ subject: "del.connect", id: "gone", data: new Uint8Array() });
    const abort = new AbortController();
    const fresh = await member(connectH1, publisher, "del.connect", group, abort.signal);
    abort.abort();
    await fresh.return?.();
  });

  it("answers NOT_FOUND for an unknown group and INVALID_ARGUMENT for a bad name", async () => {
    const post = async (body: unknown) => {
      const res = await fetch(`${server?.url}/orisun.v1.Admin/DeleteGroup`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      return [res.status, ((await res.json()) as { code: string; message: string }).code];
    };
    expect(await post({ consumer_name: "nobody_here" })).toEqual([404, "not_found"]);
    expect(await post({ consumer_name: "a.b" })).toEqual([400, "invalid_argument"]);
    expect(await post({ consumer_name: "" })).toEqual([400, "invalid_argument"]);
    const error = await failure(createClient(Admin, grpc).deleteGroup({ consumerName: "x y" }));
    expect(Code[error.code]).toBe("InvalidArgument");
    expect(error.rawMessage).toContain("consumer_name");
  });
});

describe("resource caps, each reached", () => {
  let server: SpawnedServer | undefined;
  let env: Record<string, string>;
  beforeAll(async () => {
    env = {
      ...onPostgres(),
      ORISUN_MAX_BOUNDARIES: "2",
      ORISUN_MAX_GROUPS: "2",
    };
    server = await spawnServer(env);
  });
  afterAll(() => cleanUp(server, env));

  const save = (client: ReturnType<typeof createClient<typeof EventStore>>, boundary: string) =>
    client.saveEvents({
      boundary,
      events: [{ eventType: "Made", data: "{}" }],
    });

  it("ORISUN_MAX_BOUNDARIES: a write creating one more boundary fails, writing nothing", async () => {
    const client = createClient(EventStore, createGrpcTransport({ baseUrl: server?.url ?? "" }));
    await save(client, "first");
    await save(client, "second");
    const error = await failure(save(client, "third"));
    expect(Code[error.code]).toBe("ResourceExhausted");
    expect(error.rawMessage).toMatch(/boundary: .*ORISUN_MAX_BOUNDARIES \(2\)/);
    expect((await client.getEvents({ boundary: "third" })).events).toEqual([]);
    await save(client, "first");
    expect((await client.getEvents({ boundary: "first" })).events).toHaveLength(2);
  });

  it("ORISUN_MAX_GROUPS: a subscription creating one more group fails; existing groups work", async () => {
    const grpc = createGrpcTransport({ baseUrl: server?.url ?? "" });
    const publisher = createClient(EventStore, grpc);
    const abort = new AbortController();
    const a = await member(grpc, publisher, "groups", "group_a", abort.signal);
    const b = await member(grpc, publisher, "groups", "group_b", abort.signal);
    const error = await streamError(
      createClient(
        EventStore,
        createGrpcTransport({ baseUrl: server?.url ?? "" }),
      ).subscribeToPubSub({ subject: "groups", consumerName: "group_c" }, BOUNDED),
    );
    expect(Code[error.code]).toBe("ResourceExhausted");
    expect(error.rawMessage).toMatch(/ORISUN_MAX_GROUPS \(2\)/);
    const admin = createClient(Admin, grpc);
    expect(Code[(await failure(admin.deleteGroup({ consumerName: "group_c" }))).code]).toBe(
      "NotFound",
    );
    abort.abort();
    await a.return?.();
    await b.return?.();
    await admin.deleteGroup({ consumerName: "group_a" });
    await admin.deleteGroup({ consumerName: "group_b" });
  });
});

describe("subscription caps, each reached", () => {
  let server: SpawnedServer | undefined;
  let env: Record<string, string>;
  beforeAll(async () => {
    env = {
      ...onPostgres(),
      ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION: "2",
      ORISUN_MAX_SUBSCRIPTIONS: "3",
    };
    server = await spawnServer(env);
  });
  afterAll(() => cleanUp(server, env));

  it("ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION and ORISUN_MAX_SUBSCRIPTIONS: the extra stream fails", async () => {
    const url = server?.url ?? "";
    const save = (client: ReturnType<typeof createClient<typeof EventStore>>, boundary: string) =>
      client.saveEvents({ boundary, events: [{ eventType: "Made", data: "{}" }] });
    const one = createGrpcTransport({ baseUrl: url });
    const two = createGrpcTransport({ baseUrl: url });
    const publisher = createClient(EventStore, createGrpcTransport({ baseUrl: url }));
    await save(publisher, "second");
    const abortA = new AbortController();
    const abortB = new AbortController();
    // One connection: a pub/sub stream and an event stream fill its two slots.
    await member(one, publisher, "slots", "", abortA.signal);
    const events = createClient(EventStore, one)
      .subscribeToEvents({ boundary: "second" }, { signal: abortA.signal })
      [Symbol.asyncIterator]();
    expect((await events.next()).done).toBe(false);
    const perConnection = await streamError(
      createClient(EventStore, one).subscribeToEvents({ boundary: "second" }, BOUNDED),
    );
    expect(Code[perConnection.code]).toBe("ResourceExhausted");
    expect(perConnection.rawMessage).toMatch(/ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION \(2\)/);
    // Another connection takes the server's third and last slot.
    await member(two, publisher, "slots", "", abortB.signal);
    const total = await streamError(
      createClient(EventStore, two).subscribeToPubSub({ subject: "slots" }, BOUNDED),
    );
    expect(Code[total.code]).toBe("ResourceExhausted");
    expect(total.rawMessage).toMatch(/ORISUN_MAX_SUBSCRIPTIONS \(3\)/);
    // Ending streams frees their slots; unary calls were never limited.
    abortA.abort();
    await save(publisher, "second");
    let reopened: AsyncIterator<SubscribeResponse> | undefined;
    for (let i = 0; i < 50 && reopened === undefined; i++) {
      reopened = await member(two, publisher, "slots", "", abortB.signal).catch(async () => {
        await sleep(100);
        return undefined;
      });
    }
    expect(reopened).toBeDefined();
    abortB.abort();
  });

  it("a gRPC reflection stream takes a slot like a subscription", async () => {
    const transport = createGrpcTransport({ baseUrl: server?.url ?? "" });
    const reflection = createClient(ServerReflection, transport);
    const abort = new AbortController();
    /** One request, then the stream stays open until the test ends it. */
    async function* ask() {
      yield create(ServerReflectionRequestSchema, {
        messageRequest: { case: "listServices", value: "*" },
      });
      await new Promise((done) => abort.signal.addEventListener("abort", done, { once: true }));
    }
    const open = async () => {
      const replies = reflection.serverReflectionInfo(ask(), { signal: abort.signal });
      const iterator = replies[Symbol.asyncIterator]();
      return { iterator, first: await iterator.next() };
    };
    for (let i = 0; i < 2; i++) {
      const { first } = await open();
      expect(first.value?.messageResponse.case).toBe("listServicesResponse");
    }
    const refused = await failure(open());
    expect(Code[refused.code]).toBe("ResourceExhausted");
    expect(refused.rawMessage).toMatch(/ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION \(2\)/);
    abort.abort();
  });
});

describe.each(targets)("ORISUN_PUBSUB_MAX_BYTES on $name", (target) => {
  let server: SpawnedServer | undefined;
  let env: Record<string, string>;
  beforeAll(async () => {
    env = {
      ...target.env(),
      ORISUN_PUBSUB_MAX_BYTES: String(8 * 1024 * 1024),
      ORISUN_LIVE_STREAM_MAX_BYTES: String(16 * 1024 * 1024),
      ORISUN_LIVE_STREAM_MAX_AGE: "5m",
    };
    server = await spawnServer(env);
  });
  afterAll(() => cleanUp(server, env));

  it("a group away while 12 MiB were published gets the newest, in order; publishes go on", async () => {
    const grpc = createGrpcTransport({ baseUrl: server?.url ?? "" });
    const client = createClient(EventStore, grpc);
    const away = new AbortController();
    const first = await member(grpc, client, "flood", "away", away.signal);
    away.abort();
    await first.return?.();
    const sent = Array.from({ length: 24 }, (_, i) => `big-${String(i).padStart(2, "0")}`);
    for (const id of sent) {
      const data = randomBytes(512 * 1024);
      data.write(id);
      await client.publishToPubSub({ subject: "flood", id, data });
    }
    const back = new AbortController();
    const got: string[] = [];
    const reading = (async () => {
      for await (const { message } of client.subscribeToPubSub(
        { subject: "flood", consumerName: "away" },
        { signal: back.signal },
      )) {
        if (message?.id.startsWith("big-")) {
          expect(Buffer.from(message.data).toString("latin1", 0, 6)).toBe(message.id);
          got.push(message.id);
        }
        if (message?.id === "big-23") break;
      }
    })();
    await Promise.race([
      reading,
      sleep(20_000).then(() => Promise.reject(new Error(`only ${got.join(",")} arrived`))),
    ]);
    back.abort();
    // A suffix of what was sent: 16 messages of 512 KiB fill 8 MiB.
    expect(got).toEqual(sent.slice(sent.length - got.length));
    expect(got.length).toBeGreaterThanOrEqual(8);
    expect(got.length).toBeLessThanOrEqual(16);
    if (env.ORISUN_NATS_URL) {
      await client.saveEvents({ boundary: "bounded", events: [{ eventType: "E", data: "{}" }] });
      const id = await deploymentId(env.ORISUN_PG_SCHEMA ?? "");
      const nc = await connect({ servers: NATS_URL });
      try {
        const jsm = await jetstreamManager(nc);
        expect((await jsm.streams.info(`ORISUN_PUBSUB_${id}`)).config.max_bytes).toBe(
          8 * 1024 * 1024,
        );
        let live: [number, number] | undefined;
        for (let i = 0; i < 50 && live === undefined; i++) {
          const info = await jsm.streams.info(`ORISUN_EVENTS_${id}_bounded`).catch(() => undefined);
          live = info && [info.config.max_bytes, info.config.max_age];
          if (live === undefined) await sleep(100);
        }
        expect(live).toEqual([16 * 1024 * 1024, 300_000_000_000]);
      } finally {
        await nc.close();
      }
    }
  });
});
