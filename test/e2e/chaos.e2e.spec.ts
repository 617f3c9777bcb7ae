import { existsSync } from "node:fs";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { Direction } from "../../gen/orisun/v1/eventstore_pb.js";
import { CONDITION_FAILED_REASON } from "../../server/api/errors.js";
import { ownerOf } from "../../server/process/boundary-owners.js";
import { StoreError } from "../../server/store/errors.js";
import type { Query, StoredEvent } from "../../server/store/types.js";
import {
  metric,
  ownClient,
  position,
  readLog,
  servingWorkers,
  spawnCluster,
  toStored,
  until,
  wireQuery,
  workerPids,
} from "../support/cluster.js";
import { dropSchema, freshSchema, PG_HOST, PG_PORT, pgUrlVia } from "../support/databases.js";
import { type Attempt, verifyLog } from "../support/dcb-log.js";
import { type OwnNatsServer, startOwnNatsServer } from "../support/nats-server.js";
import { prng } from "../support/prng.js";
import type { SpawnedServer } from "../support/spawn-server.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";

/**
 * Faults while many clients decide and append: two workers on PostgreSQL (through a proxy the test
 * can cut) and a NATS server of the test's own, conditional appends (a counter per slot, each
 * decided from a read) from 12 writers and a live subscriber per boundary, while, again and again,
 * a worker is killed with SIGKILL, stopped for a moment, or stopped until the watchdog kills it,
 * PostgreSQL's connections are cut or held, or NATS restarts. Afterwards every boundary's log must agree with what every
 * writer was told (verifyLog), each slot's counter must run 1, 2, 3, … without a gap or a repeat,
 * and every subscriber must have received exactly the log, in order, across its reconnects.
 *
 * ORISUN_CHAOS_SECONDS (40) sets how long the faults go on; ORISUN_CHAOS_SEED replays a run's
 * choices (the processes' timing does not replay).
 */
const SECONDS = Number(process.env.ORISUN_CHAOS_SECONDS ?? 40);
const SEED = Number(process.env.ORISUN_CHAOS_SEED ?? Date.now() % 1_000_000);
const WRITERS = 12;
const SLOTS = ["s0", "s1", "s2"];
/** A call's deadline; a writer retries an unknown outcome with the same event ids. */
const CALL_MS = 3_000;
/** How long one append may stay unknown before the test gives up on the server. */
const GIVE_UP_MS = 90_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** ABORTED with the condition's detail: refused, nothing written (a reset is ABORTED too). */
const conditionFailed = (e: ConnectError) =>
  e.code === Code.Aborted &&
  e.findDetails(ErrorInfoSchema).some((d) => d.reason === CONDITION_FAILED_REASON);

/** Codes a call may end with while its worker is killed or stopped: its outcome is unknown. */
const FAULT_CODES = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Aborted,
  Code.Canceled,
  Code.Unknown,
  Code.Internal,
]);

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

