/**
 * Emmett's PostgreSQL event store under the load of Orisun's conditional 1-event appends: each of
 * `clients` loops appends one event per call to its own stream, expecting the version it last got
 * (optimistic concurrency, no conflicts), for `seconds`. Run by bench/references.ts from this
 * folder, so that Emmett and its pinned peers load from this folder's node_modules.
 *
 * Usage: node append.mjs <connection string> <clients> <seconds>; prints one JSON line.
 */
import { getPostgreSQLEventStore } from "@event-driven-io/emmett-postgresql";

const [url, clientsArg, secondsArg] = process.argv.slice(2);
if (!url || !clientsArg || !secondsArg)
  throw new Error("usage: append.mjs <url> <clients> <seconds>");
const clients = Number(clientsArg);
const seconds = Number(secondsArg);

const store = getPostgreSQLEventStore(url);
// Creates Emmett's tables before the clock starts.
await store.schema.migrate();

const run = `r${Date.now().toString(36)}`;
let events = 0;
const cpuBefore = process.cpuUsage();
const started = performance.now();
const end = Date.now() + seconds * 1_000;
await Promise.all(
  Array.from({ length: clients }, async (_, c) => {
    const stream = `account-${run}_${c}`;
    // 0: the stream must not exist yet.
    let version = 0n;
    while (Date.now() < end) {
      const result = await store.appendToStream(
        stream,
        [{ type: "Deposited", data: { amount: 1 } }],
        { expectedStreamVersion: version },
      );
      version = result.nextExpectedStreamVersion;
      events++;
    }
  }),
);
const ms = performance.now() - started;
const cpu = process.cpuUsage(cpuBefore);
await store.close();
console.log(JSON.stringify({ clients, events, ms, cpuMs: (cpu.user + cpu.system) / 1_000 }));
