import { create, toBinary } from "@bufbuild/protobuf";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { type Event, EventSchema } from "../../gen/orisun/v1/eventstore_pb.js";
import type { StoredEvent } from "../store/types.js";
import { toProtoEvent } from "./convert.js";

/** How many times live events were converted and serialised (for tests and metrics). */
export interface EncodingCounts {
  /** Protobuf messages built from stored events. */
  messages: number;
  /** Binary serialisations. */
  binary: number;
}

/**
 * The wire forms of live events, made once per event and shared by every subscriber it goes to.
 * A feed hands the same StoredEvent object to each of its members, so the forms are kept in
 * WeakMaps keyed by it and go when the last subscriber has sent it.
 *
 * Connect serialises each streamed message per call, with no hook to hand it bytes. In the
 * binary formats (gRPC, gRPC-Web, Connect with protobuf) a message's unknown fields are written
 * as they are, after its known ones: a message whose fields are all unset and whose one "unknown
 * field" is the event's encoding (its first tag, then the rest of the bytes as they are) is
 * written as exactly those bytes, a copy instead of an encoding. JSON offers nothing of the kind:
 * there the protobuf message is built once and serialised per call.
 */
export class LiveEncodings {
  private readonly messages = new WeakMap<StoredEvent, Event>();
  private readonly encoded = new WeakMap<StoredEvent, Event>();
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

  private binaryForm(event: StoredEvent): Event {
    let shell = this.encoded.get(event);
    if (!shell) {
      const bytes = toBinary(EventSchema, this.message(event));
      this.counts.binary++;
      shell = create(EventSchema);
      if (bytes.length > 0) {
        const reader = new BinaryReader(bytes);
        const [no, wireType] = reader.tag();
        shell.$unknown = [{ no, wireType, data: bytes.subarray(reader.pos) }];
      }
      this.encoded.set(event, shell);
    }
    return shell;
  }
}

/**
 * Whether a call's messages are serialised in protobuf's binary format, from its Content-Type:
 * gRPC (`application/grpc`, `+proto`), gRPC-Web likewise, and Connect streaming
 * (`application/connect+proto`). Anything else (`+json`) gets whole messages, which every format
 * serialises correctly.
 */
export function isBinaryCall(contentType: string | null): boolean {
  return contentType !== null && BINARY.test(contentType);
}

const BINARY = /^application\/(?:grpc|grpc-web|connect)(?:\+proto)?\s*(?:;|$)/i;
