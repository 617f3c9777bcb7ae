import { type DescField, type DescMessage, ScalarType } from "@bufbuild/protobuf";
import { hasCustomJsonRepresentation } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  CreateApiKeyRequestSchema,
  CreateUserRequestSchema,
  ImportEventsRequestSchema,
} from "../../gen/orisun/v1/admin_pb.js";
import {
  CriterionSchema,
  EventSchema,
  EventToSaveSchema,
  QuerySchema,
  ReadForDecisionRequestSchema,
  SaveEventsRequestSchema,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { MAX_GRANTS } from "../auth/grants.js";
import type { Limits } from "../config.js";

/**
 * Counts the entries of a request message's lists and maps from its bytes, before it is decoded,
 * and refuses a message that holds more than the validator would accept. Why: protobuf-es decodes
 * the whole message before validate.ts can see that `events` holds 2,000,000 entries (about 1 s
 * and 300 MB for a 4 MiB body); this scan allocates nothing per entry.
 *
 * A refusal reads as the validator's for the same field (path `events[3].tags`, rule, code, and
 * the count of that occurrence). With several limits broken, the first passed in the bytes is
 * reported, which need not be the one the validator checks first.
 *
 * Bytes protobuf-es cannot read are left to it (the scan stops and returns), unless a limit was
 * already passed before them ("got at least N"): protobuf-es decodes everything up to them.
 */

/** A limit on the entries of one list or map field, worded and coded as the validator does. */
export interface CountRule {
  readonly max: number;
  readonly code: Code;
  /** The rule, without the field: `must have at most 64 tags, got ${got}`; `got` may read "at least 70". */
  readonly rule: (got: string) => string;
}

/** A limit on the entries of one field summed over a whole request (ReadForDecision's criteria). */
export interface TotalRule extends CountRule {
  /** The request message the total is taken over; the rule applies only with it as the root. */
  readonly within: DescMessage;
  /** The list field whose entries are added up, at any depth. */
  readonly counted: DescField;
  /** The field the validator names in its message. */
  readonly field: string;
}

export interface CountLimits {
  /** The validator's limit on each list field it limits. */
  readonly fields: ReadonlyMap<DescField, CountRule>;
  readonly totals: readonly TotalRule[];
  /** Any list or map field the validator does not limit. */
  readonly otherLists: CountRule;
  /** Unknown fields (binary) or values outside the schema (JSON) in one request, at any depth. */
  readonly maxUnknown: number;
}

/** Orisun's requests nest 5 deep; only a recursive type (Struct) goes deeper (protobuf-es: 100). */
export const MAX_MESSAGE_DEPTH = 32;
/** JSON arrays and objects nested beyond this are refused: a request nests at most 8 deep. */
export const MAX_JSON_NESTING = 64;
/** A list or map the validator does not limit (none today): its largest default limit. */
export const OTHER_LIST_MAX = 10_000;
/**
 * Unknown fields in one request, at any depth, together (a cap per message would multiply with the
 * messages); a newer client may still send a new field on each of 10,000 events. In JSON: what
 * JSON.parse builds outside the schema.
 */
export const MAX_UNKNOWN_FIELDS = 10_000;

/** The count limits of validate.ts, validate-decision.ts, import-validate.ts and grants.ts. */
export function countLimitsOf(limits: Limits): CountLimits {
  const { maxEventsPerSave: events, maxTagsPerEvent: tags, maxCriteria: criteria } = limits;
  const rule = (max: number, text: string, code = Code.ResourceExhausted): CountRule => ({
    max,
    code,
    rule: (got) => `${text}, got ${got}`,
  });
  const most = (max: number, what: string) => rule(max, `must have at most ${max} ${what}`);
  const grants = rule(MAX_GRANTS, `at most ${MAX_GRANTS} grants`, Code.InvalidArgument);
  const criteriaField = fieldOf(QuerySchema, "criteria");
  const allEvents = `must contain at most ${events} events`;
  return {
    fields: new Map<DescField, CountRule>([
      [fieldOf(SaveEventsRequestSchema, "events"), rule(events, allEvents)],
      [fieldOf(EventToSaveSchema, "tags"), most(tags, "tags")],
      [criteriaField, most(criteria, "criteria")],
      [fieldOf(CriterionSchema, "event_types"), most(criteria, "types")],
      [fieldOf(CriterionSchema, "tags"), most(tags, "tags")],
      [
        fieldOf(ReadForDecisionRequestSchema, "queries"),
        rule(criteria, `must contain at most ${criteria} queries (ORISUN_MAX_CRITERIA)`),
      ],
      [
        fieldOf(ImportEventsRequestSchema, "events"),
        rule(events, `${allEvents} (ORISUN_MAX_EVENTS_PER_SAVE)`),
      ],
      [fieldOf(EventSchema, "tags"), most(tags, "tags")],
      [fieldOf(CreateUserRequestSchema, "grants"), grants],
      [fieldOf(CreateApiKeyRequestSchema, "grants"), grants],
    ]),
    totals: [
      {
        ...most(criteria, "criteria in all queries together (ORISUN_MAX_CRITERIA)"),
        within: ReadForDecisionRequestSchema,
        counted: criteriaField,
        field: "queries",
      },
    ],
    otherLists: most(OTHER_LIST_MAX, "entries"),
    maxUnknown: MAX_UNKNOWN_FIELDS,
  };
}

/** A field by its proto name; a missing one is a mistake in this file, found at start-up. */
function fieldOf(schema: DescMessage, name: string): DescField {
  const field = schema.fields.find((f) => f.name === name);
  if (field === undefined) throw new Error(`${schema.typeName} has no field ${name}`);
  return field;
}

/** Refuses a binary message over `limits`; `at` prefixes paths (`messages[2]` in ImportEvents). */
export function checkBinaryCounts(
  schema: DescMessage,
  bytes: Uint8Array,
  limits: CountLimits,
  at = "",
): void {
  new WireScan(bytes, schema, limits, at).check();
}

const encoder = new TextEncoder();

/**
 * The same for a JSON body, with nothing allocated per value: fields by proto or JSON name, maps
 * as objects; what JSON.parse would build outside the schema counts towards `limits.maxUnknown`.
 */
export function checkJsonCounts(
  schema: DescMessage,
  text: Uint8Array | string,
  limits: CountLimits,
  at = "",
): void {
  const bytes = typeof text === "string" ? encoder.encode(text) : text;
  new JsonScan(bytes, schema, limits, at).check();
}

/** Thrown inside a scan where protobuf-es would fail too; never leaves this file. */
const MALFORMED = new Error("malformed");

// ---------------------------------------------------------------------------------------------
// Plans: what the scans need of a message's descriptor, computed once per message and limits.

/** How a field's values are laid out. */
const SINGULAR = 0;
const LIST = 1;
const MAP = 2;
/** How one value is read (the field's type decides, as in protobuf-es): fixed sizes are 4 and 8. */
const VARINT = 0;
const LEN = -1;

interface FieldPlan {
  readonly name: string;
  readonly shape: number;
  /** A value's reading (a map's values'), and a map key's. */
  readonly read: number;
  readonly keyRead: number;
  /** The message of a message field, list or map value. */
  readonly child: MessagePlan | undefined;
  /** In the parent's region: a list's or map's count, or a singular message's region + 1. */
  readonly slot: number;
  readonly limit: CountRule;
  /** The total (index into CountLimits.totals) its entries add to, or -1. */
  readonly total: number;
}

interface MessagePlan {
  readonly typeName: string;
  /** Protobuf-es reads its JSON in its own way (Timestamp, Struct…): free JSON to this scan. */
  readonly customJson: boolean;
  /** Fields by number, for numbers below DENSE_NUMBERS. */
  readonly byNumber: (FieldPlan | undefined)[];
  readonly byLargeNumber: Map<number, FieldPlan>;
  /** Proto names and JSON names. */
  readonly keys: { readonly key: string; readonly field: FieldPlan }[];
  /** The slots of an occurrence's region. */
  size: number;
}

const DENSE_NUMBERS = 256;
const plansByLimits = new WeakMap<CountLimits, Map<DescMessage, MessagePlan>>();

/** The plan of a message and of every message it holds (registered first: types may recurse). */
function planOf(limits: CountLimits, desc: DescMessage): MessagePlan {
  const plans = plansByLimits.get(limits) ?? new Map<DescMessage, MessagePlan>();
  plansByLimits.set(limits, plans);
  const known = plans.get(desc);
  if (known !== undefined) return known;
  const plan: MessagePlan = {
    typeName: desc.typeName,
    customJson: hasCustomJsonRepresentation(desc),
    byNumber: [],
    byLargeNumber: new Map(),
    keys: [],
    size: 0,
  };
  plans.set(desc, plan);
  for (const field of desc.fields) {
    // Protobuf-es reads a delimited (group-encoded) message up to its end tag; proto3 has none.
    if ("delimitedEncoding" in field && field.delimitedEncoding)
      throw new Error(`${field}: the delimited encoding is not supported by wire-counts`);
    const message = field.message;
    const kind = field.fieldKind;
    const shape = kind === "list" ? LIST : kind === "map" ? MAP : SINGULAR;
    const f: FieldPlan = {
      name: field.name,
      shape,
      read: message !== undefined ? LEN : field.enum !== undefined ? VARINT : readOf(field),
      keyRead: kind === "map" ? readOf({ scalar: field.mapKey }) : VARINT,
      child: message === undefined ? undefined : planOf(limits, message),
      slot: shape !== SINGULAR || message !== undefined ? plan.size++ : -1,
      limit: limits.fields.get(field) ?? limits.otherLists,
      total: limits.totals.findIndex((t) => t.counted === field),
    };
    if (field.number < DENSE_NUMBERS) plan.byNumber[field.number] = f;
    else plan.byLargeNumber.set(field.number, f);
    plan.keys.push({ key: field.name, field: f });
    if (field.jsonName !== field.name) plan.keys.push({ key: field.jsonName, field: f });
  }
  return plan;
}

const { STRING, BYTES, DOUBLE, FIXED64, SFIXED64, FLOAT, FIXED32, SFIXED32 } = ScalarType;

function readOf({ scalar: s }: { scalar: ScalarType | undefined }): number {
  if (s === STRING || s === BYTES) return LEN;
  if (s === DOUBLE || s === FIXED64 || s === SFIXED64) return 8;
  return s === FLOAT || s === FIXED32 || s === SFIXED32 ? 4 : VARINT;
}

// ---------------------------------------------------------------------------------------------
// The tally: counts per message occurrence, and the first limit passed.

/** Shared by all scans (each runs to its end synchronously): a scan allocates only its object. */
const shared = { arena: new Int32Array(256) };
const fieldAt: (FieldPlan | undefined)[] = [];
/** An entry's index, or -1 for a singular message (whose region stays on exit). */
const indexAt = new Int32Array(MAX_MESSAGE_DEPTH + 1);
const regionAt = new Int32Array(MAX_MESSAGE_DEPTH + 1);

/**
 * The counts of the messages open along the current path, in regions of one Int32Array used as a
 * stack: an entry's region goes when the entry ends; a singular message's lasts as long as its
 * parent's, as protobuf-es merges its occurrences (splitting a list must not evade its limit).
 * The first limit passed is kept with its path; its count is read when its region goes, or at the
 * end. A total over the request comes after any list's own limit, as in the validator.
 */
abstract class Scan {
  protected pos = 0;
  protected readonly root: MessagePlan;
  private arena = shared.arena;
  private top = 0;
  private depth = 0;
  /** The current message's region. */
  private region = 0;
  /** The first limit passed: the slot counting it, its count once its region went (else -1). */
  private violation: { slot: number; path: string; rule: CountRule; final: number } | undefined;
  private unknown = 0;
  private unknownWhere = "";
  /** What counts towards `maxUnknown`, for its refusal. */
  protected abstract readonly outside: string;

  constructor(
    protected readonly buf: Uint8Array,
    schema: DescMessage,
    private readonly limits: CountLimits,
    private readonly at: string,
  ) {
    this.root = planOf(limits, schema);
    // The totals' sums come first, -1 where the total is not taken over this request.
    this.alloc(limits.totals.length);
    limits.totals.forEach((t, i) => {
      if (t.within !== schema) this.arena[i] = -1;
    });
    this.region = this.alloc(this.root.size);
    regionAt[0] = this.region;
  }

  /** Reads the whole message (throws MALFORMED where protobuf-es or JSON.parse would fail). */
  protected abstract scan(): void;

  /** Scans, and throws the first limit passed ("at least" if the scan stopped inside its region). */
  check(): void {
    let stopped = false;
    try {
      this.scan();
    } catch (error) {
      if (error !== MALFORMED) throw error;
      stopped = true;
    }
    this.limits.totals.forEach((rule, t) => {
      if (this.violation === undefined && (this.arena[t] ?? 0) > rule.max)
        this.record(t, rule, rule.field, 0);
    });
    const v = this.violation;
    if (v !== undefined) {
      const n = v.final >= 0 ? v.final : (this.arena[v.slot] ?? 0);
      const got = v.final < 0 && stopped ? `at least ${n}` : `${n}`;
      throw new ConnectError(`${v.path}: ${v.rule.rule(got)}`, v.rule.code);
    }
    const cap = this.limits.maxUnknown;
    if (this.unknown > cap) {
      throw new ConnectError(
        `${this.root.typeName}: must carry at most ${cap} ${this.outside}, at any depth (number ${cap + 1} was in ${this.unknownWhere})`,
        Code.ResourceExhausted,
      );
    }
  }

  /** Counts an entry of a list or map field of the current message; returns its index. */
  protected count(field: FieldPlan): number {
    const k = this.region + field.slot;
    const n = this.arena[k] ?? 0;
    this.arena[k] = n + 1;
    if (n >= field.limit.max && this.violation === undefined)
      this.record(k, field.limit, field.name, this.depth);
    const sum = field.total < 0 ? -1 : (this.arena[field.total] ?? -1);
    if (sum >= 0) this.arena[field.total] = sum + 1;
    return n;
  }

  /** Past its limit: a refusal is sure, so its further entries need only be counted, not read. */
  protected over(field: FieldPlan): boolean {
    return (this.arena[this.region + field.slot] ?? 0) > field.limit.max;
  }

  /**
   * Opens a message: an entry of a list or map (counted) in a fresh region, or a singular field in
   * the region of its earlier occurrences if any.
   */
  protected enter(field: FieldPlan, child: MessagePlan): void {
    let index = -1;
    let region = -1;
    if (field.shape !== SINGULAR) index = this.count(field);
    else region = (this.arena[this.region + field.slot] ?? 0) - 1;
    if (region < 0) {
      region = this.alloc(child.size);
      if (index < 0) this.arena[this.region + field.slot] = region + 1;
    }
    const d = this.depth + 1;
    if (d > MAX_MESSAGE_DEPTH) {
      throw new ConnectError(
        `${this.root.typeName}: must nest messages at most ${MAX_MESSAGE_DEPTH} levels deep`,
        Code.InvalidArgument,
      );
    }
    fieldAt[d] = field;
    indexAt[d] = index;
    regionAt[d] = region;
    this.depth = d;
    this.region = region;
  }

  /** Leaves the current message; an entry's region (and all above it) goes. */
  protected exit(): void {
    const d = this.depth;
    if ((indexAt[d] ?? -1) >= 0) {
      const v = this.violation;
      if (v !== undefined && v.final < 0 && v.slot >= this.region)
        v.final = this.arena[v.slot] ?? 0;
      this.top = this.region;
    }
    this.depth = d - 1;
    this.region = regionAt[d - 1] ?? 0;
  }

  /** A field unknown to `plan` (binary), or a JSON value outside the schema within it. */
  protected unknownField(plan: MessagePlan): void {
    if (++this.unknown === this.limits.maxUnknown + 1) this.unknownWhere = plan.typeName;
  }

  /** Past the cap on unknown fields: a refusal is sure. */
  protected unknownOver(): boolean {
    return this.unknown > this.limits.maxUnknown;
  }

  private alloc(size: number): number {
    const region = this.top;
    this.top += size;
    if (this.top > this.arena.length) {
      const larger = new Int32Array(Math.max(this.arena.length * 2, this.top));
      larger.set(this.arena);
      shared.arena = larger;
      this.arena = larger;
    }
    this.arena.fill(0, region, this.top);
    return region;
  }

  /** Keeps the path as the validator writes it: `queries[2].criteria.criteria`. */
  private record(slot: number, rule: CountRule, leaf: string, frames: number): void {
    const parts: string[] = this.at === "" ? [] : [this.at];
    for (let d = 1; d <= frames; d++) {
      const name = fieldAt[d]?.name ?? "";
      const index = indexAt[d] ?? -1;
      parts.push(index >= 0 ? `${name}[${index}]` : name);
    }
    parts.push(leaf);
    this.violation = { slot, path: parts.join("."), rule, final: -1 };
  }
}

// ---------------------------------------------------------------------------------------------
// Binary: the records protobuf-es would read, read as it reads them.

/**
 * Walks the wire format as protobuf-es 2's fromBinary does, to see the same records: a known field
 * is read as its type says whatever the wire type (except packed lists of numbers), a message runs
 * while the position is before its end (its last field may run past it), and reading past the last
 * byte is where protobuf-es fails.
 */
class WireScan extends Scan {
  protected readonly outside = "fields unknown to this server";

  protected scan(): void {
    this.message(this.root, this.buf.length);
  }

  private message(plan: MessagePlan, end: number): void {
    while (this.pos < end) {
      const tag = this.tag();
      const no = tag >>> 3;
      const field = no < DENSE_NUMBERS ? plan.byNumber[no] : plan.byLargeNumber.get(no);
      const child = field?.child;
      if (field === undefined) {
        this.skipRecord(plan, no, tag & 7);
        this.unknownField(plan);
      } else if (field.shape === LIST) this.listValue(field, tag, end);
      else if (field.shape === MAP) this.mapEntry(field);
      else if (child !== undefined) {
        const childEnd = this.end();
        this.enter(field, child);
        this.message(child, childEnd);
        this.exit();
      } else this.value(field.read);
    }
  }

  /** `end`: the end of the message holding the list. */
  private listValue(field: FieldPlan, tag: number, end: number): void {
    const child = field.child;
    if (child === undefined) {
      if ((tag & 7) !== 2 || field.read === LEN) {
        this.value(field.read);
        this.count(field);
        return;
      }
      // Packed: its elements are counted as protobuf-es reads them, one value at a time.
      for (const packed = this.end(); this.pos < packed; this.count(field)) this.value(field.read);
      return;
    }
    // An empty message holds nothing, and past the limit a refusal is sure: such entries are only
    // counted, and so are the records of the same list that follow while their tag is one byte,
    // in a tight loop (the attack this file is for is millions of them in a row).
    let length = this.varint32();
    while (length === 0 || this.over(field)) {
      this.skip(length);
      this.count(field);
      if (tag >= 0x80 || this.pos >= end || this.buf[this.pos] !== tag) return;
      this.pos++;
      length = this.varint32();
    }
    const childEnd = this.pos + length;
    this.enter(field, child);
    this.message(child, childEnd);
    this.exit();
  }

  /** A map entry: key in field 1, value in field 2, anything else skipped (and not kept). */
  private mapEntry(field: FieldPlan): void {
    const end = this.end();
    const child = field.child;
    if (this.over(field)) {
      this.skip(end - this.pos);
      this.count(field);
      return;
    }
    if (child === undefined) this.count(field);
    else this.enter(field, child);
    while (this.pos < end) {
      const tag = this.tag();
      const no = tag >>> 3;
      if (no === 1) this.value(field.keyRead);
      else if (no !== 2) this.skipRecord(undefined, no, tag & 7);
      else if (child === undefined) this.value(field.read);
      else this.message(child, this.end());
    }
    if (child !== undefined) this.exit();
  }

  private value(read: number): void {
    if (read === VARINT) this.varint32();
    else this.skip(read === LEN ? this.varint32() : read);
  }

  /** An unknown record, skipped as BinaryReader.skip does; groups are refused. */
  private skipRecord(plan: MessagePlan | undefined, no: number, wireType: number): void {
    if (wireType === 0) {
      // skip() reads a varint of any length here.
      for (let b = 0x80; (b & 0x80) !== 0; b = this.buf[this.pos++] ?? 0) {
        if (this.pos >= this.buf.length) throw MALFORMED;
      }
    } else if (wireType === 1 || wireType === 5) this.skip(wireType === 1 ? 8 : 4);
    else if (wireType === 2) this.skip(this.varint32());
    else if (wireType === 3) {
      const where = plan === undefined ? "" : ` of ${plan.typeName}`;
      throw new ConnectError(
        `the request body is not a valid message: field ${no}${where} is a group (wire type 3), which this API never uses`,
        Code.InvalidArgument,
      );
    } else throw MALFORMED; // an end-group tag alone: "cant skip wire type 4"
  }

  /** BinaryReader.tag(): a varint of at most 5 bytes, field number above 0, wire type 0 to 5. */
  private tag(): number {
    const start = this.pos;
    const tag = this.varint32();
    const length = this.pos - start;
    if (length > 5 || (length === 5 && (this.buf[this.pos - 1] ?? 0) > 0x0f)) throw MALFORMED;
    if (tag >>> 3 === 0 || (tag & 7) > 5) throw MALFORMED;
    return tag;
  }

  /** varint32read (and any varint value): up to 10 bytes; the low 32 bits, unsigned. */
  private varint32(): number {
    const first = this.buf[this.pos];
    if (first !== undefined && first < 0x80) {
      this.pos++;
      return first;
    }
    let result = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.buf.length) throw MALFORMED;
      const b = this.buf[this.pos++] ?? 0;
      if (i < 4) result |= (b & 0x7f) << (7 * i);
      else if (i === 4) result |= (b & 0x0f) << 28;
      if ((b & 0x80) === 0) return result >>> 0;
    }
    throw MALFORMED;
  }

  /** A length, as the end of what follows it. */
  private end(): number {
    const length = this.varint32();
    return this.pos + length;
  }

  private skip(n: number): void {
    this.pos += n;
    if (this.pos > this.buf.length) throw MALFORMED;
  }
}

