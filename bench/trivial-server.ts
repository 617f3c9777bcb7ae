/**
 * The reference for server CPU per call: connect-fastify on HTTP/2 cleartext with an EventStore
 * whose SaveEvents answers at once (no store, no checks, no interceptors, no logging), which is
 * what Node's HTTP/2, Fastify and Connect cost for one unary gRPC call on this machine. GetEvents
 * answers empty, for the bench's readiness probe. Listens on 127.0.0.1:$PORT.
 *
 * With PG_URL, SaveEvents first runs `SELECT 1` on PostgreSQL (a pool of 10): the same stack
 * plus the one database round trip an append cannot do without, so what a call costs before the
 * append does any work of its own.
 *
 * With NATS_URL as well, SaveEvents then publishes the request's first event to a JetStream
 * stream of its own, without a reply subject, as Orisun's publisher sends 31 of every 32
 * messages (JetStream stores it without answering): what a lone append on PostgreSQL + NATS
 * cannot do without (stored, then on the live stream), and nothing else. The stream is deleted
 * on SIGTERM.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import Fastify from "fastify";
import pg from "pg";
import {
  EventStore,
  EventToSaveSchema,
  GetEventsResponseSchema,
  WriteResultSchema,
} from "../gen/orisun/v1/eventstore_pb.js";

const saved = create(WriteResultSchema, {
  logPosition: { commitPosition: 1n, preparePosition: 1n },
});
const pool = process.env.PG_URL ? new pg.Pool({ connectionString: process.env.PG_URL }) : undefined;
const STREAM = `ORISUN_BENCH_FLOOR_${process.pid}`;
const SUBJECT = `orisun_bench_floor_${process.pid}`;
const nc = process.env.NATS_URL ? await connect({ servers: process.env.NATS_URL }) : undefined;
const jsm = nc && (await jetstreamManager(nc));
await jsm?.streams.add({ name: STREAM, subjects: [SUBJECT] });
// An exit rather than death by signal, so that a --cpu-prof profile gets written.
process.once("SIGTERM", async () => {
  await jsm?.streams.delete(STREAM).catch(() => {});
  await nc?.close();
  process.exit(0);
});

const app = Fastify({ http2: true, logger: false });
await app.register(fastifyConnectPlugin, {
  routes: (router) =>
    router.service(EventStore, {
      saveEvents: pool
        ? async (req) => {
            await pool.query("SELECT 1");
            const event = req.events[0] ?? create(EventToSaveSchema);
            nc?.publish(SUBJECT, toBinary(EventToSaveSchema, event));
            return saved;
          }
        : () => saved,
      getEvents: () => create(GetEventsResponseSchema),
    }),
});
await app.listen({ host: "127.0.0.1", port: Number(process.env.PORT) });
