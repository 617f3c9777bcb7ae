import type { Event } from "../../gen/orisun/v1/eventstore_pb.js";

/**
 * An Event in protobuf JSON, as the export writes it and the import reads it. Written by hand
 * because protobuf-es's reflective JSON (toJsonString / fromJsonString, which re-parses every
 * string to look for duplicate keys) took most of the CLI's time; the unit test holds both to
 * the same output and input as protobuf-es.
 */
export interface EventJson {
  readonly eventId: string;
  readonly eventType: string;
  readonly tags: { key: string; value: string }[];
  readonly data: string;
  readonly metadata: string;
  readonly position: { commitPosition: bigint; preparePosition: bigint } | undefined;
  readonly dateCreated: { seconds: bigint; nanos: number } | undefined;
  readonly boundary: string;
}

/** One line of the export: every field, defaults included (alwaysEmitImplicit). */
export function eventToJson(event: Event): string {
  const p = event.position;
  return JSON.stringify({
    eventId: event.eventId,
    eventType: event.eventType,
    tags: event.tags.map((t) => ({ key: t.key, value: t.value })),
    data: event.data,
    metadata: event.metadata,
    position:
      p === undefined
        ? undefined
        : { commitPosition: String(p.commitPosition), preparePosition: String(p.preparePosition) },
    dateCreated:
      event.dateCreated === undefined
        ? undefined
        : timestampToJson(event.dateCreated.seconds, event.dateCreated.nanos),
    boundary: event.boundary,
  });
}

/** Timestamp's own range, in ms: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z. */
const MIN_MS = -62_135_596_800_000;
const MAX_MS = 253_402_300_799_000;

function timestampToJson(seconds: bigint, nanos: number): string {
  const ms = Number(seconds) * 1000;
  if (ms < MIN_MS || ms > MAX_MS || nanos < 0 || nanos > 999_999_999) {
    throw new Error(`dateCreated {${seconds}s, ${nanos}ns} is outside google.protobuf.Timestamp`);
  }
  const whole = new Date(ms).toISOString().slice(0, -5);
  if (nanos === 0) return `${whole}Z`;
  const digits = String(nanos + 1_000_000_000).slice(1);
  if (digits.endsWith("000000")) return `${whole}.${digits.slice(0, 3)}Z`;
  if (digits.endsWith("000")) return `${whole}.${digits.slice(0, 6)}Z`;
  return `${whole}.${digits}Z`;
}

const MAX_UINT64 = 18_446_744_073_709_551_615n;
const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/;

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

function string(value: unknown, field: string): string {
  if (value === null || value === undefined) return "";
  if (typeof value !== "string") throw new Error(`${field}: must be a string`);
  return value;
}

function uint64(value: unknown, field: string): bigint {
  if (value === null || value === undefined) return 0n;
  if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) return BigInt(value);
  if (typeof value === "string" && /^\d{1,20}$/.test(value)) {
    const n = BigInt(value);
    if (n <= MAX_UINT64) return n;
  }
  throw new Error(`${field}: must be an unsigned 64-bit integer (a decimal string or number)`);
}

/**
 * Parses one line as an Event in protobuf JSON, strictly: unknown fields, a field given twice
 * (by its JSON and its proto name) and wrong types throw. Each field is accepted by its
 * lowerCamel name and its proto name, as protobuf's JSON parser does.
 */
export function eventFromJson(line: string): EventJson {
  const object: unknown = JSON.parse(line);
  if (!isObject(object)) throw new Error("must be a JSON object");
  let eventId: unknown;
  let eventType: unknown;
  let tagList: unknown;
  let data: unknown;
  let metadata: unknown;
  let at: unknown;
  let date: unknown;
  let boundary: unknown;
  let seen = 0;
  const once = (bit: number, field: string) => {
    if (seen & bit) throw new Error(`field "${field}" is given twice`);
    seen |= bit;
  };
  for (const key in object) {
    const value = object[key];
    switch (key) {
      case "eventId":
      case "event_id":
        once(1, "eventId");
        eventId = value;
        break;
      case "eventType":
      case "event_type":
        once(2, "eventType");
        eventType = value;
        break;
      case "tags":
        tagList = value;
        break;
      case "data":
        data = value;
        break;
      case "metadata":
        metadata = value;
        break;
      case "position":
        at = value;
        break;
      case "dateCreated":
      case "date_created":
        once(4, "dateCreated");
        date = value;
        break;
      case "boundary":
        boundary = value;
        break;
      default:
        throw new Error(`unknown field "${key}"`);
    }
  }
  return {
    eventId: string(eventId, "eventId"),
    eventType: string(eventType, "eventType"),
    tags: tags(tagList),
    data: string(data, "data"),
    metadata: string(metadata, "metadata"),
    position: position(at),
    dateCreated: timestamp(date),
    boundary: string(boundary, "boundary"),
  };
}

function tags(value: unknown): { key: string; value: string }[] {
  if (value === null || value === undefined) return [];
  if (!Array.isArray(value)) throw new Error("tags: must be an array");
  return value.map((tag: unknown, i) => {
    if (!isObject(tag)) throw new Error(`tags[${i}]: must be an object`);
    for (const key in tag) {
      if (key !== "key" && key !== "value") throw new Error(`tags[${i}]: unknown field "${key}"`);
    }
    return { key: string(tag.key, `tags[${i}].key`), value: string(tag.value, `tags[${i}].value`) };
  });
}

function position(value: unknown): EventJson["position"] {
  if (value === null || value === undefined) return undefined;
  if (!isObject(value)) throw new Error("position: must be an object");
  let commit: unknown;
  let prepare: unknown;
  for (const key in value) {
    switch (key) {
      case "commitPosition":
      case "commit_position":
        if (commit !== undefined)
          throw new Error('position: field "commitPosition" is given twice');
        commit = value[key];
        break;
      case "preparePosition":
      case "prepare_position":
        if (prepare !== undefined) {
          throw new Error('position: field "preparePosition" is given twice');
        }
        prepare = value[key];
        break;
      default:
        throw new Error(`position: unknown field "${key}"`);
    }
  }
  return {
    commitPosition: uint64(commit, "position.commitPosition"),
    preparePosition: uint64(prepare, "position.preparePosition"),
  };
}

/** The last date parsed: the events of one commit share theirs, and an export keeps them together. */
let lastDate: { text: string; value: NonNullable<EventJson["dateCreated"]> } | undefined;

function timestamp(value: unknown): EventJson["dateCreated"] {
  if (value === null || value === undefined) return undefined;
  if (value === lastDate?.text) return lastDate.value;
  const parsed = parseTimestamp(value);
  lastDate = { text: value as string, value: parsed };
  return parsed;
}

function parseTimestamp(value: unknown): NonNullable<EventJson["dateCreated"]> {
  const m = typeof value === "string" ? RFC3339.exec(value) : null;
  if (!m) throw new Error("dateCreated: must be an RFC 3339 date-time string");
  const ms = Date.parse(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}${m[8]}`);
  if (Number.isNaN(ms) || ms < MIN_MS || ms > MAX_MS) {
    throw new Error(
      "dateCreated: must be a valid date from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z",
    );
  }
  const fraction = m[7] ?? "";
  return {
    seconds: BigInt(ms / 1000),
    nanos: fraction === "" ? 0 : Number(fraction.padEnd(9, "0")),
  };
}