// ---------------------------------------------------------------------------------------------
// JSON: one pass over the text's bytes, recursive over its nesting (at most MAX_JSON_NESTING).

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const LBRACE = 0x7b;
const RBRACE = 0x7d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
/** What an object or array holds: a message's fields, a list's or map's entries, or loose JSON. */
const FIELDS = 0;
const ENTRIES = 1;
const LOOSE = 2;

/** Follows the text as JSON.parse would, and stops where it would fail (lenient inside strings and literals). */
class JsonScan extends Scan {
  protected readonly outside =
    "JSON values outside its schema (unknown keys and what they hold, values of the wrong type)";
  private nesting = 0;
  /** The message whose object the scan is in, which values outside the schema are counted in. */
  private current = this.root;

  protected scan(): void {
    // TextDecoder drops a byte order mark before JSON.parse sees the text.
    if (this.buf[0] === 0xef && this.buf[1] === 0xbb && this.buf[2] === 0xbf) this.pos = 3;
    this.ws();
    if (this.peek() === LBRACE && !this.root.customJson) this.container(FIELDS, this.root);
    else this.loose();
  }

  /** The object or array here: `plan`'s fields, `field`'s entries, or loose JSON (all counted). */
  private container(holds: number, plan: MessagePlan, field?: FieldPlan): void {
    const closing = this.peek() === LBRACE ? RBRACE : RBRACKET;
    this.open();
    if (this.peek() === closing) {
      this.close();
      return;
    }
    const outer = this.current;
    if (holds === FIELDS) this.current = plan;
    do {
      let known = field;
      if (closing === RBRACE) {
        const start = this.pos + 1;
        if (this.peek() !== QUOTE) throw MALFORMED;
        this.skipString();
        if (holds === FIELDS) known = lookup(plan, this.buf, start, this.pos - 1);
        this.punctuation(0x3a); // :
      }
      if (holds === LOOSE) this.loose();
      else if (known === undefined) {
        this.unknownField(plan);
        this.loose();
      } else this.value(known, holds === ENTRIES);
    } while (!this.next(closing));
    this.current = outer;
  }

