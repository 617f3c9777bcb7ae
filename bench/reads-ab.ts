/**
 * An A/B of two builds' reads that sees one machine state: both servers run at once on one
 * PostgreSQL schema (two processes of one deployment, without NATS), one boundary is loaded
 * through A, and then each round times a catch-up subscription over the whole boundary and
 * GetEvents paging through it in pages of 1,000, on A and on B, alternating which goes first.
 * Prints the medians and the pairwise ratios B/A with every round's ratio.
 *
 *   npm run build && node dist/bench/reads-ab.js A B
 *
 * A and B: a checkout with a built dist/ ("." for this one). Settings: AB_EVENTS (200,000),
 * AB_ROUNDS (8), BENCH_PG_URL.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EventStore } from "../gen/orisun/v1/eventstore_pb.js";
import { type Server, startServer } from "./server.js";
import { NATS_URL, PG_URL, removeServerData } from "./server-data.js";
import { median } from "./workloads.js";

const EVENTS = Number(process.env.AB_EVENTS ?? 200_000);
const ROUNDS = Number(process.env.AB_ROUNDS ?? 8);
const BOUNDARY = "reads";

async function load(client: Client<typeof EventStore>): Promise<void> {
  for (let i = 0; i < EVENTS; i += 1_000) {
    await client.saveEvents({
      boundary: BOUNDARY,
      events: Array.from({ length: Math.min(1_000, EVENTS - i) }, (_, k) => ({
        eventType: `T${k % 5}`,
        tags: [{ key: "k", value: `v${k % 100}` }],
        data: JSON.stringify({ i: i + k, name: "some text of moderate length here" }),
      })),
    });
  }
}

/** Events/s of a subscription from the start until it has every event. */
async function catchUp(client: Client<typeof EventStore>): Promise<number> {
  const started = performance.now();
  const abort = new AbortController();
  let n = 0;
  try {
    for await (const _ of client.subscribeToEvents(
      { boundary: BOUNDARY },
      { signal: abort.signal },
    )) {
      if (++n === EVENTS) break;
    }
  } finally {
    abort.abort();
  }
  return EVENTS / ((performance.now() - started) / 1_000);
}

/** Events/s of GetEvents pages of 1,000 from the start to the head. */
async function paging(client: Client<typeof EventStore>): Promise<number> {
  const started = performance.now();
  let from: { commitPosition: bigint; preparePosition: bigint } | undefined;
  let n = 0;
  for (;;) {
    const { events, head } = await client.getEvents({
      boundary: BOUNDARY,
      count: 1_000,
      fromPosition: from,
    });
    n += events.length;
    const last = events.at(-1)?.position;
    if (
      !last ||
      (last.commitPosition === head?.commitPosition &&
        last.preparePosition === head.preparePosition)
    ) {
      break;
    }
    from = { commitPosition: last.commitPosition, preparePosition: last.preparePosition + 1n };
  }
  if (n !== EVENTS) throw new Error(`paging read ${n} events, not ${EVENTS}`);
  return EVENTS / ((performance.now() - started) / 1_000);
}

async function main(): Promise<void> {
  const [a, b] = process.argv.slice(2);
  if (!a || !b) throw new Error("usage: node dist/bench/reads-ab.js A B (checkouts with a dist/)");
  const schema = `bench_reads_ab_${process.pid}`;
  const dir = mkdtempSync(join(tmpdir(), "orisun-reads-ab-"));
  const servers: Server[] = [];
  try {
    for (const root of [a, b]) {
      const env = { ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: schema, ORISUN_DATA_DIR: dir };
      servers.push(await startServer(env, `${resolve(root)}/`));
    }
    const [clientA, clientB] = servers.map((s) =>
      createClient(EventStore, createGrpcTransport({ baseUrl: s.url })),
    );
    if (!clientA || !clientB) throw new Error("two servers");
    await load(clientA);
    const sides = { A: clientA, B: clientB };
    const runs = {
      catchUp: { A: [] as number[], B: [] as number[] },
      paging: { A: [] as number[], B: [] as number[] },
    };
    // A warm-up of each, untimed.
    for (const client of [clientA, clientB]) {
      await catchUp(client);
      await paging(client);
    }
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? (["A", "B"] as const) : (["B", "A"] as const);
      for (const side of order) runs.catchUp[side].push(await catchUp(sides[side]));
      for (const side of order) runs.paging[side].push(await paging(sides[side]));
    }
    for (const [name, r] of Object.entries(runs)) {
      const ratios = r.A.map((x, i) => (r.B[i] ?? 0) / x);
      console.log(
        `${name} (events/s, ${EVENTS} events, ${ROUNDS} rounds): A ${median(r.A).toFixed(0)}, B ${median(r.B).toFixed(0)}, B/A ${median(ratios).toFixed(3)} (rounds ${ratios.map((x) => x.toFixed(2)).join(" ")})`,
      );
    }
  } finally {
    for (const server of servers) await server.stop();
    rmSync(dir, { recursive: true, force: true });
    await removeServerData(PG_URL, NATS_URL, schema);
  }
}

await main();
