import { create } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { ImportEventsRequest } from "../../gen/orisun/v1/admin_pb.js";
import { EventToSaveSchema, SaveEventsRequestSchema } from "../../gen/orisun/v1/eventstore_pb.js";
import { quote, StoreError } from "../store/errors.js";
import type { ImportRequest } from "../store/import.js";
import type { Position } from "../store/types.js";
import { toAppendRequest, toPosition, type ValidationContext } from "./validate.js";

const invalid = (field: string, rule: string) => new StoreError("invalid", rule, field);

/** google.protobuf.Timestamp's own range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z. */
const MIN_SECONDS = -62_135_596_800n;
const MAX_SECONDS = 253_402_300_799n;

/**
 * Checks an ImportEvents request field by field, or throws StoreError naming the field and the
 * rule. Event fields follow SaveEvents' rules and limits; in addition every event carries its id,
 * position and date, and positions strictly increase: prepare_position always, commit_position
 * never going down (events of one commit share it). Their place above the head is the store's.
 */
export function toImportRequest(
  request: ImportEventsRequest,
  ctx: ValidationContext,
): ImportRequest {
  request.events.forEach((e, i) => {
    if (e.eventId === "") throw invalid(`events[${i}].event_id`, "must not be empty in an import");
    if (e.boundary !== "" && e.boundary !== request.boundary) {
      throw invalid(
        `events[${i}].boundary`,
        `must be empty or the request's boundary ${quote(request.boundary)}, got ${quote(e.boundary)}`,
      );
    }
  });
  const { boundary, events } = toAppendRequest(
    create(SaveEventsRequestSchema, {
      boundary: request.boundary,
      events: request.events.map((e) =>
        create(EventToSaveSchema, {
          eventId: e.eventId,
          eventType: e.eventType,
          tags: e.tags,
          data: e.data,
          metadata: e.metadata,
        }),
      ),
    }),
    ctx,
  );
  let previous: Position | undefined;
  return {
    boundary,
    events: events.map((event, i) => {
      const at = `events[${i}]`;
      const given = request.events[i];
      const position = toPosition(given?.position, `${at}.position`);
      if (position === undefined) throw invalid(`${at}.position`, "is required in an import");
      if (position.commit === 0n || position.prepare === 0n) {
        throw invalid(
          `${at}.position`,
          `commit_position and prepare_position must both be at least 1, got {${position.commit}, ${position.prepare}}`,
        );
      }
      if (previous !== undefined) {
        if (position.prepare <= previous.prepare || position.commit < previous.commit) {
          throw invalid(
            `${at}.position`,
            `must follow events[${i - 1}].position {${previous.commit}, ${previous.prepare}}: prepare_position strictly greater and commit_position not smaller, got {${position.commit}, ${position.prepare}}`,
          );
        }
      }
      previous = position;
      return { ...event, position, createdAt: isoDate(given?.dateCreated, `${at}.date_created`) };
    }),
  };
}

/** RFC 3339 with microseconds, the precision of timestamptz: finer nanos would be lost, so they are refused. */
function isoDate(date: Timestamp | undefined, field: string): string {
  if (date === undefined) throw invalid(field, "is required in an import");
  if (date.seconds < MIN_SECONDS || date.seconds > MAX_SECONDS) {
    throw invalid(
      field,
      `must lie from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, got ${date.seconds} seconds`,
    );
  }
  if (date.nanos < 0 || date.nanos > 999_999_999 || date.nanos % 1000 !== 0) {
    throw invalid(
      field,
      `nanos must be from 0 to 999999999 and a whole number of microseconds (the store keeps microseconds), got ${date.nanos}`,
    );
  }
  const whole = new Date(Number(date.seconds) * 1000).toISOString();
  return `${whole.slice(0, -5)}.${String(date.nanos / 1000).padStart(6, "0")}Z`;
}
