/**
 * The least a durable append can cost on this stack, for the 1-client reference: a bare
 * `node:http2` server that answers any gRPC call with one message frame and `grpc-status: 0`
 * trailers, with no Fastify, no Connect, no validation and no protobuf decoding of the request.
 * Listens on 127.0.0.1:$PORT.
 *
 * With PG_URL, SaveEvents first inserts one row (a uuid) into a lean table of its own, a bigserial
 * key and a unique uuid, with a named prepared statement in autocommit: one round trip and one
 * commit, the one thing an acknowledged append cannot skip. The table is dropped on SIGTERM.
 */
import { randomUUID } from "node:crypto";
import { createServer, type ServerHttp2Stream } from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import pg from "pg";
import { WriteResultSchema } from "../gen/orisun/v1/eventstore_pb.js";

const TABLE = `orisun_bench_bare_${process.pid}`;
const pool = process.env.PG_URL
  ? new pg.Pool({ connectionString: process.env.PG_URL, max: 64 })
  : undefined;
await pool?.query(
  `CREATE TABLE ${TABLE} (position bigserial PRIMARY KEY, id uuid NOT NULL UNIQUE)`,
);
const insert = { name: "bare_insert", text: `INSERT INTO ${TABLE} (id) VALUES ($1)` };

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
  stream.on("data", () => {});
  stream.once("end", () => {
    if (!saving) return answer(stream, empty);
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
  await pool?.query(`DROP TABLE IF EXISTS ${TABLE}`).catch(() => {});
  await pool?.end();
  process.exit(0);
});