  /** A field's value, or (`entry`) one of its entries; an unexpected array or object is loose JSON. */
  private value(field: FieldPlan, entry: boolean): void {
    if (entry && this.over(field)) {
      this.skipValue();
      this.count(field);
      return;
    }
    const c = this.peek();
    const child = field.child?.customJson ? undefined : field.child;
    const list = (field.shape === LIST && c === LBRACKET) || (field.shape === MAP && c === LBRACE);
    if (!entry && list) this.container(ENTRIES, this.current, field);
    else if (child !== undefined && c === LBRACE && (entry || field.shape === SINGULAR)) {
      this.enter(field, child);
      this.container(FIELDS, child);
      this.exit();
    } else {
      if (entry) this.count(field);
      if (c === LBRACE || c === LBRACKET) this.loose();
      else this.primitive();
    }
  }

  /** A value outside the schema: it and everything in it are counted. */
  private loose(): void {
    if (this.unknownOver()) {
      this.skipValue();
      return;
    }
    this.unknownField(this.current);
    const c = this.peek();
    if (c === LBRACE || c === LBRACKET) this.container(LOOSE, this.current);
    else this.primitive();
  }

  /** Skips a value once a refusal is sure: counting brackets (not matching them) finds its end. */
  private skipValue(): void {
    const c = this.peek();
    if (c !== LBRACE && c !== LBRACKET) {
      this.primitive();
      return;
    }
    let depth = 0;
    for (;;) {
      const b = this.buf[this.pos];
      if (b === undefined) throw MALFORMED;
      if (b === QUOTE) {
        this.skipString();
        continue;
      }
      this.pos++;
      if (b === LBRACE || b === LBRACKET) depth++;
      else if ((b === RBRACE || b === RBRACKET) && --depth === 0) return;
    }
  }

