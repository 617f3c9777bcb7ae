import { create } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import { createContextKey } from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerResponse } from "@connectrpc/connect/protocol";
import { type Event, EventSchema } from "../../gen/orisun/v1/eventstore_pb.js";
import type { StoredEvent } from "../store/types.js";
import { EncodeBuffer, writeEvent } from "./event-encoding.js";
import { isBinaryCall } from "./live-encoding.js";

/**
 * Many events in one pass through Connect's streaming pipeline, each still its own message on
 * the wire.
 *
 * Connect sends every message of a stream through a chain of async iterables (serialise,
 * envelope, compress, join, write): about 10 µs of CPU per message, most of what a catch-up
 * costs. In the binary formats a stream is a series of envelopes (a flag byte, a 32-bit length,
 * the message), so the handler writes the envelopes of a run of events itself and hands Connect
 * one carrier message holding them; the carrier's own envelope is taken off again just before
 * the response body reaches the socket, leaving exactly the envelopes a message-by-message
 * stream would have sent.
 *
 * The carrier is an Event whose only content is an unknown field with the largest field number
 * protobuf allows, which Event does not have: its serialisation is that field's tag and then the
 * envelopes as they are, so its envelope starts with a marker no real event's can.
 *
 * Only calls the wrapper admits are batched: binary formats whose response is not compressed
 * (their envelopes could not be taken apart). For those the wrapper drops the request's
 * accept-encoding, so Connect answers in identity: an event stream is many small messages, each
 * under Connect's 1 KiB compression threshold in the common case.
 */

/** Set by `withBatchedStreams` on calls whose handler may send carriers. */
export const kBatched = createContextKey(false, { description: "orisun.batchedStream" });

const MARKER_FIELD = 536_870_911; // 2^29 - 1
/** The carrier's serialisation starts with this: the tag of MARKER_FIELD, length-delimited. */
const MARKER = Uint8Array.of(0xfa, 0xff, 0xff, 0xff, 0x0f);
const ENVELOPE_HEADER = 5;

/** A carrier's envelopes are cut at this size (one larger event makes one larger carrier). */
export const BATCH_BYTES = 64 * 1024;

/**
 * Where every subscription of the process writes its envelopes: `carriers` runs to the end
 * without awaiting, and each carrier takes a copy, so one buffer serves them all.
 */
const scratch = new EncodeBuffer(BATCH_BYTES + 4 * 1024);

/**
 * Carriers of about BATCH_BYTES for `events`, in order, each holding their envelopes. `encoded`
 * gives an event's bytes made elsewhere (live events, encoded once for all their subscribers).
 */
export function carriers(
  events: readonly StoredEvent[],
  encoded?: (event: StoredEvent) => Uint8Array,
): Event[] {
  const out = scratch;
  out.length = 0;
  const result: Event[] = [];
  for (const event of events) {
    out.reserve(ENVELOPE_HEADER);
    const start = out.length;
    out.length += ENVELOPE_HEADER;
    let size: number;
    if (encoded) {
      const bytes = encoded(event);
      size = bytes.length;
      out.reserve(size);
      out.bytes.set(bytes, out.length);
      out.length += size;
    } else {
      size = writeEvent(out, event);
    }
    out.bytes[start] = 0;
    out.bytes.writeUInt32BE(size, start + 1);
    if (out.length >= BATCH_BYTES) result.push(carrier(out.take()));
  }
  if (out.length > 0) result.push(carrier(out.take()));
  return result;
}

function carrier(envelopes: Uint8Array): Event {
  const message = create(EventSchema);
  message.$unknown = [{ no: MARKER_FIELD, wireType: WireType.LengthDelimited, data: envelopes }];
  return message;
}

const REQUEST_ENCODING = ["grpc-encoding", "connect-content-encoding"];
const ACCEPT_ENCODING = ["grpc-accept-encoding", "connect-accept-encoding"];

/** Whether a call with these request headers can be batched: binary and not compressed. */
function batchable(header: Headers): boolean {
  if (!isBinaryCall(header.get("content-type"))) return false;
  return REQUEST_ENCODING.every((name) => {
    const value = header.get(name);
    return value === null || value === "identity";
  });
}

/**
 * `handler` with carriers unwrapped: for a batchable call, marks it (kBatched) and drops its
 * accept-encoding; every response body chunk that is a carrier's envelope loses that envelope.
 */
export function withBatchedStreams(handler: UniversalHandler): UniversalHandler {
  const wrapped = async (request: Parameters<UniversalHandler>[0]) => {
    const batched = request.contextValues !== undefined && batchable(request.header);
    if (batched) {
      for (const name of ACCEPT_ENCODING) request.header.delete(name);
      request.contextValues?.set(kBatched, true);
    }
    const response: UniversalServerResponse = await handler(request);
    const body = response.body;
    // Only an admitted call's handler sends carriers: the others' bodies pass untouched.
    if (!batched || body === undefined || body instanceof Uint8Array) return response;
    return { ...response, body: unwrap(body) };
  };
  return Object.assign(wrapped, {
    protocolNames: handler.protocolNames,
    service: handler.service,
    method: handler.method,
    requestPath: handler.requestPath,
    allowedMethods: handler.allowedMethods,
    supportedContentType: handler.supportedContentType,
  });
}

async function* unwrap(body: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
  for await (const chunk of body) yield isCarrier(chunk) ? chunk.subarray(CARRIER_HEADER) : chunk;
}

const CARRIER_HEADER = ENVELOPE_HEADER + MARKER.length;

/** One whole uncompressed data envelope (Connect joins one per chunk) whose message is a carrier. */
function isCarrier(chunk: Uint8Array): boolean {
  if (chunk.length <= CARRIER_HEADER || chunk[0] !== 0) return false;
  const length = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength).getUint32(1);
  if (length !== chunk.length - ENVELOPE_HEADER) return false;
  for (let i = 0; i < MARKER.length; i++) {
    if (chunk[ENVELOPE_HEADER + i] !== MARKER[i]) return false;
  }
  return true;
}
