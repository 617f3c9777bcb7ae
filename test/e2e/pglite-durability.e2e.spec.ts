import { rmSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { EventStore, SaveEventsRequestSchema } from "../../gen/orisun/v1/eventstore_pb.js";
import { freshDataDir } from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { type SyncCall, type Tracer, traceSyncs } from "../support/strace.js";

const folders: string[] = [];
const servers: SpawnedServer[] = [];
const tracers: Tracer[] = [];

afterAll(async () => {
  for (const s of servers) await s.stop("SIGKILL").catch(() => undefined);
  for (const t of tracers) await t.detach().catch(() => undefined);
  for (const f of folders) rmSync(f, { recursive: true, force: true });
}, 30_000);

async function start(dataDir: string): Promise<SpawnedServer> {
  const server = await spawnServer({ ORISUN_DATA_DIR: dataDir }, [], 150_000);
  servers.push(server);
  return server;
}

function save(boundary: string, id: string) {
  return create(SaveEventsRequestSchema, {
    boundary,
    events: [{ eventId: id, eventType: "Saved", tags: [{ key: "k", value: id }], data: "{}" }],
  });
}

interface Acknowledged {
  readonly id: string;
  /** Wall-clock seconds, widened by a millisecond each way for Date.now()'s resolution. */
  readonly sent: number;
  readonly acknowledged: number;
}

type Client = ReturnType<typeof createClient<typeof EventStore>>;

async function append(client: Client, boundary: string, id: string): Promise<Acknowledged> {
  const sent = (Date.now() - 1) / 1000;
  await client.saveEvents(save(boundary, id), { timeoutMs: 30_000 });
  return { id, sent, acknowledged: (Date.now() + 1) / 1000 };
}

const isWal = (c: SyncCall) => /\/pg_wal\/[0-9A-F]{24}$/.test(c.path) && c.result === 0;

/** The WAL syncs that ran wholly between the request and its answer. */
function walSyncsWithin(calls: SyncCall[], ack: Acknowledged): SyncCall[] {
  return calls.filter((c) => isWal(c) && c.start >= ack.sent && c.end <= ack.acknowledged);
}

async function readIds(client: Client, boundary: string): Promise<string[]> {
  const got = await client.getEvents({ boundary, count: 10_000 }, { timeoutMs: 30_000 });
  return got.events.map((e) => e.eventId);
}

describe("embedded PGlite durability", () => {
  it("syncs the WAL before answering each append, one sync per group-commit batch, and data files on close", async () => {
    const dataDir = freshDataDir();
    folders.push(dataDir);
    const server = await start(dataDir);
    const pid = server.process.pid;
    if (pid === undefined) throw new Error("server has no pid");
    const tracer = await traceSyncs(pid, join(dataDir, "strace.txt"));
    tracers.push(tracer);
    const client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));

    const sequential: Acknowledged[] = [];
    for (let i = 0; i < 20; i++) sequential.push(await append(client, "seq", `s${i}`));

    const writers = 8;
    const perWriter = 5;
    const concurrent = (
      await Promise.all(
        Array.from({ length: writers }, async (_, w) => {
          const mine: Acknowledged[] = [];
          for (let i = 0; i < perWriter; i++) mine.push(await append(client, "conc", `c${w}-${i}`));
          return mine;
        }),
      )
    ).flat();
    const lastAck = Math.max(...concurrent.map((a) => a.acknowledged));

    const calls = tracer.calls();
    const withoutSync = [...sequential, ...concurrent].filter(
      (a) => walSyncsWithin(calls, a).length === 0,
    );
    expect(
      withoutSync.map((a) => a.id),
      `appends answered with no WAL sync in between; traced: ${calls.length} sync calls`,
    ).toEqual([]);
    // Sequential appends are one group-commit batch each, so each has a sync of its own.
    const sequentialSyncs = new Set(sequential.flatMap((a) => walSyncsWithin(calls, a)));
    expect(sequentialSyncs.size).toBeGreaterThanOrEqual(sequential.length);
    const concurrentSyncs = new Set(concurrent.flatMap((a) => walSyncsWithin(calls, a)));
    // Concurrent appends share group-commit batches, so fewer syncs than appends.
    expect(concurrentSyncs.size).toBeLessThan(concurrent.length);
    console.log(
      `${sequential.length} sequential appends: ${sequentialSyncs.size} WAL syncs; ` +
        `${concurrent.length} appends by ${writers} concurrent writers: ${concurrentSyncs.size} WAL syncs`,
    );

    // A clean stop checkpoints: the data files and the control file reach the disk after the WAL.
    expect(await server.stop()).toBe(0);
    await tracer.exited;
    const atClose = tracer.calls().filter((c) => c.start > lastAck && c.result === 0);
    expect(atClose.some((c) => /\/base\/\d+\/\d+$/.test(c.path))).toBe(true);
    expect(atClose.some((c) => c.path.endsWith("/global/pg_control"))).toBe(true);

    const again = await start(dataDir);
    const reader = createClient(EventStore, createGrpcTransport({ baseUrl: again.url }));
    expect(await readIds(reader, "seq")).toEqual(sequential.map((a) => a.id));
    expect((await readIds(reader, "conc")).sort()).toEqual(concurrent.map((a) => a.id).sort());
    expect(await again.stop()).toBe(0);
  }, 400_000);

  it("a restart after kill -9 has every acknowledged append", async () => {
    const dataDir = freshDataDir();
    folders.push(dataDir);
    const server = await start(dataDir);
    const client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
    const acknowledged = (
      await Promise.all(
        Array.from({ length: 4 }, async (_, w) => {
          const mine: string[] = [];
          for (let i = 0; i < 10; i++) mine.push((await append(client, "crash", `k${w}-${i}`)).id);
          return mine;
        }),
      )
    ).flat();
    server.process.kill("SIGKILL");
    await server.stop();

    const again = await start(dataDir);
    const reader = createClient(EventStore, createGrpcTransport({ baseUrl: again.url }));
    expect((await readIds(reader, "crash")).sort()).toEqual(acknowledged.sort());
    expect(await again.stop()).toBe(0);
  }, 400_000);
});
