import { v7 as uuidv7 } from "uuid";
import type {
  GetEventsRequest,
  Position as ProtoPosition,
  Query as ProtoQuery,
  Tag as ProtoTag,
  SaveEventsRequest,
  SubscribeToEventStoreRequest,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { Direction } from "../../gen/orisun/v1/eventstore_pb.js";
import type { Limits } from "../config.js";
import { quote, StoreError } from "../store/errors.js";
import type {
  AppendRequest,
  EventToAppend,
  Position,
  Query,
  ReadRequest,
  Tag,
} from "../store/types.js";
import { MAX_POSITION_PART, START } from "../store/types.js";
import type { SubscribeRequest } from "../streaming/subscription.js";

/** Turns requests into store requests, or throws StoreError naming the field and the rule. */

const BOUNDARY = /^[a-z][a-z0-9_]{0,62}$/;
export const MAX_NAME_BYTES = 256;
/** In a `u` regex only an unpaired surrogate is a code point of category Cs. */
const LONE_SURROGATE = /\p{Cs}/u;
export const DEFAULT_COUNT = 100;
export const MAX_COUNT = 10_000;

export interface ValidationContext {
  readonly limits: Limits;
  /** The configured boundaries; undefined: any valid name. */
  readonly boundaries: readonly string[] | undefined;
}

const invalid = (field: string, rule: string) => new StoreError("invalid", rule, field);
const tooLarge = (field: string, rule: string) => new StoreError("too_large", rule, field);
const bytes = (s: string) => Buffer.byteLength(s, "utf8");

export function validateBoundary(boundary: string, ctx: ValidationContext): string {
  if (!BOUNDARY.test(boundary)) {
    throw invalid(
      "boundary",
      `must match ${BOUNDARY.source} (lowercase letter first, then up to 62 of a-z 0-9 _), got ${quote(boundary)}`,
    );
  }
  if (ctx.boundaries !== undefined && !ctx.boundaries.includes(boundary)) {
    throw invalid(
      "boundary",
      `${quote(boundary)} is not one of the configured boundaries (${ctx.boundaries.join(", ")})`,
    );
  }
  return boundary;
}

export function text(value: string, field: string, maxBytes: number, allowEmpty = false): string {
  if (!allowEmpty && value === "") throw invalid(field, "must not be empty");
  if (value.includes("\u0000")) throw invalid(field, "must not contain the NUL character");
  if (LONE_SURROGATE.test(value))
    throw invalid(field, "must be well-formed Unicode (no lone surrogate)");
  if (bytes(value) > maxBytes) throw tooLarge(field, `must be at most ${maxBytes} bytes of UTF-8`);
  return value;
}

export function tags(list: readonly ProtoTag[], field: string, ctx: ValidationContext): Tag[] {
  if (list.length > ctx.limits.maxTagsPerEvent) {
    throw tooLarge(
      field,
      `must have at most ${ctx.limits.maxTagsPerEvent} tags, got ${list.length}`,
    );
  }
  return list.map((t, i) => ({
    key: text(t.key, `${field}[${i}].key`, ctx.limits.maxTagBytes),
    value: text(t.value, `${field}[${i}].value`, ctx.limits.maxTagBytes, true),
  }));
}

export function toPosition(
  position: ProtoPosition | undefined,
  field: string,
): Position | undefined {
  if (position === undefined) return undefined;
  for (const [name, value] of [
    ["commit_position", position.commitPosition],
    ["prepare_position", position.preparePosition],
  ] as const) {
    if (value > MAX_POSITION_PART) {
      throw invalid(
        `${field}.${name}`,
        `must be at most ${MAX_POSITION_PART} (2^63-1, the largest position the log can hold), got ${value}`,
      );
    }
  }
  return { commit: position.commitPosition, prepare: position.preparePosition };
}

export function toQuery(
  query: ProtoQuery | undefined,
  field: string,
  ctx: ValidationContext,
): Query {
  const criteria = query?.criteria ?? [];
  if (criteria.length > ctx.limits.maxCriteria) {
    throw tooLarge(
      `${field}.criteria`,
      `must have at most ${ctx.limits.maxCriteria} criteria, got ${criteria.length}`,
    );
  }
  return criteria.map((c, i) => {
    const at = `${field}.criteria[${i}]`;
    if (c.tags.length === 0 && c.eventTypes.length === 0) {
      throw invalid(
        at,
        "a criterion needs tags, event_types or both (to match every event, send no criteria)",
      );
    }
    if (c.eventTypes.length > ctx.limits.maxCriteria) {
      throw tooLarge(
        `${at}.event_types`,
        `must have at most ${ctx.limits.maxCriteria} types, got ${c.eventTypes.length}`,
      );
    }
    return {
      types: c.eventTypes.map((t, j) => text(t, `${at}.event_types[${j}]`, MAX_NAME_BYTES)),
      tags: tags(c.tags, `${at}.tags`, ctx),
    };
  });
}

export function json(value: string, field: string, allowEmpty: boolean, maxBytes: number): string {
  if (value === "") {
    if (allowEmpty) return value;
    throw invalid(field, "must be non-empty JSON text");
  }
  if (bytes(value) > maxBytes) throw tooLarge(field, `must be at most ${maxBytes} bytes of UTF-8`);
  if (LONE_SURROGATE.test(value))
    throw invalid(field, "must be well-formed Unicode (no lone surrogate)");
  try {
    JSON.parse(value);
  } catch (error) {
    throw invalid(field, `must be JSON text (${(error as Error).message})`);
  }
  if (nesting(value) > MAX_JSON_DEPTH) {
    throw invalid(field, `must nest arrays and objects at most ${MAX_JSON_DEPTH} levels deep`);
  }
  return value;
}

/** PostgreSQL's JSON parser recurses; far deeper nesting than any real event exhausts its stack. */
const MAX_JSON_DEPTH = 512;

function nesting(json: string): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i);
    if (inString) {
      if (c === 92)
        i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 91 || c === 123) deepest = Math.max(deepest, ++depth);
    else if (c === 93 || c === 125) depth--;
  }
  return deepest;
}

