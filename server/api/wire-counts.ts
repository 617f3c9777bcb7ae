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
 * Counts the entries of a request message's repeated and map fields from its bytes, before it is
 * decoded, and refuses a message that holds more than the validator would accept.
 *
 * Why: protobuf-es decodes the whole message (one object per entry, at any depth, unknown fields
 * included) before validate.ts can see that `events` holds 2,000,000 entries: about 1 s of the
 * event loop and 300 MB for a 4 MiB body. This scan allocates nothing per entry, so the cost of a
 * message it refuses is a pass over its bytes.
 *
 * What a client gets is what the validator would say for the same message: the same field path
 * (`events[3].tags`), the same rule, the same code (RESOURCE_EXHAUSTED for a size limit,
 * INVALID_ARGUMENT for grants), and the exact count. When several limits are broken, the one the
 * validator checks first is reported (a list's own length before its entries, entries in index
 * order, fields in the order the validator visits them).
 *
 * Bytes that protobuf-es cannot read are left to it: the scan stops there and returns, and the
 * client gets the usual "the request body is not a valid message". One exception: a limit already
 * passed before the bad bytes is reported ("got at least N"), since protobuf-es decodes (and
 * allocates) everything before the point where it fails; otherwise one bad byte at the end of a
 * body would take it past this scan.
 */

/** A limit on the entries of one list or map field, worded as the validator words it. */
export interface CountRule {
  /** The most entries accepted. */
  readonly max: number;
  /** The code the validator refuses with. */
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
  /** Per message, its fields in the order the validator checks them; other fields follow, by number. */
  readonly order: ReadonlyMap<DescMessage, readonly DescField[]>;
  readonly totals: readonly TotalRule[];
  /** Any list or map field the validator does not limit. */
  readonly otherLists: CountRule;
  /** Unknown fields (binary) or values outside the schema (JSON) in one request, at any depth. */
  readonly maxUnknown: number;
}

/**
 * Nesting of messages beyond this is refused. Orisun's requests nest at most 5 deep
 * (ReadForDecisionRequest > DecisionQuery > Query > Criterion > Tag); only a recursive message type
 * could go deeper, and protobuf-es itself would go on to 100.
 */
export const MAX_MESSAGE_DEPTH = 32;
/** JSON arrays and objects nested beyond this are refused: a request nests at most 8 deep. */
export const MAX_JSON_NESTING = 64;
/**
 * The entries of a list or map field that the validator does not limit (none of the served
 * requests has one today; a field added later gets this until the validator limits it): as many as
 * the largest limit the validator has by default (ORISUN_MAX_EVENTS_PER_SAVE).
 */
export const OTHER_LIST_MAX = 10_000;
/**
 * Unknown fields in one request, at any depth, counted together rather than per message: caps per
 * message multiply with the number of messages (10,000 events of 64 tags each), so they would
 * bound nothing. Orisun ignores unknown fields; a client built against a newer schema may send a
 * new field on every event of a SaveEvents as large as the default limit allows (10,000), which
 * this still accepts, while 10,000 kept fields cost protobuf-es about a megabyte. In JSON, where
 * Orisun refuses unknown keys after parsing, it bounds what JSON.parse builds for them (and for
 * values of the wrong type).
 */
export const MAX_UNKNOWN_FIELDS = 10_000;

/** The count limits of validate.ts, validate-decision.ts, import-validate.ts and grants.ts. */
export function countLimitsOf(limits: Limits): CountLimits {
  const { maxEventsPerSave: events, maxTagsPerEvent: tags, maxCriteria: criteria } = limits;
  const tooLarge = (max: number, rule: (got: string) => string): CountRule => ({
    max,
    code: Code.ResourceExhausted,
    rule,
  });
  const tagRule = tooLarge(tags, (got) => `must have at most ${tags} tags, got ${got}`);
  const grantRule: CountRule = {
    max: MAX_GRANTS,
    code: Code.InvalidArgument,
    rule: (got) => `at most ${MAX_GRANTS} grants, got ${got}`,
  };
  const criteriaField = fieldOf(QuerySchema, "criteria");
  return {
    fields: new Map<DescField, CountRule>([
      [
        fieldOf(SaveEventsRequestSchema, "events"),
        tooLarge(events, (got) => `must contain at most ${events} events, got ${got}`),
      ],
      [fieldOf(EventToSaveSchema, "tags"), tagRule],
      [
        criteriaField,
        tooLarge(criteria, (got) => `must have at most ${criteria} criteria, got ${got}`),
      ],
      [
        fieldOf(CriterionSchema, "event_types"),
        tooLarge(criteria, (got) => `must have at most ${criteria} types, got ${got}`),
      ],
      [fieldOf(CriterionSchema, "tags"), tagRule],
      [
        fieldOf(ReadForDecisionRequestSchema, "queries"),
        tooLarge(
          criteria,
          (got) => `must contain at most ${criteria} queries (ORISUN_MAX_CRITERIA), got ${got}`,
        ),
      ],
      [
        fieldOf(ImportEventsRequestSchema, "events"),
        tooLarge(
          events,
          (got) => `must contain at most ${events} events (ORISUN_MAX_EVENTS_PER_SAVE), got ${got}`,
        ),
      ],
      [fieldOf(EventSchema, "tags"), tagRule],
      [fieldOf(CreateUserRequestSchema, "grants"), grantRule],
      [fieldOf(CreateApiKeyRequestSchema, "grants"), grantRule],
    ]),
    order: new Map<DescMessage, readonly DescField[]>([
      // toAppendRequest checks the events (each in turn) before the condition's query.
      [
        SaveEventsRequestSchema,
        [
          fieldOf(SaveEventsRequestSchema, "events"),
          fieldOf(SaveEventsRequestSchema, "consistency_condition"),
        ],
      ],
      // toQuery checks a criterion's event_types before its tags.
      [
        CriterionSchema,
        [fieldOf(CriterionSchema, "event_types"), fieldOf(CriterionSchema, "tags")],
      ],
    ]),
    totals: [
      {
        within: ReadForDecisionRequestSchema,
        counted: criteriaField,
        field: "queries",
        max: criteria,
        code: Code.ResourceExhausted,
        rule: (got) =>
          `must have at most ${criteria} criteria in all queries together (ORISUN_MAX_CRITERIA), got ${got}`,
      },
    ],
    otherLists: tooLarge(
      OTHER_LIST_MAX,
      (got) => `must have at most ${OTHER_LIST_MAX} entries, got ${got}`,
    ),
    maxUnknown: MAX_UNKNOWN_FIELDS,
  };
}