describe("faults under load: workers killed and stopped while clients decide and append", () => {
  const schema = freshSchema("chaos");
  let server: SpawnedServer;
  let database: TcpProxy;
  let nats: OwnNatsServer;
  beforeAll(async () => {
    database = await startTcpProxy(PG_HOST, PG_PORT);
    nats = await startOwnNatsServer();
    server = await spawnCluster(schema, {
      ORISUN_WORKER_STALL_TIMEOUT: "3s",
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
    `every acknowledged append is in the log, every condition held, and every subscriber got the log exactly (${SECONDS} s of faults)`,
    async () => {
      const random = prng(SEED);
      const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
      const names = boundaries();
      const context = () => `seed ${SEED}`;

      // A live subscriber per boundary, from the start, resuming after the last event it got.
      const stopSubscribers = new AbortController();
      const received = new Map<string, StoredEvent[]>(names.map((b) => [b, []]));
      let resumed = 0;
      const subscribers = names.map(async (boundary) => {
        const got = received.get(boundary) ?? [];
        const client = ownClient(server);
        while (!stopSubscribers.signal.aborted) {
          const last = got.at(-1)?.position;
          try {
            for await (const e of client.subscribeToEvents(
              {
                boundary,
                ...(last
                  ? {
                      afterPosition: { commitPosition: last.commit, preparePosition: last.prepare },
                    }
                  : {}),
              },
              { signal: stopSubscribers.signal },
            ))
              got.push(toStored(e));
          } catch (error) {
            if (stopSubscribers.signal.aborted) return;
            const code = ConnectError.from(error).code;
            if (!FAULT_CODES.has(code)) throw error;
          }
          resumed++;
          await sleep(200);
        }
      });

      // Writers: read a slot's last count and the head, append the next count on the condition
      // that nothing of the slot came after the head; retry an unknown outcome as it was.
      const attempts: Attempt[] = [];
      const faults = new Map<string, number>();
      let running = true;
      const writers = Array.from({ length: WRITERS }, async (_, w) => {
        const client = ownClient(server);
        const mine = prng(SEED * 100 + w);
        for (let n = 0; running; n++) {
          const boundary = names[Math.floor(mine() * names.length)] as string;
          const slot = SLOTS[Math.floor(mine() * SLOTS.length)] as string;
          const query: Query = [{ types: [], tags: [{ key: "slot", value: slot }] }];
          let read: Awaited<ReturnType<typeof client.getEvents>>;
          try {
            read = await client.getEvents(
              { boundary, criteria: wireQuery(query), count: 1, direction: Direction.DESC },
              { timeoutMs: CALL_MS },
            );
          } catch (error) {
            const code = ConnectError.from(error).code;
            if (!FAULT_CODES.has(code)) throw error;
            await sleep(100);
            continue;
          }
          const last = read.events[0] ? (JSON.parse(read.events[0].data) as { n: number }).n : 0;
          const after = position(read.head);
          const events = [
            {
              id: `c${w}-${n}`,
              type: "Counted",
              tags: [
                { key: "slot", value: slot },
                { key: "writer", value: String(w) },
              ],
              data: `{"n":${last + 1}}`,
              metadata: "",
            },
          ];
          const attempt: Attempt = { request: { boundary, events, condition: { after, query } } };
          attempts.push(attempt);
          const since = Date.now();
          for (;;) {
            try {
              const answer = await client.saveEvents(
                {
                  boundary,
                  consistencyCondition: {
                    consistencyMarker: {
                      commitPosition: after.commit,
                      preparePosition: after.prepare,
                    },
                    criteria: wireQuery(query),
                  },
                  events: events.map((e) => ({
                    eventId: e.id,
                    eventType: e.type,
                    tags: e.tags,
                    data: e.data,
                  })),
                },
                { timeoutMs: CALL_MS },
              );
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
              if (Date.now() - since > GIVE_UP_MS) {
                throw new Error(`${context()}: an append stayed unknown for ${GIVE_UP_MS} ms`, {
                  cause: e,
                });
              }
              await sleep(100 + mine() * 200);
            }
          }
        }
      });

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
          // Shorter than the watchdog's timeout: the worker runs on where it stopped.
          process.kill(victim, "SIGSTOP");
          await sleep(300 + random() * 1_700);
          process.kill(victim, "SIGCONT");
          done.push("pause");
        } else if (r < 0.6) {
          // Until the watchdog (3 s) kills it.
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
      running = false;
      await Promise.all(writers);

      const accepted = attempts.filter((a) => a.result).length;
      const refused = attempts.filter((a) => a.error).length;
      const summary = `${context()}: faults ${done.join(",")}; ${accepted} accepted, ${refused} refused, unknown outcomes retried ${JSON.stringify(Object.fromEntries(faults))}, subscriptions resumed ${resumed} times`;
      // One line in the run's output: what this run's faults were, and what the clients saw.
      console.log(summary);
      expect(done.length, summary).toBeGreaterThan(0);
      expect(accepted, summary).toBeGreaterThan(50);
      expect(refused, summary).toBeGreaterThan(0);
      expect(
        (await metric(server, 'orisun_worker_restarts_total{cause="exited"}')) +
          (await metric(server, 'orisun_worker_restarts_total{cause="stalled"}')),
        summary,
      ).toBeGreaterThan(0);

      const reader = ownClient(server);
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
        const got = received.get(boundary) ?? [];
        await until(`${boundary}'s subscriber to catch up`, () => got.length >= log.length, 60_000);
        const key = (e: StoredEvent) => `${e.id}@${e.position.commit}/${e.position.prepare}`;
        expect(got.map(key), `${summary}; ${boundary}`).toEqual(log.map(key));
      }
      stopSubscribers.abort();
      await Promise.all(subscribers);
    },
    SECONDS * 1_000 + 240_000,
  );
});