  /** Past a comma (false) or the closing bracket (true) after a value. */
  private next(closing: number): boolean {
    this.ws();
    if (this.peek() === closing) {
      this.close();
      return true;
    }
    this.punctuation(0x2c); // ,
    return false;
  }

  private open(): void {
    if (++this.nesting > MAX_JSON_NESTING) {
      throw new ConnectError(
        `the request body must nest JSON arrays and objects at most ${MAX_JSON_NESTING} levels deep`,
        Code.InvalidArgument,
      );
    }
    this.pos++;
    this.ws();
  }

  private close(): void {
    this.nesting--;
    this.pos++;
  }

  /** A colon or comma, with white space around it. */
  private punctuation(c: number): void {
    this.ws();
    if (this.peek() !== c) throw MALFORMED;
    this.pos++;
    this.ws();
  }

  /** A string, or a number, true, false or null, whose spelling JSON.parse checks. */
  private primitive(): void {
    if (this.peek() === QUOTE) {
      this.skipString();
      return;
    }
    const start = this.pos;
    for (;;) {
      const b = this.buf[this.pos] ?? 0;
      const letter = (b | 0x20) >= 0x61 && (b | 0x20) <= 0x7a;
      if (!letter && !(b >= 0x30 && b <= 0x39) && b !== 0x2b && b !== 0x2d && b !== 0x2e) break;
      this.pos++;
    }
    if (this.pos === start) throw MALFORMED;
  }