/** A field by its proto name; a missing one is a mistake in this file, found at start-up. */
function fieldOf(schema: DescMessage, name: string): DescField {
  const field = schema.fields.find((f) => f.name === name);
  if (field === undefined) throw new Error(`${schema.typeName} has no field ${name}`);
  return field;
}

/**
 * Refuses a binary protobuf message whose lists hold more entries than `limits` allow (see the
 * top of this file). `at` prefixes field paths, e.g. `messages[2]` for the third message of an
 * ImportEvents stream, as import-handler.ts names them.
 */
export function checkBinaryCounts(
  schema: DescMessage,
  bytes: Uint8Array,
  limits: CountLimits,
  at = "",
): void {
  const plan = planOf(limits, schema);
  tally.start(schema, plan, limits, at, false);
  let malformed = false;
  try {
    new WireScan(bytes, tally).message(plan, bytes.length);
  } catch (error) {
    if (error !== MALFORMED) throw error;
    malformed = true;
  }
  tally.finish(malformed);
}

const encoder = new TextEncoder();

/**
 * The same for a JSON body (Connect's application/json, gRPC's +json), in one pass over its bytes
 * with nothing allocated per value: fields are found by their proto name or JSON name, as
 * protobuf-es finds them, map fields are objects whose keys are counted. Everything JSON.parse
 * would build outside the schema (unknown keys and what they hold, values of the wrong type)
 * counts towards `limits.maxUnknown`, since JSON.parse builds all of it before protobuf-es looks.
 */
export function checkJsonCounts(
  schema: DescMessage,
  text: Uint8Array | string,
  limits: CountLimits,
  at = "",
): void {
  const bytes = typeof text === "string" ? encoder.encode(text) : text;
  const plan = planOf(limits, schema);
  tally.start(schema, plan, limits, at, true);
  let malformed = false;
  try {
    new JsonScan(bytes, tally).root(plan, hasCustomJsonRepresentation(schema));
  } catch (error) {
    if (error !== MALFORMED) throw error;
    malformed = true;
  }
  tally.finish(malformed);
}

// ---------------------------------------------------------------------------------------------
// Plans: what the scans need of a message's descriptor, computed once per message and limits.

/** How a field's values are laid out. */
const SINGULAR = 0;
const LIST = 1;
const MAP = 2;

/** How one value is read: the field's type decides, as in protobuf-es, not the record's wire type. */
const VARINT = 0;
const FIXED32 = 1;
const FIXED64 = 2;
const LEN = 3;
const MESSAGE = 4;

interface FieldPlan {
  readonly name: string;
  readonly shape: number;
  /** A value's reading; for a map, its values'. */
  readonly read: number;
  /** A map's keys' reading. */
  readonly keyRead: number;
  /** The message of a message field, list or map value. */
  child: MessagePlan | undefined;
  /** Protobuf-es reads a JSON value of this message type in its own way (Timestamp, Struct…). */
  readonly customJson: boolean;
  /** List or map: its count in the parent's region; singular message: the slot of its region; else -1. */
  slot: number;
  /** Its place in the order the validator checks the message's fields. */
  readonly priority: number;
  readonly limit: CountRule;
  /** The totals (indexes into CountLimits.totals) its entries add to. */
  readonly totals: readonly number[];
}

interface MessagePlan {
  readonly typeName: string;
  /** Fields by number, for numbers below DENSE_NUMBERS. */
  readonly byNumber: (FieldPlan | undefined)[];
  readonly byLargeNumber: Map<number, FieldPlan>;
  /** Proto names and JSON names. */
  readonly keys: { readonly key: string; readonly field: FieldPlan }[];
  /** By priority. */
  readonly fields: FieldPlan[];
  /** List and map fields, counted in the message's region, by priority. */
  lists: FieldPlan[];
  /** Singular message fields whose messages have regions (regions of their own), by priority. */
  singulars: FieldPlan[];
  /** Int32 slots of the message's region: HEAD, then lists, then singulars; 0: it has none. */
  size: number;
}

const DENSE_NUMBERS = 256;

const plansByLimits = new WeakMap<CountLimits, Map<DescMessage, MessagePlan>>();

function planOf(limits: CountLimits, schema: DescMessage): MessagePlan {
  let plans = plansByLimits.get(limits);
  if (plans === undefined) {
    plans = new Map();
    plansByLimits.set(limits, plans);
  }
  const known = plans.get(schema);
  if (known !== undefined) return known;
  const fresh: MessagePlan[] = [];
  const plan = buildPlan(schema, limits, plans, fresh);
  layOut(fresh);
  return plan;
}

/** Plans the message and every message it holds (registered first: types may be recursive). */
function buildPlan(
  desc: DescMessage,
  limits: CountLimits,
  plans: Map<DescMessage, MessagePlan>,
  fresh: MessagePlan[],
): MessagePlan {
  const existing = plans.get(desc);
  if (existing !== undefined) return existing;
  const plan: MessagePlan = {
    typeName: desc.typeName,
    byNumber: [],
    byLargeNumber: new Map(),
    keys: [],
    fields: [],
    lists: [],
    singulars: [],
    size: 0,
  };
  plans.set(desc, plan);
  fresh.push(plan);
  const order = limits.order.get(desc) ?? [];
  desc.fields.forEach((field, i) => {
    const ordered = order.indexOf(field);
    const f = fieldPlan(field, ordered >= 0 ? ordered : order.length + i, limits);
    const message = field.message;
    if (message !== undefined) f.child = buildPlan(message, limits, plans, fresh);
    if (field.number < DENSE_NUMBERS) plan.byNumber[field.number] = f;
    else plan.byLargeNumber.set(field.number, f);
    plan.keys.push({ key: field.name, field: f });
    if (field.jsonName !== field.name) plan.keys.push({ key: field.jsonName, field: f });
    plan.fields.push(f);
  });
  plan.fields.sort((a, b) => a.priority - b.priority);
  return plan;
}

