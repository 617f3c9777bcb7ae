import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  Direction,
  type Event,
  EventStore,
  type Position,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { NATS_URL } from "../support/live.js";
import { prng } from "../support/prng.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

/**
 * The snapshot guarantee of decision reads, randomized: while writers append through two server
 * processes on one database, readers on both processes read; afterwards each read is checked
 * against the whole log. A read never returns an event above its head, never misses a matching
 * event at or below it, and its head is never below an append that returned before it was sent.
 */

const SEED = Number(process.env.ORISUN_TEST_SEED ?? 20261202);
const TYPES = ["A", "B", "C"];
const KEYS = ["k0", "k1", "k2", "k3"];

const cmp = (a: Position | undefined, b: Position | undefined) => {
  const [x, y] = [
    a ?? { commitPosition: 0n, preparePosition: 0n },
    b ?? { commitPosition: 0n, preparePosition: 0n },
  ];
  if (x.commitPosition !== y.commitPosition) return x.commitPosition < y.commitPosition ? -1 : 1;
  if (x.preparePosition !== y.preparePosition)
    return x.preparePosition < y.preparePosition ? -1 : 1;
  return 0;
};
const show = (p: Position | undefined) => `${p?.commitPosition ?? 0}:${p?.preparePosition ?? 0}`;

interface SimpleCriterion {
  eventTypes: string[];
  tags: { key: string; value: string }[];
}
const matches = (event: Event, criteria: readonly SimpleCriterion[]) =>
  criteria.length === 0 ||
  criteria.some(
    (c) =>
      (c.eventTypes.length === 0 || c.eventTypes.includes(event.eventType)) &&
      c.tags.every((t) => event.tags.some((u) => u.key === t.key && u.value === t.value)),
  );

interface Query {
  criteria: SimpleCriterion[];
  after: Position | undefined;
  count: number;
}
interface DecisionRecord {
  kind: "decision";
  queries: Query[];
  at: Position | undefined;
  /** The highest position an append had returned before this read was sent. */
  floor: Position | undefined;
  head: Position | undefined;
  results: { events: Event[]; hasMore: boolean }[];
}
interface GetRecord {
  kind: "get";
  query: SimpleCriterion[];
  direction: Direction;
  count: number;
  floor: Position | undefined;
  head: Position | undefined;
  events: Event[];
}

