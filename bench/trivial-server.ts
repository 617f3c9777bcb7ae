/**
 * The reference for server CPU per call: connect-fastify on HTTP/2 cleartext with an EventStore
 * whose SaveEvents answers at once (no store, no checks, no interceptors, no logging), which is
 * what Node's HTTP/2, Fastify and Connect cost for one unary gRPC call on this machine. GetEvents
 * answers empty, for the bench's readiness probe. Listens on 127.0.0.1:$PORT.
 *
 * With PG_URL, SaveEvents first runs `SELECT 1` on PostgreSQL (a pool of 10): the same stack
 * plus the one database round trip an append cannot do without, so what a call costs before the
 * append does any work of its own.
 */
import { create } from "@bufbuild/protobuf";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import Fastify from "fastify";
import pg from "pg";
import {
  EventStore,
  GetEventsResponseSchema,
  WriteResultSchema,
} from "../gen/orisun/v1/eventstore_pb.js";

const saved = create(WriteResultSchema, {
  logPosition: { commitPosition: 1n, preparePosition: 1n },
});
const pool = process.env.PG_URL ? new pg.Pool({ connectionString: process.env.PG_URL }) : undefined;
const app = Fastify({ http2: true, logger: false });
await app.register(fastifyConnectPlugin, {
  routes: (router) =>
    router.service(EventStore, {
      saveEvents: pool
        ? async () => {
            await pool.query("SELECT 1");
            return saved;
          }
        : () => saved,
      getEvents: () => create(GetEventsResponseSchema),
    }),
});
await app.listen({ host: "127.0.0.1", port: Number(process.env.PORT) });