function fieldPlan(field: DescField, priority: number, limits: CountLimits): FieldPlan {
  const totals: number[] = [];
  limits.totals.forEach((t, i) => {
    if (t.counted === field) totals.push(i);
  });
  const base = {
    name: field.name,
    child: undefined,
    customJson: field.message !== undefined && hasCustomJsonRepresentation(field.message),
    slot: -1,
    priority,
    totals,
  };
  switch (field.fieldKind) {
    case "scalar":
      return {
        ...base,
        shape: SINGULAR,
        read: readOf(field.scalar),
        keyRead: VARINT,
        limit: limits.otherLists,
      };
    case "enum":
      return { ...base, shape: SINGULAR, read: VARINT, keyRead: VARINT, limit: limits.otherLists };
    case "message":
      refuseDelimited(field, field.delimitedEncoding);
      return { ...base, shape: SINGULAR, read: MESSAGE, keyRead: VARINT, limit: limits.otherLists };
    case "list": {
      const limit = limits.fields.get(field) ?? limits.otherLists;
      if (field.listKind === "message") {
        refuseDelimited(field, field.delimitedEncoding);
        return { ...base, shape: LIST, read: MESSAGE, keyRead: VARINT, limit };
      }
      const read = field.listKind === "enum" ? VARINT : readOf(field.scalar);
      return { ...base, shape: LIST, read, keyRead: VARINT, limit };
    }
    case "map": {
      const limit = limits.fields.get(field) ?? limits.otherLists;
      const read =
        field.mapKind === "message"
          ? MESSAGE
          : field.mapKind === "enum"
            ? VARINT
            : readOf(field.scalar);
      return { ...base, shape: MAP, read, keyRead: readOf(field.mapKey), limit };
    }
  }
}

/**
 * Protobuf-es reads a delimited (group-encoded) message field up to its end tag; no proto3 file
 * can declare one, and this scan does not follow them.
 */
function refuseDelimited(field: DescField, delimited: boolean): void {
  if (delimited)
    throw new Error(`${field}: the delimited encoding is not supported by wire-counts`);
}

function readOf(scalar: ScalarType): number {
  switch (scalar) {
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return LEN;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return FIXED64;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return FIXED32;
    default:
      return VARINT;
  }
}

/**
 * Gives a region to each message that holds lists, or holds (through singular message fields) a
 * message that does: a singular message field read twice is merged by protobuf-es, so its lists'
 * counts must go on across its occurrences, in a region that lasts as long as its parent's.
 */
function layOut(fresh: readonly MessagePlan[]): void {
  const needs = new Set<MessagePlan>();
  const hasRegion = (p: MessagePlan) => p.size > 0 || needs.has(p);
  for (const p of fresh) if (p.fields.some((f) => f.shape !== SINGULAR)) needs.add(p);
  for (let changed = true; changed; ) {
    changed = false;
    for (const p of fresh) {
      if (needs.has(p)) continue;
      if (
        p.fields.some((f) => f.shape === SINGULAR && f.child !== undefined && hasRegion(f.child))
      ) {
        needs.add(p);
        changed = true;
      }
    }
  }
  for (const p of fresh) {
    if (!needs.has(p)) continue;
    p.lists = p.fields.filter((f) => f.shape !== SINGULAR);
    p.singulars = p.fields.filter(
      (f) => f.shape === SINGULAR && f.child !== undefined && hasRegion(f.child),
    );
    p.lists.forEach((f, i) => {
      f.slot = HEAD + i;
    });
    p.singulars.forEach((f, i) => {
      f.slot = HEAD + p.lists.length + i;
    });
    p.size = HEAD + p.lists.length + p.singulars.length;
  }
}

// ---------------------------------------------------------------------------------------------
// The tally: counts per message occurrence, and the violation the validator would report first.

/** A region starts with its best violation so far: priority and index of the child it came from, id. */
const HEAD = 3;
const BEST_PRIORITY = 0;
const BEST_INDEX = 1;
const BEST_ID = 2;
/** No violation yet: any child's key is smaller. */
const WORST = 0x7fffffff;

interface Violation {
  readonly path: string;
  readonly rule: CountRule;
  readonly count: number;
  /** Counted up to bytes protobuf-es cannot read: there may be more. */
  readonly partial: boolean;
}

/** A tally's root before its first request. */
const EMPTY_PLAN: MessagePlan = {
  typeName: "",
  byNumber: [],
  byLargeNumber: new Map(),
  keys: [],
  fields: [],
  lists: [],
  singulars: [],
  size: 0,
};

/** Thrown inside a scan where protobuf-es would fail too; never leaves this file. */
const MALFORMED = new Error("malformed");

/**
 * The counts of the messages open along the current path, in regions of one Int32Array that grows
 * and shrinks as a stack: an entry's region goes when the entry ends; a singular message's region
 * lasts as long as its parent's (protobuf-es merges its occurrences). A region's best violation is
 * the one the validator would report first within it: its own lists' before its children's, and
 * of its children the one with the smallest (field priority, index).
 */
class Tally {
  private arena = new Int32Array(256);
  private top = 0;
  /** Frames open: messages with regions. */
  private depth = 0;
  /** Messages without regions open within the innermost frame. */
  private plain = 0;
  private readonly fieldAt: (FieldPlan | undefined)[] = [undefined];
  private readonly planAt: (MessagePlan | undefined)[] = [undefined];
  private readonly indexAt = new Int32Array(MAX_MESSAGE_DEPTH + 1);
  private readonly regionAt = new Int32Array(MAX_MESSAGE_DEPTH + 1);
  /** 0: a violation found in this frame can no longer be the one reported (no need to word it). */
  private readonly canWinAt = new Uint8Array(MAX_MESSAGE_DEPTH + 1);
  /** Singular fields from a frame down to the region being closed, for paths. */
  private readonly chain: FieldPlan[] = [];
  private readonly violations: Violation[] = [];
  /** Per CountLimits.totals: its sum, if its `within` is the request's type; else -1. */
  private readonly totals: number[] = [];
  private partial = false;
  private unknown = 0;
  private unknownWhere = "";
  private root: MessagePlan = EMPTY_PLAN;
  private limits: CountLimits | undefined;
  private maxUnknown = 0;
  private at = "";
  private json = false;

