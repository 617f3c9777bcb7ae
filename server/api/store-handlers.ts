import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type EventStore,
  GetEventsResponseSchema,
  WriteResultSchema,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { toProtoEvent, toProtoPosition } from "./convert.js";
import type { ApiDeps } from "./deps.js";
import { toAppendRequest, toReadRequest } from "./validate.js";

/** SaveEvents and GetEvents: validate, call the store, convert. */
export function storeHandlers(
  deps: ApiDeps,
): Pick<ServiceImpl<typeof EventStore>, "saveEvents" | "getEvents"> {
  return {
    async saveEvents(request) {
      const position = await deps.store.append(toAppendRequest(request, deps.validation));
      return create(WriteResultSchema, { logPosition: toProtoPosition(position) });
    },
    async getEvents(request) {
      const events = await deps.store.read(toReadRequest(request, deps.validation));
      return create(GetEventsResponseSchema, { events: events.map(toProtoEvent) });
    },
  };
}
