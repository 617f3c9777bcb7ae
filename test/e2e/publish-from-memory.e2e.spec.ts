import { randomUUID } from "node:crypto";
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  decodeEvents,
  encodeEvents,
  streamNames,
  wireText,
} from "../../server/broker/jetstream.js";
import { MessageAuth } from "../../server/broker/message-auth.js";
import { loadDeployment } from "../../server/store/deployment.js";
import type { EventStore } from "../../server/store/event-store.js";
import type { StoredEvent } from "../../server/store/types.js";
import { eventStoreClient } from "../support/clients.js";
import {
  dropSchema,
  freshDataDir,
  freshSchema,
  NATS_URL,
  openPostgresStore,
  PG_URL,
} from "../support/databases.js";
import { prng } from "../support/prng.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

/**
 * Two server processes write one boundary at once on one database and one NATS; the one that
 * publishes it to JetStream (from memory for its own commits, reading back the other's) is
 * killed with SIGKILL mid-way and the other takes over. The stream must hold the log exactly:
 * every event once, in order, no gap, each message signed and byte for byte what the log's
 * events encode to.
 */

const BOUNDARY = "orders";
const client = eventStoreClient;
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface StreamMessage {
  readonly seq: number;
  readonly data: Uint8Array;
  readonly signed: boolean;
  readonly events: StoredEvent[];
}