  /**
   * Begins a request. One tally serves every scan (they run to the end synchronously), so that a
   * small message costs no allocation beyond its scanner.
   */
  start(
    schema: DescMessage,
    root: MessagePlan,
    limits: CountLimits,
    at: string,
    json: boolean,
  ): void {
    this.root = root;
    this.limits = limits;
    this.maxUnknown = limits.maxUnknown;
    this.at = at;
    this.json = json;
    this.top = 0;
    this.depth = 0;
    this.plain = 0;
    this.violations.length = 0;
    this.partial = false;
    this.unknown = 0;
    this.unknownWhere = "";
    this.planAt[0] = root;
    this.indexAt[0] = -1;
    this.regionAt[0] = root.size > 0 ? this.alloc(root.size) : -1;
    this.canWinAt[0] = 1;
    this.totals.length = limits.totals.length;
    limits.totals.forEach((t, i) => {
      this.totals[i] = t.within === schema ? 0 : -1;
    });
  }

  /** Counts an entry of a list or map field of the current message; returns its index. */
  count(field: FieldPlan): number {
    const k = (this.regionAt[this.depth] ?? 0) + field.slot;
    const n = this.arena[k] ?? 0;
    this.arena[k] = n + 1;
    if (field.totals.length > 0) this.addTotals(field, 1);
    return n;
  }

  /** Counts `n` entries at once (a packed list's). */
  add(field: FieldPlan, n: number): void {
    const k = (this.regionAt[this.depth] ?? 0) + field.slot;
    this.arena[k] = (this.arena[k] ?? 0) + n;
    if (field.totals.length > 0) this.addTotals(field, n);
  }

  /** The entries of a list or map field of the current message so far. */
  entries(field: FieldPlan): number {
    return this.arena[(this.regionAt[this.depth] ?? 0) + field.slot] ?? 0;
  }

  /**
   * The field already holds more entries than its limit: a violation is sure to be reported, and
   * none within its further entries can come first, so they need not be read, only counted.
   */
  over(field: FieldPlan): boolean {
    return (this.arena[(this.regionAt[this.depth] ?? 0) + field.slot] ?? 0) > field.limit.max;
  }

  /** Opens an entry of a list or map of messages (counting it). */
  enterEntry(field: FieldPlan, child: MessagePlan): void {
    const index = this.count(field);
    if (child.size === 0) {
      this.enterPlain();
      return;
    }
    const parent = this.regionAt[this.depth] ?? 0;
    const canWin = this.canWinAt[this.depth] === 1 && this.beats(parent, field.priority, index);
    this.push(field, child, index, this.alloc(child.size), canWin);
  }

  /** Opens a singular message field, in the region of its earlier occurrences if any. */
  enterSingular(field: FieldPlan, child: MessagePlan): void {
    if (child.size === 0) {
      this.enterPlain();
      return;
    }
    const k = (this.regionAt[this.depth] ?? 0) + field.slot;
    const known = this.arena[k] ?? 0;
    let region = known - 1;
    if (known === 0) {
      region = this.alloc(child.size);
      this.arena[k] = region + 1;
    }
    // Whether it can win is known only when its parent closes: its region is closed then.
    this.push(field, child, -1, region, this.canWinAt[this.depth] === 1);
  }

  /**
   * Opens a message that has no region (no lists in it, at any depth): nothing in it is counted
   * but unknown fields, so it needs no frame, only its nesting. Such messages only ever hold
   * others like them, so they are always the innermost levels.
   */
  private enterPlain(): void {
    this.plain++;
    if (this.depth + this.plain > MAX_MESSAGE_DEPTH) this.tooDeep();
  }

  /** Leaves the current message; an entry's region is closed and handed to its parent. */
  exit(): void {
    if (this.plain > 0) {
      this.plain--;
      return;
    }
    const d = this.depth;
    const index = this.indexAt[d] ?? -1;
    const region = this.regionAt[d] ?? -1;
    const field = this.fieldAt[d];
    const plan = this.planAt[d];
    if (index >= 0 && region >= 0 && field !== undefined && plan !== undefined) {
      this.closeRegion(plan, region, d, 0, this.canWinAt[d] === 1);
      this.merge(this.regionAt[d - 1] ?? 0, field.priority, index, region);
      this.top = region;
    }
    this.depth = d - 1;
  }

  /** A field unknown to `plan` (binary), or a JSON value outside the schema within it. */
  unknownField(plan: MessagePlan): void {
    this.unknown++;
    if (this.unknown === this.maxUnknown + 1) this.unknownWhere = plan.typeName;
  }

  /** Past the cap on unknown fields: an error is sure to be reported. */
  unknownOver(): boolean {
    return this.unknown > this.maxUnknown;
  }

  /**
   * Throws the violation the validator would report first, if any. After bytes protobuf-es cannot
   * read, the messages still open are closed with what was counted ("at least").
   */
  finish(malformed: boolean): void {
    if (malformed) {
      this.partial = true;
      this.plain = 0;
      while (this.depth > 0) this.exit();
    }
    const region = this.regionAt[0] ?? -1;
    if (region >= 0) {
      this.closeRegion(this.root, region, 0, 0, true);
      let id = this.arena[region + BEST_ID] ?? -1;
      if (id < 0) id = this.totalViolation();
      const violation = this.violations[id];
      if (violation !== undefined) {
        const got = violation.partial ? `at least ${violation.count}` : `${violation.count}`;
        throw new ConnectError(
          `${violation.path}: ${violation.rule.rule(got)}`,
          violation.rule.code,
        );
      }
    }
    if (this.unknownOver()) {
      const cap = this.maxUnknown;
      const what = this.json
        ? `JSON values outside its schema (unknown keys and what they hold, values of the wrong type)`
        : "fields unknown to this server";
      throw new ConnectError(
        `${this.root.typeName}: must carry at most ${cap} ${what}, at any depth (number ${cap + 1} was in ${this.unknownWhere})`,
        Code.ResourceExhausted,
      );
    }
  }

