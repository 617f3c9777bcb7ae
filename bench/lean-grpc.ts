/**
 * The bench's SaveEvents client: gRPC over one `node:http2` session per server, with the
 * project's generated protobuf codec, and nothing else. A load generator shares this machine's two
 * cores with the server, PostgreSQL and NATS, so every µs it spends per call is taken from what it
 * measures; pgbench's reference has a client written in C. Against the bare node:http2 handler,
 * @grpc/grpc-js (its channel, call stack, interceptors and protobufjs) spent 1.9–2.6× the CPU per
 * call of this one at 16 and 64 clients. BENCH_CLIENT=grpc-js puts grpc-js back.
 *
 * It is a complete unary call: the request framed as gRPC's length-prefixed message, the answer's
 * `grpc-status` read from the trailers (or from the headers of a trailers-only answer), a non-zero
 * status turned into an error carrying `grpc-message`, and the answer's message decoded.
 */
import { type ClientHttp2Session, connect } from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { SaveEventsRequestSchema, WriteResultSchema } from "../gen/orisun/v1/eventstore_pb.js";

/** The request and answer as @grpc/proto-loader presents them (worker.ts's shapes). */
export interface Position {
  commit_position: string;
  prepare_position: string;
}
interface Tag {
  key: string;
  value: string;
}
export interface EventToSave {
  event_id: string;
  event_type: string;
  tags: Tag[];
  data: string;
}
export interface SaveEvents {
  boundary: string;
  events: EventToSave[];
  consistency_condition?: {
    consistency_marker: Position;
    criteria: { criteria: { tags: Tag[] }[] };
  };
}
export type SaveEventsCall = (request: SaveEvents) => Promise<{ log_position: Position | null }>;

const PATH = "/orisun.v1.EventStore/SaveEvents";

export function leanSaveEvents(url: string, authorization?: string): SaveEventsCall {
  const headers = {
    ":method": "POST",
    ":path": PATH,
    "content-type": "application/grpc",
    te: "trailers",
    ...(authorization !== undefined && { authorization }),
  };
  let session: ClientHttp2Session | undefined;
  const open = () => {
    if (session && !session.closed && !session.destroyed) return session;
    const opened = connect(url);
    // A failed or lost connection fails its calls; the next call opens a new one.
    opened.on("error", () => {});
    opened.once("close", () => {
      if (session === opened) session = undefined;
    });
    session = opened;
    return opened;
  };
  return (request) => {
    const message = toBinary(
      SaveEventsRequestSchema,
      create(SaveEventsRequestSchema, init(request)),
    );
    const framed = Buffer.allocUnsafe(5 + message.length);
    framed[0] = 0;
    framed.writeUInt32BE(message.length, 1);
    framed.set(message, 5);
    return new Promise((resolve, reject) => {
      const stream = open().request(headers);
      const chunks: Buffer[] = [];
      let status: string | undefined;
      let detail: string | undefined;
      const read = (h: Record<string, unknown>) => {
        if (h["grpc-status"] !== undefined) status = String(h["grpc-status"]);
        if (h["grpc-message"] !== undefined) detail = decodeURIComponent(String(h["grpc-message"]));
      };
      stream.on("response", read);
      stream.on("trailers", read);
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("error", reject);
      stream.on("end", () => {
        if (status !== "0") {
          reject(new Error(`SaveEvents: grpc-status ${status ?? "missing"}: ${detail ?? ""}`));
          return;
        }
        const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
        if (body.length < 5 || body.readUInt32BE(1) !== body.length - 5) {
          reject(new Error(`SaveEvents: an answer of ${body.length} bytes is not one message`));
          return;
        }
        const position = fromBinary(WriteResultSchema, body.subarray(5)).logPosition;
        resolve({
          log_position: position
            ? {
                commit_position: String(position.commitPosition),
                prepare_position: String(position.preparePosition),
              }
            : null,
        });
      });
      stream.end(framed);
    });
  };
}

function init(request: SaveEvents) {
  const condition = request.consistency_condition;
  return {
    boundary: request.boundary,
    events: request.events.map((e) => ({
      eventId: e.event_id,
      eventType: e.event_type,
      tags: e.tags,
      data: e.data,
    })),
    consistencyCondition: condition && {
      consistencyMarker: {
        commitPosition: BigInt(condition.consistency_marker.commit_position),
        preparePosition: BigInt(condition.consistency_marker.prepare_position),
      },
      criteria: condition.criteria,
    },
  };
}