describe("decision reads racing appends on two server processes", () => {
  const schema = freshSchema("dsn");
  let servers: SpawnedServer[];
  let clients: Client<typeof EventStore>[];
  beforeAll(async () => {
    const env = { ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: schema, ORISUN_NATS_URL: NATS_URL };
    servers = await Promise.all([
      spawnServer({ ...env, ORISUN_DATA_DIR: freshDataDir() }),
      spawnServer({ ...env, ORISUN_DATA_DIR: freshDataDir() }),
    ]);
    clients = servers.map((s) => createClient(EventStore, createGrpcTransport({ baseUrl: s.url })));
  });
  afterAll(async () => {
    await Promise.all((servers ?? []).map((s) => s.stop()));
    await dropSchema(schema);
  });

  it(`never shows an event above its head nor misses one below it (seed ${SEED})`, async () => {
    const random = prng(SEED);
    const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)] as T;
    const criterion = (): SimpleCriterion => {
      const withType = random() < 0.7;
      const withTag = !withType || random() < 0.5;
      return {
        eventTypes: withType ? [pick(TYPES)] : [],
        tags: withTag ? [{ key: pick(KEYS), value: String(Math.floor(random() * 3)) }] : [],
      };
    };
    const query = () => Array.from({ length: Math.floor(random() * 3) }, criterion);
    const toProto = (criteria: SimpleCriterion[]) => ({
      criteria: criteria.map((c) => ({ eventTypes: c.eventTypes, tags: c.tags })),
    });

    const boundary = "race";
    let floor: Position | undefined;
    let seen: Position[] = [];
    let writing = true;
    const records: (DecisionRecord | GetRecord)[] = [];

    const writer = async (w: number) => {
      for (let n = 0; n < 40; n++) {
        const events = Array.from({ length: 1 + Math.floor(random() * 4) }, () => ({
          eventType: pick(TYPES),
          tags: KEYS.filter(() => random() < 0.5).map((key) => ({
            key,
            value: String(Math.floor(random() * 3)),
          })),
          data: `{"w":${w}}`,
        }));
        const result = await (clients[(w + n) % 2] as Client<typeof EventStore>).saveEvents({
          boundary,
          events,
        });
        if (cmp(result.logPosition, floor) > 0) floor = result.logPosition;
        if (result.logPosition) seen.push(result.logPosition);
      }
    };
    const reader = async (r: number) => {
      let n = 0;
      while (writing) {
        const rpc = clients[(r + n++) % 2] as Client<typeof EventStore>;
        const sentAfter = floor;
        if (random() < 0.7) {
          const queries = Array.from({ length: 1 + Math.floor(random() * 3) }, () => ({
            criteria: query(),
            after: random() < 0.5 || seen.length === 0 ? undefined : pick(seen),
            count: 1 + Math.floor(random() * 40),
          }));
          // Sometimes a later page of an earlier decision: read at that decision's head.
          const earlier = records.filter((x) => x.kind === "decision");
          const at = earlier.length > 0 && random() < 0.3 ? pick(earlier).head : undefined;
          const response = await rpc.readForDecision({
            boundary,
            at,
            queries: queries.map((q) => ({
              criteria: toProto(q.criteria),
              afterPosition: q.after,
              count: q.count,
            })),
          });
          records.push({
            kind: "decision",
            queries,
            at,
            // A read at an older head owes nothing newer than that head.
            floor: at ?? sentAfter,
            head: response.head,
            results: response.results.map((x) => ({ events: x.events, hasMore: x.hasMore })),
          });
        } else {
          const q = query();
          const direction = random() < 0.5 ? Direction.ASC : Direction.DESC;
          const count = 1 + Math.floor(random() * 40);
          const response = await rpc.getEvents({
            boundary,
            criteria: toProto(q),
            direction,
            count,
          });
          records.push({
            kind: "get",
            query: q,
            direction,
            count,
            floor: sentAfter,
            head: response.head,
            events: response.events,
          });
        }
      }
    };
    const readers = [0, 1, 2, 3].map(reader);
    await Promise.all([0, 1, 2, 3].map(writer));
    writing = false;
    await Promise.all(readers);
    seen = [];

    // At most 4 × 40 × 4 events: one page holds the whole log.
    const { events: log } = await (clients[0] as Client<typeof EventStore>).getEvents({
      boundary,
      count: 10_000,
    });
    expect(log.length).toBeLessThan(10_000);
    // A head is always the last event of some commit (or the empty log's {0,0}).
    const heads = new Set(["0:0"]);
    for (const [i, e] of log.entries()) {
      if (log[i + 1]?.position?.commitPosition !== e.position?.commitPosition)
        heads.add(show(e.position));
    }
    const ids = (events: readonly Event[]) => events.map((e) => e.eventId);

    let decisions = 0;
    let pagesAt = 0;
    let nonEmpty = 0;
    for (const record of records) {
      // Positions only: whole events would bury the difference in the failure message.
      const context = JSON.stringify(record, (key, v) => {
        if (key === "events") return (v as Event[]).map((e) => show(e.position));
        if (v !== null && typeof v === "object" && "commitPosition" in v)
          return show(v as Position);
        return v;
      });
      expect(heads.has(show(record.head)), context).toBe(true);
      expect(cmp(record.head, record.floor), context).toBeGreaterThanOrEqual(0);
      const atOrBelow = log.filter((e) => cmp(e.position, record.head) <= 0);
      if (record.kind === "decision") {
        decisions++;
        if (record.at) {
          pagesAt++;
          expect(show(record.head), context).toBe(show(record.at));
        }
        for (const [i, q] of record.queries.entries()) {
          const expected = atOrBelow.filter(
            (e) => cmp(e.position, q.after) > 0 && matches(e, q.criteria),
          );
          const got = record.results[i];
          expect(ids(got?.events ?? []), context).toEqual(ids(expected.slice(0, q.count)));
          expect(got?.hasMore, context).toBe(expected.length > q.count);
          if (expected.length > 0) nonEmpty++;
        }
      } else {
        const matching = atOrBelow.filter((e) => matches(e, record.query));
        const ordered = record.direction === Direction.ASC ? matching : [...matching].reverse();
        expect(ids(record.events), context).toEqual(ids(ordered.slice(0, record.count)));
      }
    }
    // The race must have happened: many reads, most of them finding something.
    expect(decisions).toBeGreaterThan(20);
    expect(pagesAt).toBeGreaterThan(3);
    expect(nonEmpty).toBeGreaterThan(decisions / 2);
    expect(new Set(records.map((r) => show(r.head))).size).toBeGreaterThan(10);
  });
});