  private addTotals(field: FieldPlan, n: number): void {
    for (const t of field.totals) {
      const sum = this.totals[t] ?? -1;
      if (sum >= 0) this.totals[t] = sum + n;
    }
  }

  /** A total over the request is checked after everything in it, as validate-decision.ts does. */
  private totalViolation(): number {
    const totals = this.limits?.totals ?? [];
    for (let t = 0; t < totals.length; t++) {
      const rule = totals[t];
      const n = this.totals[t] ?? -1;
      if (rule !== undefined && n > rule.max) {
        return this.record(this.path(0, 0, rule.field), rule, n);
      }
    }
    return -1;
  }

  private push(
    field: FieldPlan,
    plan: MessagePlan,
    index: number,
    region: number,
    canWin: boolean,
  ): void {
    const d = this.depth + 1;
    if (d > MAX_MESSAGE_DEPTH) this.tooDeep();
    this.fieldAt[d] = field;
    this.planAt[d] = plan;
    this.indexAt[d] = index;
    this.regionAt[d] = region;
    this.canWinAt[d] = canWin ? 1 : 0;
    this.depth = d;
  }

  private tooDeep(): never {
    throw new ConnectError(
      `${this.root.typeName}: must nest messages at most ${MAX_MESSAGE_DEPTH} levels deep`,
      Code.InvalidArgument,
    );
  }

  private alloc(size: number): number {
    const region = this.top;
    this.top += size;
    if (this.top > this.arena.length) {
      const larger = new Int32Array(Math.max(this.arena.length * 2, this.top));
      larger.set(this.arena);
      this.arena = larger;
    }
    this.arena.fill(0, region, this.top);
    this.arena[region + BEST_PRIORITY] = WORST;
    this.arena[region + BEST_INDEX] = WORST;
    this.arena[region + BEST_ID] = -1;
    return region;
  }

  /** Would a child at (priority, index) be reported before the region's best so far? */
  private beats(region: number, priority: number, index: number): boolean {
    const best = this.arena[region + BEST_PRIORITY] ?? WORST;
    return (
      priority < best || (priority === best && index < (this.arena[region + BEST_INDEX] ?? WORST))
    );
  }

  private merge(parent: number, priority: number, index: number, child: number): void {
    const id = this.arena[child + BEST_ID] ?? -1;
    if (id < 0 || !this.beats(parent, priority, index)) return;
    this.arena[parent + BEST_PRIORITY] = priority;
    this.arena[parent + BEST_INDEX] = index;
    this.arena[parent + BEST_ID] = id;
  }

  /**
   * Settles a region's best violation: its own lists first (the validator checks a list's length
   * before its entries), then its singular messages' regions, in the validator's order.
   */
  private closeRegion(
    plan: MessagePlan,
    region: number,
    frame: number,
    chained: number,
    canWin: boolean,
  ): void {
    for (const f of plan.lists) {
      const n = this.arena[region + f.slot] ?? 0;
      if (n <= f.limit.max) continue;
      if (canWin) {
        this.arena[region + BEST_PRIORITY] = -1;
        this.arena[region + BEST_INDEX] = -1;
        this.arena[region + BEST_ID] = this.record(this.path(frame, chained, f.name), f.limit, n);
      }
      return;
    }
    for (const s of plan.singulars) {
      const child = (this.arena[region + s.slot] ?? 0) - 1;
      if (child < 0 || s.child === undefined) continue;
      this.chain[chained] = s;
      const childCanWin = canWin && this.beats(region, s.priority, -1);
      this.closeRegion(s.child, child, frame, chained + 1, childCanWin);
      this.merge(region, s.priority, -1, child);
    }
  }

  private record(path: string, rule: CountRule, count: number): number {
    this.violations.push({ path, rule, count, partial: this.partial });
    return this.violations.length - 1;
  }

  /** The field path as the validator writes it: `queries[2].criteria.criteria[0].tags`. */
  private path(frame: number, chained: number, leaf: string): string {
    const parts: string[] = this.at === "" ? [] : [this.at];
    for (let d = 1; d <= frame; d++) {
      const field = this.fieldAt[d];
      const index = this.indexAt[d] ?? -1;
      if (field !== undefined) parts.push(index >= 0 ? `${field.name}[${index}]` : field.name);
    }
    for (let k = 0; k < chained; k++) {
      const field = this.chain[k];
      if (field !== undefined) parts.push(field.name);
    }
    parts.push(leaf);
    return parts.join(".");
  }
}

/** The one tally (see Tally.start). */
const tally = new Tally();

// ---------------------------------------------------------------------------------------------
// Binary: the records protobuf-es would read, read as it reads them.

/**
 * Walks the wire format exactly as protobuf-es 2's fromBinary does, so that both see the same
 * records: a known field is read as its type says whatever its record's wire type (only a list of
 * numbers or enums looks at it: length-delimited means packed), a message runs while the position
 * is before its end (its last field may run past it, and its parent goes on from there), varints
 * take at most 10 bytes, and reading past the last byte is where protobuf-es fails.
 */
class WireScan {
  private pos = 0;

  constructor(
    private readonly buf: Uint8Array,
    private readonly tally: Tally,
  ) {}

  message(plan: MessagePlan, end: number): void {
    while (this.pos < end) {
      const tag = this.tag();
      const no = tag >>> 3;
      const field = no < DENSE_NUMBERS ? plan.byNumber[no] : plan.byLargeNumber.get(no);
      if (field === undefined) {
        this.skipRecord(plan, no, tag & 7);
        this.tally.unknownField(plan);
      } else if (field.shape === LIST) this.listValue(field, tag, end);
      else if (field.shape === MAP) this.mapEntry(field);
      else if (field.child !== undefined) {
        const child = field.child;
        const childEnd = this.end();
        this.tally.enterSingular(field, child);
        this.message(child, childEnd);
        this.tally.exit();
      } else this.value(field.read);
    }
  }

