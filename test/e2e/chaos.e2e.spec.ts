import { existsSync } from "node:fs";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { Direction, EventStore as EventStoreService } from "../../gen/orisun/v1/eventstore_pb.js";
import { CONDITION_FAILED_REASON } from "../../server/api/errors.js";
import { ownerOf } from "../../server/process/boundary-owners.js";
import { StoreError } from "../../server/store/errors.js";
import type { Query, StoredEvent } from "../../server/store/types.js";
import {
  metric,
  ownClient,
  position,
  type Rpc,
  readLog,
  servingWorkers,
  spawnCluster,
  toStored,
  until,
  wireQuery,
  workerPids,
} from "../support/cluster.js";
import {
  dropSchema,
  freshDataDir,
  freshSchema,
  PG_HOST,
  PG_PORT,
  pgUrlVia,
} from "../support/databases.js";
import { type Attempt, verifyLog } from "../support/dcb-log.js";
import { type OwnNatsServer, startOwnNatsServer } from "../support/nats-server.js";
import { prng } from "../support/prng.js";
import { freePort, type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";

/**
 * Faults while many clients decide and append. Writers read a counter (one per slot) and append
 * the next count on the condition that the slot has nothing after the head they read, retrying an
 * unknown outcome with the same ids; a live subscriber per boundary resumes after the last event it
 * got. Faults strike again and again:
 * - two workers on PostgreSQL (through a proxy the test can cut) and a NATS server of the test's
 *   own: a worker killed with SIGKILL, stopped for a moment, or stopped until the watchdog kills
 *   it; PostgreSQL's connections cut or held; NATS restarted;
 * - the embedded default: the server killed with SIGKILL mid-append and started again on its
 *   folder.
 * Afterwards every boundary's log must agree with what every writer was told (verifyLog), each
 * slot's counter must run 1, 2, 3, … without a gap or a repeat, and every subscriber must have
 * received exactly the log, in order, across its reconnects.
 *
 * ORISUN_CHAOS_SECONDS (40) sets how long the faults go on in each; ORISUN_CHAOS_SEED replays a
 * run's choices (the processes' timing does not replay).
 */
const SECONDS = Number(process.env.ORISUN_CHAOS_SECONDS ?? 40);
const SEED = Number(process.env.ORISUN_CHAOS_SEED ?? Date.now() % 1_000_000);
const SLOTS = ["s0", "s1", "s2"];
/** A call's deadline; a writer retries an unknown outcome with the same event ids. */
const CALL_MS = 3_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** ABORTED with the condition's detail: refused, nothing written (a reset is ABORTED too). */
const conditionFailed = (e: ConnectError) =>
  e.code === Code.Aborted &&
  e.findDetails(ErrorInfoSchema).some((d) => d.reason === CONDITION_FAILED_REASON);

/** Codes a call may end with while its server is killed or stopped: its outcome is unknown. */
const FAULT_CODES = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Aborted,
  Code.Canceled,
  Code.Unknown,
  Code.Internal,
]);

/** A live subscriber per boundary, from the start, resuming after the last event it got. */
function subscribe(client: () => Rpc, names: readonly string[]) {
  const stop = new AbortController();
  const received = new Map<string, StoredEvent[]>(names.map((b) => [b, []]));
  let resumed = 0;
  const running = names.map(async (boundary) => {
    const got = received.get(boundary) ?? [];
    const rpc = client();
    while (!stop.signal.aborted) {
      const last = got.at(-1)?.position;
      const after = last && {
        afterPosition: { commitPosition: last.commit, preparePosition: last.prepare },
      };
      try {
        for await (const e of rpc.subscribeToEvents(
          { boundary, ...after },
          { signal: stop.signal },
        ))
          got.push(toStored(e));
      } catch (error) {
        if (stop.signal.aborted) return;
        if (!FAULT_CODES.has(ConnectError.from(error).code)) throw error;
      }
      resumed++;
      await sleep(200);
    }
  });
  return {
    received,
    resumed: () => resumed,
    async stop() {
      stop.abort();
      await Promise.all(running);
    },
  };
}

/**
 * `count` writers, each reading a slot's last count and the head, then appending the next count
 * on the condition that nothing of the slot came after the head; an unknown outcome is retried
 * as it was, for at most `giveUpMs`.
 */
