import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type EventStore,
  GetEventsResponseSchema,
  WriteResultSchema,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { toProtoEvent, toProtoPosition } from "./convert.js";
import type { ApiDeps } from "./deps.js";
import { EncodeBuffer, preEncoded, writeEventsResponse } from "./event-encoding.js";
import { isBinaryCall } from "./live-encoding.js";
import { toAppendRequest, toReadRequest } from "./validate.js";

/** SaveEvents and GetEvents: validate, call the store, convert. */
export function storeHandlers(
  deps: ApiDeps,
): Pick<ServiceImpl<typeof EventStore>, "saveEvents" | "getEvents"> {
  return {
    // ctx.signal aborts on the client's deadline (grpc-timeout, connect-timeout-ms) or when it
    // goes away; Connect itself would wait for the handler, so the store must let go.
    async saveEvents(request, ctx) {
      const position = await deps.store.append(toAppendRequest(request, deps.validation), {
        signal: ctx.signal,
      });
      return create(WriteResultSchema, { logPosition: toProtoPosition(position) });
    },
    async getEvents(request, ctx) {
      const { events, head } = await deps.store.readAtHead(
        toReadRequest(request, deps.validation),
        { signal: ctx.signal },
      );
      if (isBinaryCall(ctx.requestHeader.get("content-type"))) {
        // Encoded here in one pass (event-encoding.ts), not built as messages for Connect.
        const out = new EncodeBuffer(Math.max(1024, events.length * 256));
        return preEncoded(GetEventsResponseSchema, writeEventsResponse(out, events, head));
      }
      return create(GetEventsResponseSchema, {
        events: events.map(toProtoEvent),
        head: toProtoPosition(head),
      });
    },
  };
}
