import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { ImportEventsRequest } from "../../gen/orisun/v1/admin_pb.js";
import { quote, StoreError } from "../store/errors.js";
import type { ImportRequest } from "../store/import.js";
import type { Position } from "../store/types.js";
import {
  json,
  MAX_NAME_BYTES,
  tags,
  text,
  toPosition,
  type ValidationContext,
  validateBoundary,
} from "./validate.js";

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
  const boundary = validateBoundary(request.boundary, ctx);
  const { maxEventsPerSave, maxEventDataBytes } = ctx.limits;
  if (request.events.length === 0) throw invalid("events", "must contain at least one event");
  if (request.events.length > maxEventsPerSave) {
    throw new StoreError(
      "too_large",
      `must contain at most ${maxEventsPerSave} events (ORISUN_MAX_EVENTS_PER_SAVE), got ${request.events.length}`,
      "events",
    );
  }
  const seen = new Map<string, number>();
  let previous: Position | undefined;
  return {
    boundary,
    events: request.events.map((e, i) => {
      const at = `events[${i}]`;
      if (e.eventId === "") throw invalid(`${at}.event_id`, "must not be empty in an import");
      const id = text(e.eventId, `${at}.event_id`, MAX_NAME_BYTES);
      const first = seen.get(id);
      if (first !== undefined) {
        throw invalid(`${at}.event_id`, `duplicates events[${first}].event_id ${quote(id)}`);
      }
      seen.set(id, i);
      if (e.boundary !== "" && e.boundary !== boundary) {
        throw invalid(
          `${at}.boundary`,
          `must be empty or the request's boundary ${quote(boundary)}, got ${quote(e.boundary)}`,
        );
      }
      const position = toPosition(e.position, `${at}.position`);
      if (position === undefined) throw invalid(`${at}.position`, "is required in an import");
      if (position.commit === 0n || position.prepare === 0n) {
        throw invalid(
          `${at}.position`,
          `commit_position and prepare_position must both be at least 1, got {${position.commit}, ${position.prepare}}`,
        );
      }
      if (
        previous !== undefined &&
        (position.prepare <= previous.prepare || position.commit < previous.commit)
      ) {
        throw invalid(
          `${at}.position`,
          `must follow events[${i - 1}].position {${previous.commit}, ${previous.prepare}}: prepare_position strictly greater and commit_position not smaller, got {${position.commit}, ${position.prepare}}`,
        );
      }
      previous = position;
      return {
        id,
        type: text(e.eventType, `${at}.event_type`, MAX_NAME_BYTES),
        tags: tags(e.tags, `${at}.tags`, ctx),
        data: json(e.data, `${at}.data`, false, maxEventDataBytes),
        metadata: json(e.metadata, `${at}.metadata`, true, maxEventDataBytes),
        position,
        createdAt: createdAt(e.dateCreated, `${at}.date_created`),
      };
    }),
  };
}

/** Whole seconds and microseconds, the precision of timestamptz: finer nanos are refused, not lost. */
function createdAt(date: Timestamp | undefined, field: string): EventDate {
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
  return { seconds: date.seconds, micros: date.nanos / 1000 };
}

type EventDate = ImportRequest["events"][number]["createdAt"];