  /** Past a string: the closing quote is found natively, byte by byte if a backslash precedes it. */
  private skipString(): void {
    const buf = this.buf;
    const quote = buf.indexOf(QUOTE, this.pos + 1);
    if (quote < 0) throw MALFORMED;
    let i = quote;
    if (buf[quote - 1] === BACKSLASH) {
      for (i = this.pos + 1; buf[i] !== QUOTE; i += buf[i] === BACKSLASH ? 2 : 1) {
        if (i >= buf.length) throw MALFORMED;
      }
    }
    this.pos = i + 1;
  }

  private ws(): void {
    for (;;) {
      const b = this.buf[this.pos];
      if (b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09) return;
      this.pos++;
    }
  }

  private peek(): number {
    return this.buf[this.pos] ?? -1;
  }
}

/** The field a key (the bytes from `start` to `end`) names, by its proto name or JSON name. */
function lookup(plan: MessagePlan, buf: Uint8Array, start: number, end: number) {
  for (const { key, field } of plan.keys) if (keyIs(buf, start, end, key)) return field;
  return undefined;
}

/** Compares a key and a name, decoding \u escapes; names are [A-Za-z0-9_]: other escapes never match. */
function keyIs(buf: Uint8Array, start: number, end: number, name: string): boolean {
  let j = 0;
  for (let i = start; i < end; j++) {
    let c = buf[i] ?? 0;
    if (c !== BACKSLASH) i++;
    else if (buf[i + 1] !== 0x75) return false;
    else {
      c = 0;
      for (let k = i + 2; k < i + 6; k++) {
        const h = (buf[k] ?? 0) | 0x20;
        const digit = h >= 0x30 && h <= 0x39 ? h - 0x30 : h >= 0x61 && h <= 0x66 ? h - 0x57 : -1;
        if (digit < 0) return false;
        c = c * 16 + digit;
      }
      i += 6;
    }
    if (j >= name.length || name.charCodeAt(j) !== c) return false;
  }
  return j === name.length;
}

