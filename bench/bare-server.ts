/**
 * The least a durable append can cost on this stack, for the 1-client reference: a bare
 * `node:http2` server that answers any gRPC call with one message frame and `grpc-status: 0`
 * trailers, with no Fastify, no Connect, no validation and no protobuf decoding of the request.
 * Listens on 127.0.0.1:$PORT.
 *
 * With PG_URL, SaveEvents first inserts one row (a uuid) into a lean table of its own, a bigserial
 * key and a unique uuid, with a named prepared statement in autocommit: one round trip and one
 * commit, the one thing an acknowledged append cannot skip. The table is dropped on SIGTERM.
 *
 * With BARE_APPEND=1 as well, SaveEvents instead runs Orisun's own append statement: the request
 * is decoded, and its events and condition go to `orisun_append_rows` through the store's
 * connection pool (`callAppend`, the call the server makes for a lone append), in a schema of its
 * own that Orisun's migrations create; the answer is the position it wrote. The condition is
 * decided in memory as the server decides it, when nothing lies between its marker and the head
 * this handler last wrote, else checked in SQL. Nothing else of Orisun runs: no Connect, no
 * interceptors, no validation, no group commit, no live stream. So at one client its rate is the
 * most any server could make that answers a lone append with that statement on this stack.
 * It serves one client: concurrent calls would each take the boundary's lock in turn.
 *
 * With BARE_STORE=1 instead, SaveEvents goes to Orisun's store itself (EventStore.append, opened
 * with the options the server opens it with, in a schema of its own): group commit, the window
 * that decides conditions in memory, the one-statement append and its fallbacks. What the server
 * adds around the store does not run: Connect, interceptors, authentication, validation (the
 * request is taken as it comes), metrics, the live stream. At any number of clients its rate is
 * the most a server could make that commits appends with Orisun's store on this stack.
 */
import { randomUUID } from "node:crypto";
import { createServer, type ServerHttp2Stream } from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import pg from "pg";
import {
  type SaveEventsRequest,
  SaveEventsRequestSchema,
  WriteResultSchema,
} from "../gen/orisun/v1/eventstore_pb.js";
import { storeOptionsFor } from "../server/app.js";
import { loadConfig } from "../server/config.js";
import { callAppend, type FunctionCheck } from "../server/store/append-function.js";
import { openDatabase } from "../server/store/database.js";
import { EventStore } from "../server/store/event-store.js";
import { encodeTag } from "../server/store/schema.js";
import type { AppendRequest, Position } from "../server/store/types.js";

/** Which of Orisun's write paths SaveEvents runs, if any (else the lean insert). */
const orisun =
  process.env.BARE_STORE === "1" ? "store" : process.env.BARE_APPEND === "1" ? "statement" : "";
const TABLE = `orisun_bench_bare_${process.pid}`;
const pool = process.env.PG_URL
  ? new pg.Pool({ connectionString: process.env.PG_URL, max: 64 })
  : undefined;
if (!orisun) {
  await pool?.query(
    `CREATE TABLE ${TABLE} (position bigserial PRIMARY KEY, id uuid NOT NULL UNIQUE)`,
  );
}
const insert = { name: "bare_insert", text: `INSERT INTO ${TABLE} (id) VALUES ($1)` };

const SCHEMA = `orisun_bench_bare_${process.pid}`;
/** Orisun's database, for its statement alone. */
const database =
  process.env.PG_URL && orisun === "statement"
    ? await openDatabase({
        url: process.env.PG_URL,
        schema: SCHEMA,
        poolSize: 8,
        dataDir: "",
        onIdleError: () => {},
      })
    : undefined;
const eventStore =
  process.env.PG_URL && orisun === "store"
    ? await EventStore.open(
        storeOptionsFor(
          loadConfig({ ORISUN_PG_URL: process.env.PG_URL, ORISUN_PG_SCHEMA: SCHEMA }, []),
          console,
        ),
      )
    : undefined;

