import { create } from "@bufbuild/protobuf";
import {
  type ConsistencyCondition,
  ConsistencyConditionSchema,
  type Criterion,
  CriterionSchema,
  type EventToSave,
  EventToSaveSchema,
  type Position,
  PositionSchema,
  type Query,
  QuerySchema,
  type Tag,
  TagSchema,
} from "../../gen/orisun/v1/eventstore_pb.js";

/** Tags as a plain object (`{ user_id: "u-1" }`) or as a list of pairs (for repeated keys). */
export type TagsInput = Readonly<Record<string, string>> | readonly Readonly<Tag | TagPair>[];
export interface TagPair {
  readonly key: string;
  readonly value: string;
}

/** One criterion: an event matches when it has one of `types` (any, when empty) and all `tags`. */
export interface CriterionInput {
  readonly types?: readonly string[];
  readonly tags?: TagsInput;
}

/** A query: one criterion, or several (an event matches when any matches). Empty matches all. */
export type QueryInput = CriterionInput | readonly CriterionInput[];

/** A position as the API returns it, or as a pair of numbers/bigints/decimal strings. */
export type PositionInput =
  | Position
  | {
      readonly commitPosition: bigint | number | string;
      readonly preparePosition: bigint | number | string;
    };

/** An event to append; `data` and `metadata` are JSON values (serialized here). */
export interface EventInput {
  /** Unique in the boundary; omit for a server-made UUIDv7. Set it to make retries idempotent. */
  readonly id?: string;
  readonly type: string;
  readonly tags?: TagsInput;
  readonly data: unknown;
  readonly metadata?: unknown;
}

export function toTags(tags: TagsInput | undefined): Tag[] {
  if (tags === undefined) return [];
  const pairs = Array.isArray(tags)
    ? (tags as readonly TagPair[])
    : Object.entries(tags as Record<string, string>).map(([key, value]) => ({ key, value }));
  return pairs.map(({ key, value }, i) => {
    if (typeof value !== "string")
      throw new TypeError(`tags[${i}] (${key}): value must be a string, got ${typeof value}`);
    return create(TagSchema, { key, value });
  });
}

function toCriterion(input: CriterionInput): Criterion {
  return create(CriterionSchema, {
    eventTypes: [...(input.types ?? [])],
    tags: toTags(input.tags),
  });
}

/** `{ types: ["UserRegistered"], tags: { user_id: "u-1" } }` → a `Query` message. */
export function toQuery(input: QueryInput | Query | undefined): Query {
  if (input === undefined) return create(QuerySchema);
  if (isMessage(input, "orisun.v1.Query")) return input as Query;
  const criteria = Array.isArray(input) ? input : [input as CriterionInput];
  // An empty criterion ({}) would match everything anyway; leaving it out says so on the wire.
  return create(QuerySchema, {
    criteria: criteria
      .filter((c) => (c.types?.length ?? 0) > 0 || toTags(c.tags).length > 0)
      .map(toCriterion),
  });
}

export function toPosition(input: PositionInput): Position {
  const big = (v: bigint | number | string, field: string) => {
    try {
      const n = BigInt(v);
      if (n < 0n) throw new RangeError();
      return n;
    } catch {
      throw new TypeError(`${field}: must be a non-negative integer, got ${String(v)}`);
    }
  };
  return create(PositionSchema, {
    commitPosition: big(input.commitPosition, "commitPosition"),
    preparePosition: big(input.preparePosition, "preparePosition"),
  });
}

/**
 * The DCB condition "fail if an event matching `query` exists after `after`".
 * Without `after` (nothing seen yet) it fails if any matching event exists.
 */
export function toCondition(
  query: QueryInput | Query,
  after: PositionInput | undefined,
): ConsistencyCondition {
  return create(ConsistencyConditionSchema, {
    criteria: toQuery(query),
    consistencyMarker: after === undefined ? undefined : toPosition(after),
  });
}

export function toEventToSave(input: EventInput, index = 0): EventToSave {
  const json = (value: unknown, field: string): string => {
    let text: string | undefined;
    try {
      text = JSON.stringify(value);
    } catch (error) {
      throw new TypeError(`events[${index}].${field}: not serializable as JSON: ${String(error)}`);
    }
    if (text === undefined)
      throw new TypeError(`events[${index}].${field}: must be a JSON value, got ${typeof value}`);
    return text;
  };
  return create(EventToSaveSchema, {
    eventId: input.id ?? "",
    eventType: input.type,
    tags: toTags(input.tags),
    data: json(input.data, "data"),
    metadata: input.metadata === undefined ? "" : json(input.metadata, "metadata"),
  });
}

/** Orders positions as the log does: by commit position, then prepare position. */
export function comparePositions(a: Position, b: Position): number {
  if (a.commitPosition !== b.commitPosition) return a.commitPosition < b.commitPosition ? -1 : 1;
  if (a.preparePosition !== b.preparePosition)
    return a.preparePosition < b.preparePosition ? -1 : 1;
  return 0;
}

/** `"12:34"`: commit and prepare position, as the console shows them. */
export function formatPosition(p: Position | undefined): string {
  return p === undefined ? "start" : `${p.commitPosition}:${p.preparePosition}`;
}

function isMessage(value: unknown, typeName: string): boolean {
  return typeof value === "object" && value !== null && "$typeName" in value
    ? (value as { $typeName: string }).$typeName === typeName
    : false;
}