  /** `end`: the end of the message holding the list. */
  private listValue(field: FieldPlan, tag: number, end: number): void {
    const child = field.child;
    if (child !== undefined) {
      const length = this.varint32();
      if (length === 0 || this.tally.over(field)) {
        // An empty message holds nothing; past the limit, what entries hold cannot come first.
        this.skip(length);
        this.tally.count(field);
        if (tag < 0x80) this.run(field, tag, end);
        return;
      }
      const childEnd = this.pos + length;
      this.tally.enterEntry(field, child);
      this.message(child, childEnd);
      this.tally.exit();
    } else if ((tag & 7) === 2 && field.read !== LEN) {
      this.packed(field);
    } else {
      this.value(field.read);
      this.tally.count(field);
    }
  }

  /**
   * The records of the same list that follow one that was only counted, while their tag is one
   * byte, counted in a tight loop: the attack this file is for is millions of them in a row.
   * Within a message, `tag` (a valid one) means what it meant for the record before.
   */
  private run(field: FieldPlan, tag: number, end: number): void {
    const buf = this.buf;
    const before = this.tally.entries(field);
    let n = 0;
    try {
      while (this.pos < end && buf[this.pos] === tag) {
        const start = this.pos;
        this.pos++;
        const length = this.varint32();
        if (length !== 0 && before + n <= field.limit.max) {
          this.pos = start; // an entry to read: message() takes it from its tag
          return;
        }
        this.skip(length);
        n++;
      }
    } finally {
      this.tally.add(field, n);
    }
  }

  /** A packed list's elements are counted as protobuf-es reads them: one value at a time. */
  private packed(field: FieldPlan): void {
    const end = this.varint32() + this.pos;
    let n = 0;
    try {
      while (this.pos < end) {
        this.value(field.read);
        n++;
      }
    } finally {
      this.tally.add(field, n);
    }
  }

  /** A map entry: key in field 1, value in field 2, anything else skipped (and not kept). */
  private mapEntry(field: FieldPlan): void {
    const length = this.varint32();
    if (this.tally.over(field)) {
      this.skip(length);
      this.tally.count(field);
      return;
    }
    const end = this.pos + length;
    const child = field.child;
    if (child === undefined) this.tally.count(field);
    else this.tally.enterEntry(field, child);
    while (this.pos < end) {
      const tag = this.tag();
      const no = tag >>> 3;
      if (no === 1) this.value(field.keyRead);
      else if (no !== 2) this.skipRecord(undefined, no, tag & 7);
      else if (child === undefined) this.value(field.read);
      else this.message(child, this.end());
    }
    if (child !== undefined) this.tally.exit();
  }

  private value(read: number): void {
    switch (read) {
      case VARINT:
        this.varint();
        return;
      case FIXED32:
        this.skip(4);
        return;
      case FIXED64:
        this.skip(8);
        return;
      default:
        this.skip(this.varint32());
    }
  }

  /** An unknown record, skipped as BinaryReader.skip does; groups are refused. */
  private skipRecord(plan: MessagePlan | undefined, no: number, wireType: number): void {
    switch (wireType) {
      case 0:
        // skip() reads a varint of any length here.
        for (;;) {
          if (this.pos >= this.buf.length) throw MALFORMED;
          const b = this.buf[this.pos++] ?? 0;
          if ((b & 0x80) === 0) return;
        }
      case 1:
        this.skip(8);
        return;
      case 2:
        this.skip(this.varint32());
        return;
      case 5:
        this.skip(4);
        return;
      case 3:
        throw new ConnectError(
          `the request body is not a valid message: field ${no}${plan === undefined ? "" : ` of ${plan.typeName}`} is a group (wire type 3), which this API never uses`,
          Code.InvalidArgument,
        );
      default:
        // An end-group tag alone: protobuf-es fails ("cant skip wire type 4").
        throw MALFORMED;
    }
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

  /** varint32read: up to 10 bytes, the low 32 bits as an unsigned number. */
  private varint32(): number {
    const buf = this.buf;
    const first = buf[this.pos];
    if (first !== undefined && first < 0x80) {
      this.pos++;
      return first;
    }
    let result = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= buf.length) throw MALFORMED;
      const b = buf[this.pos++] ?? 0;
      if (i < 4) result |= (b & 0x7f) << (7 * i);
      else if (i === 4) result |= (b & 0x0f) << 28;
      if ((b & 0x80) === 0) return result >>> 0;
    }
    throw MALFORMED;
  }

  /** A varint value of any integer type, or a bool: at most 10 bytes. */
  private varint(): void {
    const buf = this.buf;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= buf.length) throw MALFORMED;
      if (((buf[this.pos++] ?? 0) & 0x80) === 0) return;
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
const COMMA = 0x2c;
const COLON = 0x3a;
const LBRACE = 0x7b;
const RBRACE = 0x7d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;

/**
 * Follows the text as JSON.parse would: where JSON.parse would fail the scan stops (it is lenient
 * about the inside of strings, numbers and literals, which only costs reading on a little longer).
 */
class JsonScan {
  private pos = 0;
  private nesting = 0;
  /** The message whose object the scan is in, which values outside the schema are counted in. */
  private current: MessagePlan = EMPTY_PLAN;

  constructor(
    private readonly buf: Uint8Array,
    private readonly tally: Tally,
  ) {}

  /** `custom`: the message is read from JSON in its own way (a Struct is any object). */
  root(plan: MessagePlan, custom: boolean): void {
    this.current = plan;
    // TextDecoder drops a byte order mark before JSON.parse sees the text.
    if (this.buf[0] === 0xef && this.buf[1] === 0xbb && this.buf[2] === 0xbf) this.pos = 3;
    this.ws();
    if (this.peek() === LBRACE && !custom) this.object(plan);
    else this.loose();
  }

  /** A message's object: known keys by their field, the others counted with what they hold. */
  private object(plan: MessagePlan): void {
    const outer = this.current;
    this.current = plan;
    this.members(plan);
    this.current = outer;
  }