function write(client: () => Rpc, names: readonly string[], count: number, giveUpMs: number) {
  const attempts: Attempt[] = [];
  const faults = new Map<string, number>();
  let running = true;
  const writers = Array.from({ length: count }, async (_, w) => {
    const rpc = client();
    const mine = prng(SEED * 100 + w);
    for (let n = 0; running; n++) {
      const boundary = names[Math.floor(mine() * names.length)] as string;
      const slot = SLOTS[Math.floor(mine() * SLOTS.length)] as string;
      const query: Query = [{ types: [], tags: [{ key: "slot", value: slot }] }];
      let read: Awaited<ReturnType<typeof rpc.getEvents>>;
      try {
        read = await rpc.getEvents(
          { boundary, criteria: wireQuery(query), count: 1, direction: Direction.DESC },
          { timeoutMs: CALL_MS },
        );
      } catch (error) {
        if (!FAULT_CODES.has(ConnectError.from(error).code)) throw error;
        await sleep(100);
        continue;
      }
      const last = read.events[0] ? (JSON.parse(read.events[0].data) as { n: number }).n : 0;
      const after = position(read.head);
      const event = {
        id: `c${w}-${n}`,
        type: "Counted",
        tags: [
          { key: "slot", value: slot },
          { key: "writer", value: String(w) },
        ],
        data: `{"n":${last + 1}}`,
        metadata: "",
      };
      const attempt: Attempt = {
        request: { boundary, events: [event], condition: { after, query } },
      };
      attempts.push(attempt);
      const request = {
        boundary,
        consistencyCondition: {
          consistencyMarker: { commitPosition: after.commit, preparePosition: after.prepare },
          criteria: wireQuery(query),
        },
        events: [{ eventId: event.id, eventType: event.type, tags: event.tags, data: event.data }],
      };
      const since = Date.now();
      for (;;) {
        try {
          const answer = await rpc.saveEvents(request, { timeoutMs: CALL_MS });
          attempt.result = position(answer.logPosition);
          break;
        } catch (error) {
          const e = ConnectError.from(error);
          if (conditionFailed(e)) {
            attempt.error = new StoreError("condition_failed", e.rawMessage);
            break;
          }
          if (!FAULT_CODES.has(e.code)) throw e;
          faults.set(Code[e.code], (faults.get(Code[e.code]) ?? 0) + 1);
          if (Date.now() - since > giveUpMs) {
            throw new Error(`seed ${SEED}: an append stayed unknown for ${giveUpMs} ms`, {
              cause: e,
            });
          }
          await sleep(100 + mine() * 200);
        }
      }
    }
  });
  return {
    attempts,
    faults,
    async stop() {
      running = false;
      await Promise.all(writers);
    },
  };
}

/** The checks above, on every boundary; returns the run's one-line summary. */
async function verify(
  reader: Rpc,
  names: readonly string[],
  done: readonly string[],
  writers: ReturnType<typeof write>,
  subscribers: ReturnType<typeof subscribe>,
): Promise<string> {
  const { attempts, faults } = writers;
  const accepted = attempts.filter((a) => a.result).length;
  const refused = attempts.filter((a) => a.error).length;
  const summary = `seed ${SEED}: faults ${done.join(",")}; ${accepted} accepted, ${refused} refused, unknown outcomes retried ${JSON.stringify(Object.fromEntries(faults))}, subscriptions resumed ${subscribers.resumed()} times`;
  // One line in the run's output: what this run's faults were, and what the clients saw.
  console.log(summary);
  expect(done.length, summary).toBeGreaterThan(0);
  expect(accepted, summary).toBeGreaterThan(50);
  expect(refused, summary).toBeGreaterThan(0);
  for (const boundary of names) {
    const log = await readLog(reader, boundary);
    verifyLog(
      log,
      attempts.filter((a) => a.request.boundary === boundary),
    );
    // Each slot's counter runs 1, 2, 3, …: every decision saw the one before it.
    for (const slot of SLOTS) {
      const counts = log
        .filter((e) => e.tags.some((t) => t.key === "slot" && t.value === slot))
        .map((e) => (JSON.parse(e.data) as { n: number }).n);
      expect(counts, `${summary}; ${boundary} ${slot}`).toEqual(counts.map((_, i) => i + 1));
    }
    const got = subscribers.received.get(boundary) ?? [];
    await until(`${boundary}'s subscriber to catch up`, () => got.length >= log.length, 60_000);
    const key = (e: StoredEvent) => `${e.id}@${e.position.commit}/${e.position.prepare}`;
    expect(got.map(key), `${summary}; ${boundary}`).toEqual(log.map(key));
  }
  await subscribers.stop();
  return summary;
}

/** Two boundaries owned by each worker's slot. */
function boundaries(): string[] {
  const chosen: string[] = [];
  for (let i = 0; chosen.length < 4; i++) {
    const name = `chaos_${i}`;
    const slot = ownerOf(name, 2);
    if (chosen.filter((b) => ownerOf(b, 2) === slot).length < 2) chosen.push(name);
  }
  return chosen;
}

