import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  Health,
  HealthCheckResponse_ServingStatus as Status,
} from "../../gen/grpc/health/v1/health_pb.js";
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

/** The probe's SQL names its column so; counting it in the bytes sent to PostgreSQL counts probes. */
const PROBE_MARKER = "orisun_health_probe";

/** Counts a marker in a byte stream that arrives in chunks (a match may straddle two). */
function markerCounter(marker: string) {
  let tail = "";
  let count = 0;
  let bytes = 0;
  return {
    feed(chunk: Buffer) {
      bytes += chunk.length;
      const text = tail + chunk.toString("latin1");
      // The tail is shorter than the marker: every match here ends in the new chunk, once.
      for (let i = text.indexOf(marker); i >= 0; i = text.indexOf(marker, i + 1)) count++;
      tail = text.slice(-(marker.length - 1));
    },
    get count() {
      return count;
    },
    /** Every byte seen, probes or not. */
    get bytes() {
      return bytes;
    },
  };
}

interface HealthClient extends grpc.Client {
  Check(
    req: { service: string },
    cb: (err: grpc.ServiceError | null, res: { status: string }) => void,
  ): void;
  Watch(req: { service: string }): grpc.ClientReadableStream<{ status: string }>;
}

/** grpc.health.v1 as grpc_health_probe and Kubernetes' gRPC probe see it: the official proto. */
function grpcHealthClient(server: SpawnedServer, ownConnection = false): HealthClient {
  const def = protoLoader.loadSync("grpc/health/v1/health.proto", {
    includeDirs: ["proto"],
    enums: String,
    defaults: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
  };
  return new pkg.grpc.health.v1.Health(
    `127.0.0.1:${server.port}`,
    grpc.credentials.createInsecure(),
    // grpc-js shares one connection among clients of a target unless told otherwise.
    ownConnection ? { "grpc.use_local_subchannel_pool": 1 } : {},
  ) as unknown as HealthClient;
}

function check(client: HealthClient, service: string): Promise<string> {
  return new Promise((resolve, reject) =>
    client.Check({ service }, (err, res) => (err ? reject(err) : resolve(res.status))),
  );
}

/** Every status a Watch delivered, with a way to wait for the next one. */
function watch(client: HealthClient, service: string) {
  const statuses: string[] = [];
  const waiters: (() => void)[] = [];
  let ended: grpc.StatusObject | undefined;
  const call = client.Watch({ service });
  call.on("data", (res: { status: string }) => {
    statuses.push(res.status);
    for (const w of waiters.splice(0)) w();
  });
  call.on("error", () => {});
  call.on("status", (status: grpc.StatusObject) => {
    ended = status;
    for (const w of waiters.splice(0)) w();
  });
  return {
    statuses,
    get ended() {
      return ended;
    },
    cancel: () => call.cancel(),
    /** Resolves when the last status received is `status`; rejects after `ms`. */
    async until(status: string, ms: number): Promise<void> {
      const deadline = Date.now() + ms;
      while (statuses.at(-1) !== status) {
        const left = deadline - Date.now();
        if (left <= 0) {
          throw new Error(`no ${status} within ${ms} ms; saw ${statuses.join(", ")}`);
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          waiters.push(() => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
    },
  };
}

async function readyz(server: SpawnedServer): Promise<{ code: number; body: unknown }> {
  const res = await fetch(`${server.url}/readyz`);
  return { code: res.status, body: await res.json() };
}

describe("gRPC health with PostgreSQL and NATS that go away and come back", () => {
  const schema = freshSchema("health");
  const probes = markerCounter(PROBE_MARKER);
  let nats: OwnNatsServer;
  let pgProxy: TcpProxy;
  let server: SpawnedServer;
  let client: HealthClient;

  beforeAll(async () => {
    nats = await startOwnNatsServer();
    pgProxy = await startTcpProxy(PG_HOST, PG_PORT, { onClientData: (c) => probes.feed(c) });
    server = await spawnServer({
      ORISUN_PG_URL: pgUrlVia(pgProxy.port),
      ORISUN_PG_SCHEMA: schema,
      ORISUN_NATS_URL: nats.url,
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION: "3",
    });
    client = grpcHealthClient(server);
  });
  afterAll(async () => {
    client?.close();
    await server?.stop("SIGKILL");
    await nats?.stop();
    await pgProxy?.close();
    await dropSchema(schema);
  });

  it("answers Check for the server and for orisun.v1.EventStore, NOT_FOUND for other names", async () => {
    // The first probe ran before the port opened: never UNKNOWN, even on the first call.
    expect(await check(client, "")).toBe("SERVING");
    expect(await check(client, "orisun.v1.EventStore")).toBe("SERVING");
    const unknown = await check(client, "orisun.v1.Nope").catch((e: grpc.ServiceError) => e);
    expect((unknown as grpc.ServiceError).code).toBe(grpc.status.NOT_FOUND);
    expect((unknown as grpc.ServiceError).details).toContain("orisun.v1.Nope");

    // Connect over HTTP/1.1 (curl, browsers), the same service.
    const connect = createClient(
      Health,
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    );
    expect((await connect.check({ service: "" })).status).toBe(Status.SERVING);
    expect((await connect.list({})).statuses["orisun.v1.EventStore"]?.status).toBe(Status.SERVING);
    const err = await connect.check({ service: "x".repeat(10_000) }).catch(ConnectError.from);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.NotFound);
    // Hostile names are not echoed whole.
    expect((err as ConnectError).rawMessage.length).toBeLessThan(400);
    // gRPC-Web (browsers), the same service.
    const web = createClient(
      Health,
      createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    );
    expect((await web.check({ service: "orisun.v1.EventStore" })).status).toBe(Status.SERVING);
    expect(await readyz(server)).toEqual({ code: 200, body: { status: "ready" } });
  });

  it("a storm of 1,000 Checks and 200 /readyz reaches the database only through the timed probe", async () => {
    // The counter sees the probes (one a second by default), so it can tell a storm apart.
    const before = probes.count;
    await new Promise((r) => setTimeout(r, 2_500));
    const idle = probes.count - before;
    expect(idle).toBeGreaterThanOrEqual(1);
    expect(idle).toBeLessThanOrEqual(4);

    const start = probes.count;
    const startBytes = probes.bytes;
    const t0 = Date.now();
    const [statuses, ready] = await Promise.all([
      Promise.all(
        Array.from({ length: 1_000 }, (_, i) => check(client, i % 2 ? "" : "orisun.v1.EventStore")),
      ),
      Promise.all(Array.from({ length: 200 }, () => readyz(server).then((r) => r.code))),
    ]);
    const elapsed = Date.now() - t0;
    const during = probes.count - start;
    const bytes = probes.bytes - startBytes;
    expect(new Set(statuses)).toEqual(new Set(["SERVING"]));
    expect(new Set(ready)).toEqual(new Set([200]));
    // Nothing else reached the database either: 1,200 queries would be tens of kilobytes; the
    // probes and the background work (the publisher's sweep, LISTEN) a few hundred bytes a second.
    expect(bytes).toBeLessThan(1_000 * Math.ceil(elapsed / 1_000) + 2_000);
    // One probe per elapsed second of the storm, plus one in flight at either end: the checks
    // themselves add none.
    expect(during).toBeLessThanOrEqual(Math.ceil(elapsed / 1_000) + 1);
    console.log(
      `1,000 Checks in ${elapsed} ms reached the database ${during} times (probes), ${bytes} bytes`,
    );
  });

  it("Watch sees the store, then NATS, go away and come back, each within 10 s; /readyz agrees", async () => {
    const grpcWatch = watch(grpcHealthClient(server, true), "");
    const connectWatch: Status[] = [];
    const abort = new AbortController();
    const connect = createClient(
      Health,
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    );
    const connectDone = (async () => {
      for await (const res of connect.watch(
        { service: "orisun.v1.EventStore" },
        { signal: abort.signal },
      )) {
        connectWatch.push(res.status);
      }
    })().catch(() => {});
    try {
      await grpcWatch.until("SERVING", 5_000);

      pgProxy.cut();
      let t = Date.now();
      await grpcWatch.until("NOT_SERVING", 10_000);
      const downMs = Date.now() - t;
      expect(await check(client, "")).toBe("NOT_SERVING");
      expect(await readyz(server)).toEqual({
        code: 503,
        body: { status: "unavailable", failing: ["database"] },
      });
      pgProxy.restore();
      t = Date.now();
      await grpcWatch.until("SERVING", 10_000);
      const upMs = Date.now() - t;
      expect((await readyz(server)).code).toBe(200);

      await nats.stop();
      t = Date.now();
      await grpcWatch.until("NOT_SERVING", 10_000);
      const natsDownMs = Date.now() - t;
      expect(await readyz(server)).toEqual({
        code: 503,
        body: { status: "unavailable", failing: ["nats"] },
      });
      await nats.start();
      t = Date.now();
      await grpcWatch.until("SERVING", 10_000);
      const natsUpMs = Date.now() - t;
      expect(await check(client, "orisun.v1.EventStore")).toBe("SERVING");

      // Each change once, in order: no repeats of an unchanged status.
      expect(grpcWatch.statuses).toEqual([
        "SERVING",
        "NOT_SERVING",
        "SERVING",
        "NOT_SERVING",
        "SERVING",
      ]);
      expect(connectWatch).toEqual([
        Status.SERVING,
        Status.NOT_SERVING,
        Status.SERVING,
        Status.NOT_SERVING,
        Status.SERVING,
      ]);
      console.log(
        `health flips: database down ${downMs} ms, up ${upMs} ms; NATS down ${natsDownMs} ms, up ${natsUpMs} ms`,
      );
    } finally {
      grpcWatch.cancel();
      abort.abort();
      await connectDone;
    }
  });

  it("a frozen PostgreSQL (no answer, no error) is NOT_SERVING after the probe timeout, SERVING once it thaws", async () => {
    const watcher = watch(grpcHealthClient(server, true), "");
    try {
      await watcher.until("SERVING", 5_000);
      pgProxy.freeze();
      const t0 = Date.now();
      await watcher.until("NOT_SERVING", 10_000);
      // Nothing failed: only the probe's timeout (3 s by default) can have said so.
      expect(Date.now() - t0).toBeGreaterThanOrEqual(2_500);
      expect(await readyz(server)).toEqual({
        code: 503,
        body: { status: "unavailable", failing: ["database"] },
      });
      pgProxy.thaw();
      await watcher.until("SERVING", 10_000);
    } finally {
      pgProxy.thaw();
      watcher.cancel();
    }
  });

  it("Watch of an unknown service says SERVICE_UNKNOWN and stays open; Watches are bounded per connection", async () => {
    const own = grpcHealthClient(server, true);
    try {
      const unknown = watch(own, "orisun.v1.Nope");
      await unknown.until("SERVICE_UNKNOWN", 5_000);
      const more = [watch(own, ""), watch(own, "")];
      for (const w of more) await w.until("SERVING", 5_000);
      expect(unknown.ended).toBeUndefined();

      // ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION is 3 here: a fourth stream is refused.
      const refused = watch(own, "");
      await expect
        .poll(() => refused.ended?.code, { timeout: 5_000 })
        .toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(refused.ended?.details).toContain("ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION");

      // A slot freed is a slot taken again.
      unknown.cancel();
      await expect.poll(() => unknown.ended?.code, { timeout: 5_000 }).toBe(grpc.status.CANCELLED);
      const again = watch(own, "");
      await again.until("SERVING", 5_000);
      for (const w of [...more, again]) w.cancel();
    } finally {
      own.close();
    }
  });

  it("on shutdown, Watch hears NOT_SERVING and its stream ends", async () => {
    const own = grpcHealthClient(server, true);
    const watcher = watch(own, "");
    await watcher.until("SERVING", 5_000);
    const stopped = server.stop("SIGTERM");
    await watcher.until("NOT_SERVING", 10_000);
    await expect.poll(() => watcher.ended, { timeout: 10_000 }).toBeDefined();
    expect(watcher.ended?.code).toBe(grpc.status.OK);
    expect(await stopped).toBe(0);
    own.close();
  });
});