  private members(plan: MessagePlan): void {
    this.open();
    this.ws();
    if (this.peek() === RBRACE) {
      this.close();
      return;
    }
    for (;;) {
      if (this.peek() !== QUOTE) throw MALFORMED;
      const start = this.pos + 1;
      const escaped = this.key();
      const field = lookup(plan, this.buf, start, this.pos - 1, escaped);
      this.colon();
      if (field === undefined) {
        this.tally.unknownField(plan);
        this.loose();
      } else this.value(field);
      if (this.next(RBRACE)) return;
    }
  }

  private value(field: FieldPlan): void {
    const c = this.peek();
    const child = field.customJson ? undefined : field.child;
    if (field.shape === LIST && c === LBRACKET) this.array(field, child);
    else if (field.shape === MAP && c === LBRACE) this.map(field, child);
    else if (field.shape === SINGULAR && child !== undefined && c === LBRACE) {
      this.tally.enterSingular(field, child);
      this.object(child);
      this.tally.exit();
    } else this.other();
  }

  /**
   * null, a scalar, or an array or object where the field takes neither (or free JSON such as a
   * google.protobuf.Struct's): then it is counted with what it holds, as outside the schema.
   */
  private other(): void {
    const c = this.peek();
    if (c === LBRACE || c === LBRACKET) this.loose();
    else this.primitive();
  }

  private array(field: FieldPlan, child: MessagePlan | undefined): void {
    this.open();
    this.ws();
    if (this.peek() === RBRACKET) {
      this.close();
      return;
    }
    for (;;) {
      this.element(field, child);
      if (this.next(RBRACKET)) return;
    }
  }

  private map(field: FieldPlan, child: MessagePlan | undefined): void {
    this.open();
    this.ws();
    if (this.peek() === RBRACE) {
      this.close();
      return;
    }
    for (;;) {
      if (this.peek() !== QUOTE) throw MALFORMED;
      this.skipString();
      this.colon();
      this.element(field, child);
      if (this.next(RBRACE)) return;
    }
  }

  /** One entry of a list or map field. */
  private element(field: FieldPlan, child: MessagePlan | undefined): void {
    const c = this.peek();
    if (this.tally.over(field)) {
      this.skipValue();
      this.tally.count(field);
    } else if (child !== undefined && c === LBRACE) {
      this.tally.enterEntry(field, child);
      this.object(child);
      this.tally.exit();
    } else {
      this.tally.count(field);
      this.other();
    }
  }

  /** A value outside the schema: it and everything in it are counted. */
  private loose(): void {
    if (this.tally.unknownOver()) {
      this.skipValue();
      return;
    }
    this.tally.unknownField(this.current);
    const c = this.peek();
    if (c === LBRACE) {
      this.open();
      this.ws();
      if (this.peek() === RBRACE) {
        this.close();
        return;
      }
      for (;;) {
        if (this.peek() !== QUOTE) throw MALFORMED;
        this.skipString();
        this.colon();
        this.loose();
        if (this.next(RBRACE)) return;
      }
    } else if (c === LBRACKET) {
      this.open();
      this.ws();
      if (this.peek() === RBRACKET) {
        this.close();
        return;
      }
      for (;;) {
        this.loose();
        if (this.next(RBRACKET)) return;
      }
    } else this.primitive();
  }