describe("faults under load: two workers on PostgreSQL + NATS", () => {
  const schema = freshSchema("chaos");
  let server: SpawnedServer;
  let database: TcpProxy;
  let nats: OwnNatsServer;
  beforeAll(async () => {
    database = await startTcpProxy(PG_HOST, PG_PORT);
    nats = await startOwnNatsServer();
    server = await spawnCluster(schema, {
      ORISUN_WORKER_STALL_TIMEOUT: "4s",
      ORISUN_PG_URL: pgUrlVia(database.port),
      ORISUN_NATS_URL: nats.url,
    });
  });
  afterAll(async () => {
    for (const pid of await workerPids(server.process.pid ?? 0)) {
      try {
        process.kill(pid, "SIGCONT");
      } catch {}
    }
    await server?.stop();
    await nats?.stop();
    await database?.close();
    await dropSchema(schema);
  });

  it(
    `workers killed and stopped, PostgreSQL cut and held, NATS restarted (${SECONDS} s): every answer holds in the log, every subscriber gets the log`,
    async () => {
      const random = prng(SEED);
      const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
      const names = boundaries();
      const subscribers = subscribe(() => ownClient(server), names);
      const writers = write(() => ownClient(server), names, 12, 90_000);

      // The faults, one at a time, each once both workers serve again.
      const done: string[] = [];
      const end = Date.now() + SECONDS * 1_000;
      while (Date.now() < end) {
        await sleep(1_500 + random() * 2_500);
        const workers = await servingWorkers(server);
        if (workers.length < 2) continue;
        const victim = pick(workers).pid;
        const r = random();
        if (r < 0.25) {
          process.kill(victim, "SIGKILL");
          done.push("kill");
        } else if (r < 0.45) {
          // Well within the watchdog's timeout, on a busy machine too: the worker runs on.
          process.kill(victim, "SIGSTOP");
          await sleep(300 + random() * 1_200);
          process.kill(victim, "SIGCONT");
          done.push("pause");
        } else if (r < 0.6) {
          // Until the watchdog (4 s) kills it.
          process.kill(victim, "SIGSTOP");
          await until(
            "the watchdog to kill the stopped worker",
            () => !existsSync(`/proc/${victim}`),
            20_000,
          );
          done.push("stall");
        } else if (r < 0.75) {
          // Every connection to PostgreSQL dropped, and new ones refused for a while.
          database.cut();
          await sleep(300 + random() * 2_700);
          database.restore();
          done.push("pg-cut");
        } else if (r < 0.85) {
          // PostgreSQL stops answering (connections open, nothing delivered), then catches up.
          database.freeze();
          await sleep(300 + random() * 1_700);
          database.thaw();
          done.push("pg-hold");
        } else {
          await nats.stop();
          await sleep(300 + random() * 2_700);
          await nats.start();
          done.push("nats-restart");
        }
        await until(
          "two serving workers",
          async () => (await servingWorkers(server)).length === 2,
          60_000,
        );
      }
      await writers.stop();
      const summary = await verify(ownClient(server), names, done, writers, subscribers);
      // Each worker that died was one the test killed or the watchdog killed: no worker died of
      // a fault of PostgreSQL or NATS.
      const times = (fault: string) => done.filter((f) => f === fault).length;
      expect(
        {
          exited: await metric(server, 'orisun_worker_restarts_total{cause="exited"}'),
          stalled: await metric(server, 'orisun_worker_restarts_total{cause="stalled"}'),
        },
        summary,
      ).toEqual({ exited: times("kill"), stalled: times("stall") });
    },
    SECONDS * 1_000 + 240_000,
  );
});

describe("faults under load: the embedded default", () => {
  const servers: SpawnedServer[] = [];
  afterAll(async () => {
    for (const s of servers) await s.stop("SIGKILL").catch(() => undefined);
  });

  it(
    `killed with SIGKILL mid-append and started again on its folder (${SECONDS} s): every answer holds in the log, every subscriber gets the log`,
    async () => {
      const random = prng(SEED + 1);
      // The same port each time, so that the clients' next calls reach the new process.
      const env = { ORISUN_DATA_DIR: freshDataDir(), ORISUN_PORT: String(await freePort()) };
      const start = async () => {
        const server = await spawnServer(env, [], 150_000);
        servers.push(server);
        return server;
      };
      let server = await start();
      const url = server.url;
      const client = () => createClient(EventStoreService, createGrpcTransport({ baseUrl: url }));
      const names = ["embedded_0", "embedded_1"];
      const subscribers = subscribe(client, names);
      // Generous: a restart replays the WAL, on a machine busy with the other tests.
      const writers = write(client, names, 8, 180_000);
      const done: string[] = [];
      const end = Date.now() + SECONDS * 1_000;
      while (Date.now() < end) {
        await sleep(1_000 + random() * 3_000);
        server.process.kill("SIGKILL");
        await server.stop();
        server = await start();
        done.push("kill");
      }
      await writers.stop();
      await verify(client(), names, done, writers, subscribers);
      expect(await server.stop(), server.output()).toBe(0);
    },
    SECONDS * 1_000 + 400_000,
  );
});