describe("publishing from memory keeps the JetStream stream identical to the log", () => {
  const schema = freshSchema("pfm");
  let a: SpawnedServer;
  let b: SpawnedServer;
  let store: EventStore;
  let nc: NatsConnection;
  let jsm: JetStreamManager;

  beforeAll(async () => {
    const env = { ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: schema, ORISUN_NATS_URL: NATS_URL };
    a = await spawnServer({ ...env, ORISUN_DATA_DIR: freshDataDir() });
    b = await spawnServer({ ...env, ORISUN_DATA_DIR: freshDataDir() });
    store = await openPostgresStore(schema, 2);
    nc = await connect({ servers: NATS_URL });
    jsm = await jetstreamManager(nc);
  });
  afterAll(async () => {
    await a?.stop("SIGKILL");
    await b?.stop("SIGKILL");
    await nc?.close();
    await store?.close();
    await dropSchema(schema);
  });

  async function streamMessages(namespace: string, auth: MessageAuth): Promise<StreamMessage[]> {
    const { stream } = streamNames(namespace, BOUNDARY);
    const info = await jsm.streams.info(stream).catch(() => undefined);
    if (!info || info.state.messages === 0) return [];
    const out: StreamMessage[] = [];
    for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
      const m = await jsm.streams.getMessage(stream, { seq });
      if (!m) continue;
      out.push({
        seq,
        data: m.data,
        signed: auth.verify({ subject: m.subject, headers: m.header, data: m.data }),
        events: decodeEvents(m.data),
      });
    }
    return out;
  }

  it("under concurrent writers in two processes and across a kill -9 of the publisher", async () => {
    const { id: namespace, secret } = await loadDeployment(store.database.db);
    const auth = new MessageAuth(secret);
    const lastInStream = async () => {
      const { stream } = streamNames(namespace, BOUNDARY);
      const info = await jsm.streams.info(stream).catch(() => undefined);
      if (!info || info.state.messages === 0) return undefined;
      const m = await jsm.streams.getMessage(stream, { seq: info.state.last_seq });
      return m ? decodeEvents(m.data).at(-1)?.position.prepare : undefined;
    };

    // Live first: a probe committed before the publisher read the head is history, not new.
    let live: bigint | undefined;
    for (let i = 0; i < 40 && live === undefined; i++) {
      const probe = await client(a).saveEvents({
        boundary: BOUNDARY,
        events: [{ eventId: randomUUID(), eventType: "Probe", data: "{}" }],
      });
      const want = probe.logPosition?.preparePosition;
      const until = Date.now() + 1_000;
      while (Date.now() < until && live === undefined) {
        if ((await lastInStream()) === want) live = want;
        else await pause(50);
      }
    }
    expect(live).toBeDefined();

    let alive = [a, b];
    let writing = true;
    let written = 0;
    const writer = async (w: number) => {
      const random = prng(w + 1);
      for (let i = 0; writing; i++) {
        const server = alive[(w + i) % alive.length] as SpawnedServer;
        const n = 1 + Math.floor(random() * 3);
        try {
          await client(server).saveEvents({
            boundary: BOUNDARY,
            events: Array.from({ length: n }, (_, k) => ({
              eventId: `w${w}-${i}-${k}`,
              eventType: random() < 0.5 ? "Placed" : "Paid",
              tags: [
                { key: "writer", value: String(w) },
                { key: "zeichen", value: "\u00e9\u{1f600}" },
              ],
              data: JSON.stringify({ w, i, k, text: "x".repeat(Math.floor(random() * 200)) }),
              metadata: random() < 0.5 ? "" : `{ "spaced" : true }`,
            })),
          });
          written += n;
        } catch {
          // The killed server's calls fail; this client moves on to the survivor.
          await pause(20);
        }
      }
    };
    const writers = Array.from({ length: 4 }, (_, w) => writer(w));

    await pause(2_500);
    const publishing = (log: string) =>
      log.includes(`"boundary":"${BOUNDARY}","msg":"publishing the boundary to JetStream"`);
    expect([a, b].filter((s) => publishing(s.output())).length).toBe(1);
    const victim = publishing(a.output()) ? a : b;
    const survivor = victim === a ? b : a;
    const survivorLogBefore = survivor.output().length;
    await victim.stop("SIGKILL");
    alive = [survivor];
    await pause(3_000);
    writing = false;
    await Promise.all(writers);
    expect(written).toBeGreaterThan(100);

    const head = await store.head(BOUNDARY);
    const deadline = Date.now() + 30_000;
    while ((await lastInStream()) !== head.prepare && Date.now() < deadline) await pause(100);
    expect(await lastInStream()).toBe(head.prepare);
    expect(publishing(survivor.output().slice(survivorLogBefore))).toBe(true);

    const log = await store.read({
      boundary: BOUNDARY,
      query: [],
      count: 100_000,
      direction: "asc",
    });
    const byPrepare = new Map(log.map((e) => [e.position.prepare, e]));
    const messages = await streamMessages(namespace, auth);
    expect(messages.every((m) => m.signed)).toBe(true);
    // Consecutive stream sequences: nothing was refused in between or removed.
    messages.forEach((m, i) => {
      if (i > 0) expect(m.seq).toBe((messages[i - 1] as StreamMessage).seq + 1);
    });
    const streamed = messages.flatMap((m) => m.events);
    // No gap and no repeat: each event is the one after the previous, through the head.
    const start = streamed.findIndex((e) => e.position.prepare === live);
    expect(start).toBeGreaterThanOrEqual(0);
    const fromLive = streamed.slice(start).map((e) => e.position.prepare);
    const expected = log.filter((e) => e.position.prepare >= (live as bigint));
    expect(fromLive).toEqual(expected.map((e) => e.position.prepare));
    for (let i = 1; i < streamed.length; i++) {
      const [p, q] = [streamed[i - 1], streamed[i]] as [StoredEvent, StoredEvent];
      expect(q.position.prepare).toBe(p.position.prepare + 1n);
    }
    // Byte for byte what the log's events at those positions encode to.
    for (const m of messages) {
      const texts = m.events.map((e) => {
        const stored = byPrepare.get(e.position.prepare);
        expect(stored).toBeDefined();
        return wireText(stored as StoredEvent);
      });
      expect(Buffer.from(m.data).equals(Buffer.from(encodeEvents(texts)))).toBe(true);
    }
  }, 120_000);
});