/** The request as the store takes it, unvalidated. */
function appendRequest(request: SaveEventsRequest): AppendRequest {
  const given = request.consistencyCondition;
  return {
    boundary: request.boundary,
    events: request.events.map((e) => ({
      id: e.eventId || randomUUID(),
      type: e.eventType,
      tags: e.tags.map(({ key, value }) => ({ key, value })),
      data: e.data,
      metadata: e.metadata,
    })),
    condition: given && {
      after: {
        commit: given.consistencyMarker?.commitPosition ?? 0n,
        prepare: given.consistencyMarker?.preparePosition ?? 0n,
      },
      query: (given.criteria?.criteria ?? []).map((c) => ({
        types: c.eventTypes,
        tags: c.tags.map(({ key, value }) => ({ key, value })),
      })),
    },
  };
}

/** The head this handler last wrote, per boundary. */
const heads = new Map<string, Position>();

/** Runs the request as Orisun's lone append statement; the position of its last event. */
async function append(request: SaveEventsRequest): Promise<Position> {
  if (!database) throw new Error("no database");
  const { boundary, events: given, condition } = appendRequest(request);
  const marker = condition?.after ?? { commit: 0n, prepare: 0n };
  const events = given.map((e, i) => ({
    ...e,
    commits: 1n,
    prepares: BigInt(i + 1),
    tags: [...new Set(e.tags.map(encodeTag))],
  }));
  const connection = await database.connections.connect();
  try {
    const run = (head: Position | undefined) => {
      // Nothing between the marker and the head: no event after the marker can match.
      const decided =
        head !== undefined && head.commit === marker.commit && head.prepare === marker.prepare;
      const checks: FunctionCheck[] = condition
        ? [{ after: marker, query: condition.query, decided }]
        : [];
      return callAppend(
        connection,
        boundary,
        head,
        condition ? marker : undefined,
        checks,
        events,
        1,
        undefined,
      );
    };
    let called = await run(heads.get(boundary));
    // Another writer moved the head: checked in SQL against the head as it is.
    if (called.outcome === "stale") called = await run(undefined);
    if (called.outcome !== "ok") throw new Error(`orisun_append_rows: ${called.outcome}`);
    const head = {
      commit: called.before.commit + 1n,
      prepare: called.before.prepare + BigInt(events.length),
    };
    heads.set(boundary, head);
    return head;
  } finally {
    connection.release();
  }
}

const frame = (message: Uint8Array) => {
  const out = Buffer.alloc(5 + message.length);
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
};
const saved = frame(
  toBinary(
    WriteResultSchema,
    create(WriteResultSchema, { logPosition: { commitPosition: 1n, preparePosition: 1n } }),
  ),
);
const empty = frame(new Uint8Array());

function answer(stream: ServerHttp2Stream, body: Buffer): void {
  if (stream.destroyed) return;
  stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
  stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
  stream.end(body);
}

const server = createServer();
server.on("stream", (stream, headers) => {
  const saving = String(headers[":path"]).endsWith("/SaveEvents");
  // A stream closed with an error code (a failed append) emits 'error': nothing more to do.
  stream.on("error", () => {});
  const chunks: Buffer[] = [];
  stream.on("data", (chunk: Buffer) => {
    if (database || eventStore) chunks.push(chunk);
  });
  stream.once("end", () => {
    if (!saving) return answer(stream, empty);
    if (database || eventStore) {
      const body = Buffer.concat(chunks);
      return Promise.resolve(body.subarray(5))
        .then((message) => {
          const request = fromBinary(SaveEventsRequestSchema, message);
          return eventStore ? eventStore.append(appendRequest(request)) : append(request);
        })
        .then(
          ({ commit, prepare }) =>
            answer(
              stream,
              frame(
                toBinary(
                  WriteResultSchema,
                  create(WriteResultSchema, {
                    logPosition: { commitPosition: commit, preparePosition: prepare },
                  }),
                ),
              ),
            ),
          (error: unknown) => {
            console.error(error);
            stream.close(2);
          },
        );
    }
    if (!pool) return answer(stream, saved);
    pool.query({ ...insert, values: [randomUUID()] }).then(
      () => answer(stream, saved),
      () => stream.close(2),
    );
  });
});
server.listen(Number(process.env.PORT), "127.0.0.1");

// An exit rather than death by signal, so that a --cpu-prof profile gets written.
process.once("SIGTERM", async () => {
  server.close();
  await database?.db.destroy();
  await eventStore?.close();
  await pool
    ?.query(orisun ? `DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE` : `DROP TABLE IF EXISTS ${TABLE}`)
    .catch(() => {});
  await pool?.end();
  process.exit(0);
});