export function toAppendRequest(request: SaveEventsRequest, ctx: ValidationContext): AppendRequest {
  const boundary = validateBoundary(request.boundary, ctx);
  const { maxEventsPerSave, maxEventDataBytes } = ctx.limits;
  if (request.events.length === 0) throw invalid("events", "must contain at least one event");
  if (request.events.length > maxEventsPerSave) {
    throw tooLarge(
      "events",
      `must contain at most ${maxEventsPerSave} events, got ${request.events.length}`,
    );
  }
  const seen = new Map<string, number>();
  const events = request.events.map((e, i): EventToAppend => {
    const at = `events[${i}]`;
    const id = e.eventId === "" ? uuidv7() : text(e.eventId, `${at}.event_id`, MAX_NAME_BYTES);
    const first = seen.get(id);
    if (first !== undefined)
      throw invalid(`${at}.event_id`, `duplicates events[${first}].event_id ${quote(id)}`);
    seen.set(id, i);
    return {
      id,
      type: text(e.eventType, `${at}.event_type`, MAX_NAME_BYTES),
      tags: tags(e.tags, `${at}.tags`, ctx),
      data: json(e.data, `${at}.data`, false, maxEventDataBytes),
      metadata: json(e.metadata, `${at}.metadata`, true, maxEventDataBytes),
    };
  });
  const condition = request.consistencyCondition;
  return {
    boundary,
    events,
    condition:
      condition === undefined
        ? undefined
        : {
            after: toPosition(
              condition.consistencyMarker,
              "consistency_condition.consistency_marker",
            ) ?? {
              commit: 0n,
              prepare: 0n,
            },
            query: toQuery(condition.criteria, "consistency_condition.criteria", ctx),
          },
  };
}

export function toReadRequest(request: GetEventsRequest, ctx: ValidationContext): ReadRequest {
  const boundary = validateBoundary(request.boundary, ctx);
  if (request.direction !== Direction.ASC && request.direction !== Direction.DESC) {
    throw invalid("direction", `must be ASC (0) or DESC (1), got ${request.direction}`);
  }
  return {
    boundary,
    query: toQuery(request.criteria, "criteria", ctx),
    from: toPosition(request.fromPosition, "from_position"),
    count: request.count === 0 ? DEFAULT_COUNT : Math.min(request.count, MAX_COUNT),
    direction: request.direction === Direction.ASC ? "asc" : "desc",
    maxBytes: ctx.limits.maxReadBytes,
  };
}

const SUBSCRIBER_NAME = /^[A-Za-z0-9_.-]{1,128}$/;

export function toSubscribeRequest(
  request: SubscribeToEventStoreRequest,
  ctx: ValidationContext,
): SubscribeRequest {
  const boundary = validateBoundary(request.boundary, ctx);
  if (request.subscriberName !== "" && !SUBSCRIBER_NAME.test(request.subscriberName)) {
    throw invalid(
      "subscriber_name",
      `must be empty or match ${SUBSCRIBER_NAME.source} (1 to 128 of A-Z a-z 0-9 _ . -), got ${quote(request.subscriberName)}`,
    );
  }
  return {
    boundary,
    query: toQuery(request.criteria, "criteria", ctx),
    after: toPosition(request.afterPosition, "after_position") ?? START,
    subscriberName: request.subscriberName,
  };
}