  /**
   * Skips a value without counting, once an error is sure to be reported: brackets are only
   * counted, not matched, which is enough to find where a well-formed value ends.
   */
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
      else if (b === RBRACE || b === RBRACKET) {
        depth--;
        if (depth === 0) return;
      }
    }
  }

  /** Past a comma (false) or the closing bracket (true) after a value. */
  private next(closing: number): boolean {
    this.ws();
    const c = this.peek();
    if (c === COMMA) {
      this.pos++;
      this.ws();
      return false;
    }
    if (c !== closing) throw MALFORMED;
    this.close();
    return true;
  }

  private open(): void {
    this.nesting++;
    if (this.nesting > MAX_JSON_NESTING) {
      throw new ConnectError(
        `the request body must nest JSON arrays and objects at most ${MAX_JSON_NESTING} levels deep`,
        Code.InvalidArgument,
      );
    }
    this.pos++;
  }

  private close(): void {
    this.nesting--;
    this.pos++;
  }

  private colon(): void {
    this.ws();
    if (this.peek() !== COLON) throw MALFORMED;
    this.pos++;
    this.ws();
  }

  private primitive(): void {
    if (this.peek() === QUOTE) {
      this.skipString();
      return;
    }
    // A number, true, false or null; JSON.parse checks their spelling.
    const start = this.pos;
    for (;;) {
      const b = this.buf[this.pos] ?? 0;
      const literal =
        (b >= 0x30 && b <= 0x39) ||
        (b >= 0x61 && b <= 0x7a) ||
        (b >= 0x41 && b <= 0x5a) ||
        b === 0x2b ||
        b === 0x2d ||
        b === 0x2e;
      if (!literal) break;
      this.pos++;
    }
    if (this.pos === start) throw MALFORMED;
  }

  /** A key, whose characters are looked at: whether it holds escapes. */
  private key(): boolean {
    let escaped = false;
    let i = this.pos + 1;
    for (;;) {
      const b = this.buf[i];
      if (b === undefined) throw MALFORMED;
      if (b === QUOTE) break;
      if (b === BACKSLASH) {
        escaped = true;
        i += 2;
      } else i++;
    }
    this.pos = i + 1;
    return escaped;
  }

  /**
   * A string whose characters do not matter. The closing quote is searched for natively; a string
   * with an escaped quote before it (JSON text in `data`) is read byte by byte instead.
   */
  private skipString(): void {
    const buf = this.buf;
    const quote = buf.indexOf(QUOTE, this.pos + 1);
    if (quote < 0) throw MALFORMED;
    if (buf[quote - 1] !== BACKSLASH) {
      this.pos = quote + 1;
      return;
    }
    let i = this.pos + 1;
    for (;;) {
      const b = buf[i];
      if (b === undefined) throw MALFORMED;
      if (b === QUOTE) break;
      i += b === BACKSLASH ? 2 : 1;
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

/** The field a key names, by its proto name or JSON name; keys with escapes are decoded as compared. */
function lookup(
  plan: MessagePlan,
  buf: Uint8Array,
  start: number,
  end: number,
  escaped: boolean,
): FieldPlan | undefined {
  for (const { key, field } of plan.keys) {
    if (escaped ? escapedKeyIs(buf, start, end, key) : plainKeyIs(buf, start, end, key))
      return field;
  }
  return undefined;
}

/** Field names are ASCII: a key without escapes is its bytes. */
function plainKeyIs(buf: Uint8Array, start: number, end: number, name: string): boolean {
  if (end - start !== name.length) return false;
  for (let i = 0; i < name.length; i++) {
    if (buf[start + i] !== name.charCodeAt(i)) return false;
  }
  return true;
}

/** Compares a key holding escapes (`"event\u005ftypes"` is event_types to JSON.parse). */
function escapedKeyIs(buf: Uint8Array, start: number, end: number, name: string): boolean {
  let j = 0;
  let i = start;
  while (i < end) {
    const b = buf[i] ?? 0;
    let c = b;
    if (b === BACKSLASH) {
      const e = buf[i + 1] ?? 0;
      if (e === 0x75) {
        c = hex4(buf, i + 2);
        i += 6;
      } else {
        c = ESCAPES.get(e) ?? -1;
        i += 2;
      }
    } else i++;
    if (c < 0 || c >= 0x80 || j >= name.length || name.charCodeAt(j) !== c) return false;
    j++;
  }
  return j === name.length;
}

/** The four hex digits of a \u escape as a number; -1 if they are not four hex digits. */
function hex4(buf: Uint8Array, at: number): number {
  let value = 0;
  for (let k = 0; k < 4; k++) {
    const h = (buf[at + k] ?? 0) | 0x20;
    const digit = h >= 0x30 && h <= 0x39 ? h - 0x30 : h >= 0x61 && h <= 0x66 ? h - 0x57 : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

/** JSON's two-character escapes: the character after the backslash, and what it stands for. */
const ESCAPES = new Map<number, number>([
  [0x22, 0x22],
  [0x5c, 0x5c],
  [0x2f, 0x2f],
  [0x62, 0x08],
  [0x66, 0x0c],
  [0x6e, 0x0a],
  [0x72, 0x0d],
  [0x74, 0x09],
]);

// ---------------------------------------------------------------------------------------------
// Bodies: the check on each complete message, before the consumer can have all of it.

/** Checks one complete message of a body; `compressed`: its envelope's compressed flag was set. */
export type MessageCheck = (message: Uint8Array, compressed: boolean) => void | Promise<void>;

/**
 * Passes a request body through unchanged, chunk by chunk, and runs `check` on each complete
 * message before the chunk completing it is passed on, so that a consumer never holds a whole
 * message that was not checked (an error thrown by `check` ends the body instead).
 *
 * - "envelope" (gRPC, gRPC-Web, Connect streaming): 5-byte headers, a flags byte and a big-endian
 *   length. A gRPC-Web trailer (0x80) is passed unchecked; so is everything from a header
 *   declaring more than `maxBytes` (Connect refuses it itself). A compressed message (0x01) is
 *   checked with `compressed` set: `check` decompresses it.
 * - "whole" (Connect unary): the body is one message, so the end of the body completes it: each
 *   chunk is passed on when the next arrives, and the last once the body ended and was checked.
 *   A consumer reads to the end of the body, which Connect does. Past `maxBytes`, nothing is checked.
 *
 * At most one message's bytes are held for the check (up to `maxBytes`); chunks are kept by
 * reference, copied into one array only when a message spans several.
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

async function* envelopedBody(
  body: AsyncIterable<Uint8Array>,
  check: MessageCheck,
  maxBytes: number,
): AsyncGenerator<Uint8Array> {
  const reader = new EnvelopeReader(maxBytes);
  for await (const chunk of body) {
    for (const message of reader.read(chunk)) await check(message.bytes, message.compressed);
    yield chunk;
  }
}

const HEADER_BYTES = 5;
const COMPRESSED = 0x01;
const TRAILER = 0x80;

/** Finds envelopes across chunk boundaries: the complete messages to check. */
class EnvelopeReader {
  private readonly header = new Uint8Array(HEADER_BYTES);
  private headerBytes = 0;
  /** Bytes of the current message still to come; -1: reading a header. */
  private remaining = -1;
  private length = 0;
  private checked = false;
  private compressed = false;
  private parts: Uint8Array[] = [];
  private through = false;
  private done: { bytes: Uint8Array; compressed: boolean }[] = [];

  constructor(private readonly maxBytes: number) {}

  /** The messages `chunk` completes, in order. */
  read(chunk: Uint8Array): { bytes: Uint8Array; compressed: boolean }[] {
    this.done = [];
    let i = 0;
    while (i < chunk.length && !this.through) {
      if (this.remaining < 0) {
        const n = Math.min(HEADER_BYTES - this.headerBytes, chunk.length - i);
        this.header.set(chunk.subarray(i, i + n), this.headerBytes);
        this.headerBytes += n;
        i += n;
        if (this.headerBytes === HEADER_BYTES) this.begin();
      } else {
        const n = Math.min(this.remaining, chunk.length - i);
        if (this.checked) this.parts.push(chunk.subarray(i, i + n));
        this.remaining -= n;
        i += n;
        if (this.remaining === 0) this.end();
      }
    }
    return this.done;
  }

  private begin(): void {
    const flags = this.header[0] ?? 0;
    const view = new DataView(this.header.buffer, this.header.byteOffset, HEADER_BYTES);
    this.length = view.getUint32(1);
    this.headerBytes = 0;
    if (this.length > this.maxBytes) {
      this.through = true;
      return;
    }
    this.checked = (flags & TRAILER) === 0;
    this.compressed = (flags & COMPRESSED) !== 0;
    this.remaining = this.length;
    if (this.remaining === 0) this.end();
  }

  private end(): void {
    const parts = this.parts;
    this.parts = [];
    this.remaining = -1;
    if (this.checked)
      this.done.push({ bytes: joined(parts, this.length), compressed: this.compressed });
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
