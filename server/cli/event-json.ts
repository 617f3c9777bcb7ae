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

/** The JSON names protobuf accepts for each field: its lowerCamel name and its proto name. */
const FIELDS: Record<string, keyof EventJson> = {
  eventId: "eventId",
  event_id: "eventId",
  eventType: "eventType",
  event_type: "eventType",
  tags: "tags",
  data: "data",
  metadata: "metadata",
  position: "position",
  dateCreated: "dateCreated",
  date_created: "dateCreated",
  boundary: "boundary",
};

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

function known(object: Record<string, unknown>, names: readonly string[], field: string): void {
  for (const key of Object.keys(object)) {
    if (!names.includes(key)) throw new Error(`${field}: unknown field "${key}"`);
  }
}

/** Parses one line as an Event in protobuf JSON, strictly: unknown fields and wrong types throw. */
export function eventFromJson(line: string): EventJson {
  const object: unknown = JSON.parse(line);
  if (!isObject(object)) throw new Error("must be a JSON object");
  const values: Partial<Record<keyof EventJson, unknown>> = {};
  for (const [key, value] of Object.entries(object)) {
    const field = FIELDS[key];
    if (field === undefined) throw new Error(`unknown field "${key}"`);
    if (values[field] !== undefined) throw new Error(`field "${field}" is given twice`);
    values[field] = value;
  }
  return {
    eventId: string(values.eventId, "eventId"),
    eventType: string(values.eventType, "eventType"),
    tags: tags(values.tags),
    data: string(values.data, "data"),
    metadata: string(values.metadata, "metadata"),
    position: position(values.position),
    dateCreated: timestamp(values.dateCreated),
    boundary: string(values.boundary, "boundary"),
  };
}

function tags(value: unknown): { key: string; value: string }[] {
  if (value === null || value === undefined) return [];
  if (!Array.isArray(value)) throw new Error("tags: must be an array");
  return value.map((tag: unknown, i) => {
    if (!isObject(tag)) throw new Error(`tags[${i}]: must be an object`);
    known(tag, ["key", "value"], `tags[${i}]`);
    return { key: string(tag.key, `tags[${i}].key`), value: string(tag.value, `tags[${i}].value`) };
  });
}

function position(value: unknown): EventJson["position"] {
  if (value === null || value === undefined) return undefined;
  if (!isObject(value)) throw new Error("position: must be an object");
  known(
    value,
    ["commitPosition", "commit_position", "preparePosition", "prepare_position"],
    "position",
  );
  return {
    commitPosition: uint64(
      value.commitPosition ?? value.commit_position,
      "position.commitPosition",
    ),
    preparePosition: uint64(
      value.preparePosition ?? value.prepare_position,
      "position.preparePosition",
    ),
  };
}

function timestamp(value: unknown): EventJson["dateCreated"] {
  if (value === null || value === undefined) return undefined;
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
