/** Helpers for end-to-end tests of a cluster (ORISUN_WORKERS=2) on PostgreSQL + NATS. */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  EventStore as EventStoreService,
  type Event as WireEvent,
} from "../../gen/orisun/v1/eventstore_pb.js";
import type { Position, Query, StoredEvent } from "../../server/store/types.js";
import { freshDataDir, NATS_URL, PG_URL } from "./databases.js";
import { type SpawnedServer, spawnServer } from "./spawn-server.js";

export type Rpc = Client<typeof EventStoreService>;
const run = promisify(execFile);

/** A client with its own HTTP/2 connection: the cluster primary hands connections out in turn. */
export const ownClient = (server: SpawnedServer): Rpc =>
  createClient(EventStoreService, createGrpcTransport({ baseUrl: server.url }));

export async function until(
  what: string,
  condition: () => boolean | Promise<boolean>,
  ms = 60_000,
) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function workerPids(primary: number): Promise<number[]> {
  const { stdout } = await run("pgrep", ["-P", String(primary)]).catch(() => ({ stdout: "" }));
  return stdout.split("\n").filter(Boolean).map(Number).sort();
}

export const count = (text: string, needle: string) => text.split(needle).length - 1;

/** The workers alive now that have said they listen, with their pid and slot. */
export async function servingWorkers(
  server: SpawnedServer,
): Promise<{ pid: number; slot: number }[]> {
  const pids = await workerPids(server.process.pid ?? 0);
  return server
    .output()
    .split("\n")
    .filter((line) => line.includes("Orisun listening"))
    .map((line) => JSON.parse(line) as { pid: number; slot: number })
    .filter((l) => pids.includes(l.pid));
}

/** One sample of the cluster's scrape, by its name with labels (`name{label="value"}`). */
export async function metric(server: SpawnedServer, sample: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${sample} `));
  return Number(line?.slice(sample.length + 1));
}

/** Two workers on PostgreSQL + NATS in `schema`, once both listen. */
export async function spawnCluster(
  schema: string,
  env: Record<string, string> = {},
): Promise<SpawnedServer> {
  const server = await spawnServer({
    ORISUN_PG_URL: PG_URL,
    ORISUN_PG_SCHEMA: schema,
    ORISUN_NATS_URL: NATS_URL,
    ORISUN_DATA_DIR: freshDataDir(),
    ORISUN_WORKERS: "2",
    ...env,
  });
  await until("both workers", () => count(server.output(), "Orisun listening") >= 2);
  return server;
}

export const position = (
  p: { commitPosition: bigint; preparePosition: bigint } | undefined,
): Position => ({
  commit: p?.commitPosition ?? 0n,
  prepare: p?.preparePosition ?? 0n,
});

export const toStored = (e: WireEvent): StoredEvent => ({
  boundary: e.boundary,
  id: e.eventId,
  type: e.eventType,
  tags: e.tags.map((t) => ({ key: t.key, value: t.value })),
  data: e.data,
  metadata: e.metadata,
  position: position(e.position),
  createdAt: new Date(0),
});

/** The whole boundary, oldest first, a page at a time. */
export async function readLog(client: Rpc, boundary: string): Promise<StoredEvent[]> {
  const log: StoredEvent[] = [];
  for (;;) {
    const last = log.at(-1)?.position;
    const { events } = await client.getEvents({
      boundary,
      count: 1000,
      ...(last
        ? { fromPosition: { commitPosition: last.commit, preparePosition: last.prepare } }
        : {}),
    });
    const fresh = events
      .map(toStored)
      .filter((e) => !last || e.position.commit > last.commit || e.position.prepare > last.prepare);
    if (fresh.length === 0) return log;
    log.push(...fresh);
  }
}

export const wireQuery = (query: Query) => ({
  criteria: query.map((c) => ({ eventTypes: [...c.types], tags: [...c.tags] })),
});