// ---------------------------------------------------------------------------------------------
// Bodies: the check on each complete message, before the consumer can have all of it.

/** Checks one complete message of a body; `compressed`: its envelope's compressed flag was set. */
export type MessageCheck = (message: Uint8Array, compressed: boolean) => void | Promise<void>;

/**
 * Passes a body through unchanged, and runs `check` on each complete message before the chunk
 * completing it is passed on, so a consumer never holds a whole unchecked message.
 * - "envelope" (gRPC, gRPC-Web, Connect streaming): a flags byte and a 4-byte length per message.
 *   Trailers (0x80) are not checked, nor anything from a length over `maxBytes` (Connect refuses
 *   it); a compressed message (0x01) is checked with `compressed` set.
 * - "whole" (Connect unary): the body is one message; each chunk is passed on when the next
 *   arrives, the last once the body was checked. Past `maxBytes`, nothing is checked.
 * Chunks are kept by reference, copied only when a message spans several.
 */
export async function* countedBody(
  body: AsyncIterable<Uint8Array>,
  framing: "envelope" | "whole",
  check: MessageCheck,
  maxBytes: number,
): AsyncGenerator<Uint8Array> {
  if (framing === "whole") yield* wholeBody(body, check, maxBytes);
  else yield* envelopedBody(body, check, maxBytes);
}

