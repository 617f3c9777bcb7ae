import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type Event,
  EventSchema,
  PositionSchema,
  type Position as ProtoPosition,
} from "../../gen/orisun/v1/eventstore_pb.js";
import type { Position, StoredEvent } from "../store/types.js";

export function toProtoPosition(position: Position): ProtoPosition {
  return create(PositionSchema, {
    commitPosition: position.commit,
    preparePosition: position.prepare,
  });
}

export function toProtoEvent(event: StoredEvent): Event {
  return create(EventSchema, {
    eventId: event.id,
    eventType: event.type,
    tags: event.tags.map((t) => ({ key: t.key, value: t.value })),
    data: event.data,
    metadata: event.metadata,
    position: toProtoPosition(event.position),
    dateCreated: timestampFromDate(event.createdAt),
    boundary: event.boundary,
  });
}
