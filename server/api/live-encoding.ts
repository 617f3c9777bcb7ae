import { type Event, EventSchema } from "../../gen/orisun/v1/eventstore_pb.js";
import type { StoredEvent } from "../store/types.js";
import { toProtoEvent } from "./convert.js";
import { EncodeBuffer, preEncoded, writeEvent } from "./event-encoding.js";

/** How many times live events were converted and serialised (for tests and metrics). */
export interface EncodingCounts {
  /** Protobuf messages built from stored events. */
  messages: number;
  /** Binary serialisations. */
  binary: number;
}

/**
 * The wire forms of live events, made once per event and shared by every subscriber it goes to:
 * the encoding (batched calls copy it into their envelopes, see batched-stream.ts), a shell
 * message that Connect writes as that encoding for binary calls that are not batched, the message
 * for JSON.
 * A feed hands the same StoredEvent object to each of its members, so the forms are kept in
 * WeakMaps keyed by it and go when the last subscriber has sent it.
 *
 * Connect serialises each streamed message per call, with no hook to hand it bytes: the shell
 * (`preEncoded`) is written as a copy of the encoding instead. JSON offers nothing of the kind:
 * there the protobuf message is built once and serialised per call.
 */
export class LiveEncodings {
  private readonly messages = new WeakMap<StoredEvent, Event>();
  private readonly encoded = new WeakMap<StoredEvent, Event>();
  private readonly binary = new WeakMap<StoredEvent, Uint8Array>();
  private readonly scratch = new EncodeBuffer(4 * 1024);
  readonly counts: EncodingCounts = { messages: 0, binary: 0 };

  /** The event for a call in the given wire format. */
  forCall(event: StoredEvent, binary: boolean): Event {
    return binary ? this.binaryForm(event) : this.message(event);
  }

  private message(event: StoredEvent): Event {
    let message = this.messages.get(event);
    if (!message) {
      message = toProtoEvent(event);
      this.counts.messages++;
      this.messages.set(event, message);
    }
    return message;
  }

  /** The event's encoding in protobuf's binary format. */
  bytes(event: StoredEvent): Uint8Array {
    let bytes = this.binary.get(event);
    if (!bytes) {
      writeEvent(this.scratch, event);
      bytes = this.scratch.take();
      this.counts.binary++;
      this.binary.set(event, bytes);
    }
    return bytes;
  }

  private binaryForm(event: StoredEvent): Event {
    let shell = this.encoded.get(event);
    if (!shell) {
      shell = preEncoded(EventSchema, this.bytes(event));
      this.encoded.set(event, shell);
    }
    return shell;
  }
}

/**
 * Whether a call's messages are serialised in protobuf's binary format, from its Content-Type:
 * gRPC (`application/grpc`, `+proto`), gRPC-Web likewise, Connect streaming
 * (`application/connect+proto`) and Connect unary (`application/proto`). Anything else (`+json`,
 * a Connect GET without a body) gets whole messages, which every format serialises correctly.
 */
export function isBinaryCall(contentType: string | null): boolean {
  return contentType !== null && BINARY.test(contentType);
}

const BINARY = /^application\/(?:(?:grpc|grpc-web|connect)(?:\+proto)?|proto)\s*(?:;|$)/i;