async function* wholeBody(
  body: AsyncIterable<Uint8Array>,
  check: MessageCheck,
  maxBytes: number,
): AsyncGenerator<Uint8Array> {
  let parts: Uint8Array[] | undefined = [];
  let size = 0;
  let held: Uint8Array | undefined;
  for await (const chunk of body) {
    if (parts !== undefined) {
      size += chunk.byteLength;
      if (size > maxBytes) parts = undefined;
      else parts.push(chunk);
    }
    if (held !== undefined) yield held;
    held = chunk;
  }
  if (parts !== undefined) await check(joined(parts, size), false);
  if (held !== undefined) yield held;
}

const HEADER_BYTES = 5;
const COMPRESSED = 0x01;
const TRAILER = 0x80;

/** Finds envelopes across chunk boundaries, and checks the messages a chunk completes before it is passed on. */
async function* envelopedBody(
  body: AsyncIterable<Uint8Array>,
  check: MessageCheck,
  maxBytes: number,
): AsyncGenerator<Uint8Array> {
  const header = new Uint8Array(HEADER_BYTES);
  const view = new DataView(header.buffer);
  /** The current envelope's bytes so far: of its header while `length` is -1, then of its message. */
  let have = 0;
  let length = -1;
  let parts: Uint8Array[] = [];
  for await (const chunk of body) {
    // Past a header declaring more than maxBytes, nothing is checked any more.
    for (let i = 0; length <= maxBytes; ) {
      if (length < 0) {
        const n = Math.min(HEADER_BYTES - have, chunk.length - i);
        header.set(chunk.subarray(i, i + n), have);
        have += n;
        i += n;
        if (have < HEADER_BYTES) break;
        length = view.getUint32(1);
        have = 0;
        continue;
      }
      const checked = ((header[0] ?? 0) & TRAILER) === 0;
      const n = Math.min(length - have, chunk.length - i);
      if (checked && n > 0) parts.push(chunk.subarray(i, i + n));
      have += n;
      i += n;
      if (have < length) break;
      if (checked) await check(joined(parts, length), ((header[0] ?? 0) & COMPRESSED) !== 0);
      parts = [];
      have = 0;
      length = -1;
    }
    yield chunk;
  }
}

function joined(parts: readonly Uint8Array[], size: number): Uint8Array {
  if (parts.length === 1 && parts[0] !== undefined) return parts[0];
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}
