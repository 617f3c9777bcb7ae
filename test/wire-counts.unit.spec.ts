import {
  create,
  type DescMessage,
  fromBinary,
  fromJson,
  fromJsonString,
  type JsonValue,
  type MessageInitShape,
  type MessageShape,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import { StructSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import {
  ExtensionNumberResponseSchema,
  ServerReflection,
} from "../gen/grpc/reflection/v1/reflection_pb.js";
import {
  Admin,
  CreateApiKeyRequestSchema,
  CreateUserRequestSchema,
  ImportEventsRequestSchema,
} from "../gen/orisun/v1/admin_pb.js";
import {
  type CriterionSchema,
  EventStore,
  GetEventsRequestSchema,
  ReadForDecisionRequestSchema,
  SaveEventsRequestSchema,
  SubscribeToEventStoreRequestSchema,
} from "../gen/orisun/v1/eventstore_pb.js";
import { toConnectError } from "../server/api/errors.js";
import { toImportRequest } from "../server/api/import-validate.js";
import {
  toAppendRequest,
  toReadRequest,
  toSubscribeRequest,
  type ValidationContext,
} from "../server/api/validate.js";
import { toDecisionReadRequest } from "../server/api/validate-decision.js";
import {
  checkBinaryCounts,
  checkJsonCounts,
  countedBody,
  countLimitsOf,
  MAX_UNKNOWN_FIELDS,
} from "../server/api/wire-counts.js";
import { validateGrants } from "../server/auth/grants.js";
import type { Limits } from "../server/config.js";
import type { StoreError } from "../server/store/errors.js";

const limits: Limits = {
  maxEventsPerSave: 5,
  maxEventDataBytes: 100,
  maxTagsPerEvent: 3,
  maxTagBytes: 8,
  maxRequestBytes: 4096,
  maxCriteria: 4,
  maxMessageBytes: 100,
  maxReadBytes: 4 * 1024 * 1024,
};
const counts = countLimitsOf(limits);
const ctx: ValidationContext = { limits, boundaries: undefined };

/** config.ts's defaults. */
const defaults = countLimitsOf({
  maxEventsPerSave: 10_000,
  maxEventDataBytes: 1024 * 1024,
  maxTagsPerEvent: 64,
  maxTagBytes: 256,
  maxRequestBytes: 4 * 1024 * 1024,
  maxCriteria: 100,
  maxMessageBytes: 1024 * 1024,
  maxReadBytes: 4 * 1024 * 1024,
});

/** The error a check throws, or undefined. */
function refusal(check: () => void): ConnectError | undefined {
  try {
    check();
  } catch (error) {
    if (error instanceof ConnectError) return error;
    throw error;
  }
  return undefined;
}

/** What a client gets from the validator (through errors.ts), or undefined. */
function validatorRefusal(validate: () => unknown): { code: Code; message: string } | undefined {
  try {
    validate();
  } catch (error) {
    const connect = toConnectError(error, undefined, "r1", "test");
    return { code: connect.code, message: connect.rawMessage };
  }
  return undefined;
}

const tagsOf = (n: number) => Array.from({ length: n }, (_, i) => ({ key: `k${i}`, value: "v" }));
const typesOf = (n: number) => Array.from({ length: n }, (_, i) => `T${i}`);
const criteriaOf = (n: number): CriterionInit[] =>
  Array.from({ length: n }, (_, i) => ({ eventTypes: [`T${i}`] }));
const ev = (extra: object = {}) => ({ eventType: "T", data: '{"a":1}', ...extra });
const eventsOf = (n: number) => Array.from({ length: n }, () => ev());
const imported = (i: number, extra: object = {}) => ({
  eventId: `e${i}`,
  eventType: "T",
  data: "{}",
  position: { commitPosition: BigInt(i + 1), preparePosition: BigInt(i + 1) },
  dateCreated: { seconds: 1n, nanos: 0 },
  ...extra,
});
const grantsOf = (n: number) =>
  Array.from({ length: n }, () => ({ boundary: "b", access: "read" }));

interface LimitCase {
  readonly name: string;
  readonly schema: DescMessage;
  readonly expected: string;
  readonly code: Code;
  readonly over: Uint8Array;
  readonly overJson: readonly string[];
  readonly atLimit: Uint8Array | undefined;
  readonly atLimitJson: string | undefined;
  /** The validator's refusal of the decoded `over` message. */
  readonly validator: () => { code: Code; message: string } | undefined;
  /**
   * The other limits `over` breaks, worded as the validator words them: the scan may report any
   * of them instead of `expected` (the validator's first), as it reports the first passed in the bytes.
   */
  readonly others?: readonly string[];
}

function limitCase<Desc extends DescMessage>(
  name: string,
  schema: Desc,
  validate: (message: MessageShape<Desc>) => unknown,
  expected: string,
  over: MessageInitShape<Desc>,
  atLimit?: MessageInitShape<Desc>,
  code: Code = Code.ResourceExhausted,
): LimitCase {
  const overMessage = create(schema, over);
  const overBytes = toBinary(schema, overMessage);
  const at = atLimit === undefined ? undefined : create(schema, atLimit);
  return {
    name,
    schema,
    expected,
    code,
    over: overBytes,
    overJson: [
      toJsonString(schema, overMessage),
      toJsonString(schema, overMessage, { useProtoFieldName: true, prettySpaces: 2 }),
    ],
    atLimit: at === undefined ? undefined : toBinary(schema, at),
    atLimitJson: at === undefined ? undefined : toJsonString(schema, at),
    validator: () => validatorRefusal(() => validate(fromBinary(schema, overBytes))),
  };
}

const append = (m: MessageShape<typeof SaveEventsRequestSchema>) => toAppendRequest(m, ctx);
const read = (m: MessageShape<typeof GetEventsRequestSchema>) => toReadRequest(m, ctx);
const decide = (m: MessageShape<typeof ReadForDecisionRequestSchema>) =>
  toDecisionReadRequest(m, ctx);
type CriterionInit = MessageInitShape<typeof CriterionSchema>;
const query = (criteria: CriterionInit[]) => ({ criteria });
const dq = (criteria: CriterionInit[]) => ({ criteria: query(criteria) });

const cases: LimitCase[] = [
  limitCase(
    "SaveEvents events",
    SaveEventsRequestSchema,
    append,
    "events: must contain at most 5 events, got 6",
    { boundary: "b", events: eventsOf(6) },
    { boundary: "b", events: eventsOf(5) },
  ),
  limitCase(
    "SaveEvents events[i].tags",
    SaveEventsRequestSchema,
    append,
    "events[1].tags: must have at most 3 tags, got 4",
    { boundary: "b", events: [ev(), ev({ tags: tagsOf(4) })] },
    { boundary: "b", events: [ev(), ev({ tags: tagsOf(3) })] },
  ),
  limitCase(
    "SaveEvents condition criteria",
    SaveEventsRequestSchema,
    append,
    "consistency_condition.criteria.criteria: must have at most 4 criteria, got 5",
    {
      boundary: "b",
      events: [ev()],
      consistencyCondition: { criteria: { criteria: criteriaOf(5) } },
    },
    {
      boundary: "b",
      events: [ev()],
      consistencyCondition: { criteria: { criteria: criteriaOf(4) } },
    },
  ),
  limitCase(
    "SaveEvents condition event_types",
    SaveEventsRequestSchema,
    append,
    "consistency_condition.criteria.criteria[1].event_types: must have at most 4 types, got 5",
    {
      boundary: "b",
      events: [ev()],
      consistencyCondition: {
        criteria: query([{ eventTypes: ["A"] }, { eventTypes: typesOf(5) }]),
      },
    },
    {
      boundary: "b",
      events: [ev()],
      consistencyCondition: {
        criteria: query([{ eventTypes: ["A"] }, { eventTypes: typesOf(4) }]),
      },
    },
  ),
  limitCase(
    "SaveEvents condition tags",
    SaveEventsRequestSchema,
    append,
    "consistency_condition.criteria.criteria[0].tags: must have at most 3 tags, got 4",
    {
      boundary: "b",
      events: [ev()],
      consistencyCondition: { criteria: query([{ tags: tagsOf(4) }]) },
    },
    {
      boundary: "b",
      events: [ev()],
      consistencyCondition: { criteria: query([{ tags: tagsOf(3) }]) },
    },
  ),
  limitCase(
    "GetEvents criteria",
    GetEventsRequestSchema,
    read,
    "criteria.criteria: must have at most 4 criteria, got 5",
    { boundary: "b", criteria: { criteria: criteriaOf(5) } },
    { boundary: "b", criteria: { criteria: criteriaOf(4) } },
  ),
  limitCase(
    "GetEvents criteria[i].tags",
    GetEventsRequestSchema,
    read,
    "criteria.criteria[2].tags: must have at most 3 tags, got 4",
    { boundary: "b", criteria: query([...criteriaOf(2), { tags: tagsOf(4) }]) },
    { boundary: "b", criteria: query([...criteriaOf(2), { tags: tagsOf(3) }]) },
  ),
  limitCase(
    "SubscribeToEvents event_types",
    SubscribeToEventStoreRequestSchema,
    (m) => toSubscribeRequest(m, ctx),
    "criteria.criteria[0].event_types: must have at most 4 types, got 5",
    { boundary: "b", criteria: query([{ eventTypes: typesOf(5) }]) },
    { boundary: "b", criteria: query([{ eventTypes: typesOf(4) }]) },
  ),
  limitCase(
    "ReadForDecision queries",
    ReadForDecisionRequestSchema,
    decide,
    "queries: must contain at most 4 queries (ORISUN_MAX_CRITERIA), got 5",
    { boundary: "b", queries: Array.from({ length: 5 }, () => dq(criteriaOf(1))) },
    { boundary: "b", queries: Array.from({ length: 4 }, () => dq(criteriaOf(1))) },
  ),
  limitCase(
    "ReadForDecision criteria of one query",
    ReadForDecisionRequestSchema,
    decide,
    "queries[1].criteria.criteria: must have at most 4 criteria, got 5",
    { boundary: "b", queries: [dq(criteriaOf(1)), dq(criteriaOf(5))] },
    { boundary: "b", queries: [dq(criteriaOf(4))] },
  ),
  limitCase(
    "ReadForDecision criteria in all queries together",
    ReadForDecisionRequestSchema,
    decide,
    "queries: must have at most 4 criteria in all queries together (ORISUN_MAX_CRITERIA), got 6",
    { boundary: "b", queries: [dq(criteriaOf(3)), dq(criteriaOf(3))] },
    { boundary: "b", queries: [dq(criteriaOf(2)), dq(criteriaOf(2))] },
  ),
  limitCase(
    "ReadForDecision tags",
    ReadForDecisionRequestSchema,
    decide,
    "queries[1].criteria.criteria[0].tags: must have at most 3 tags, got 4",
    { boundary: "b", queries: [dq(criteriaOf(1)), dq([{ tags: tagsOf(4) }])] },
    { boundary: "b", queries: [dq(criteriaOf(1)), dq([{ tags: tagsOf(3) }])] },
  ),
  limitCase(
    "ImportEvents events",
    ImportEventsRequestSchema,
    (m) => toImportRequest(m, ctx),
    "events: must contain at most 5 events (ORISUN_MAX_EVENTS_PER_SAVE), got 6",
    { boundary: "b", events: Array.from({ length: 6 }, (_, i) => imported(i)) },
    { boundary: "b", events: Array.from({ length: 5 }, (_, i) => imported(i)) },
  ),
  limitCase(
    "ImportEvents events[i].tags",
    ImportEventsRequestSchema,
    (m) => toImportRequest(m, ctx),
    "events[0].tags: must have at most 3 tags, got 4",
    { boundary: "b", events: [imported(0, { tags: tagsOf(4) })] },
    { boundary: "b", events: [imported(0, { tags: tagsOf(3) })] },
  ),
  limitCase(
    "CreateUser grants",
    CreateUserRequestSchema,
    (m) => validateGrants(m.grants),
    "grants: at most 256 grants, got 257",
    { name: "ada", grants: grantsOf(257) },
    { name: "ada", grants: grantsOf(256) },
    Code.InvalidArgument,
  ),
  limitCase(
    "CreateApiKey grants",
    CreateApiKeyRequestSchema,
    (m) => validateGrants(m.grants),
    "grants: at most 256 grants, got 257",
    { name: "key", grants: grantsOf(257) },
    { name: "key", grants: grantsOf(256) },
    Code.InvalidArgument,
  ),
  // Several limits broken: the validator reports the one it checks first; the scan any of them.
  {
    ...limitCase(
      "events' count and an event's tags",
      SaveEventsRequestSchema,
      append,
      "events: must contain at most 5 events, got 6",
      { boundary: "b", events: [ev({ tags: tagsOf(4) }), ...eventsOf(5)] },
    ),
    others: ["events[0].tags: must have at most 3 tags, got 4"],
  },
  {
    ...limitCase(
      "events' tags and the condition, which comes first on the wire",
      SaveEventsRequestSchema,
      append,
      "events[2].tags: must have at most 3 tags, got 4",
      {
        boundary: "b",
        events: [ev(), ev(), ev({ tags: tagsOf(4) }), ev({ tags: tagsOf(5) })],
        consistencyCondition: { criteria: { criteria: criteriaOf(5) } },
      },
    ),
    others: [
      "events[3].tags: must have at most 3 tags, got 5",
      "consistency_condition.criteria.criteria: must have at most 4 criteria, got 5",
    ],
  },
  {
    ...limitCase(
      "a criterion's event_types and its tags",
      GetEventsRequestSchema,
      read,
      "criteria.criteria[0].event_types: must have at most 4 types, got 5",
      {
        boundary: "b",
        criteria: query([{ tags: tagsOf(4), eventTypes: typesOf(5) }]),
      },
    ),
    others: ["criteria.criteria[0].tags: must have at most 3 tags, got 4"],
  },
  {
    ...limitCase(
      "queries' count, their criteria and the criteria of all queries",
      ReadForDecisionRequestSchema,
      decide,
      "queries: must contain at most 4 queries (ORISUN_MAX_CRITERIA), got 5",
      { boundary: "b", queries: [dq(criteriaOf(5)), ...Array.from({ length: 4 }, () => dq([]))] },
    ),
    others: [
      "queries[0].criteria.criteria: must have at most 4 criteria, got 5",
      "queries: must have at most 4 criteria in all queries together (ORISUN_MAX_CRITERIA), got 5",
    ],
  },
];

describe("checkBinaryCounts and checkJsonCounts refuse what the validator refuses, as it words it", () => {
  for (const c of cases) {
    it(c.name, () => {
      const validator = c.validator();
      expect(validator).toEqual({ code: c.code, message: c.expected });
      const binary = refusal(() => checkBinaryCounts(c.schema, c.over, counts));
      const accepted = [c.expected, ...(c.others ?? [])];
      expect(accepted).toContain(binary?.rawMessage);
      expect(binary?.code).toBe(c.code);
      for (const json of c.overJson) {
        const refused = refusal(() => checkJsonCounts(c.schema, json, counts));
        expect(accepted, json).toContain(refused?.rawMessage);
        expect(refused?.code).toBe(c.code);
      }
      if (c.atLimit !== undefined && c.atLimitJson !== undefined) {
        const atLimit = c.atLimit;
        const atLimitJson = c.atLimitJson;
        expect(() => checkBinaryCounts(c.schema, atLimit, counts)).not.toThrow();
        expect(() => checkJsonCounts(c.schema, atLimitJson, counts)).not.toThrow();
      }
    });
  }

  it("prefixes paths for a message of the ImportEvents stream, as import-handler.ts does", () => {
    const request = create(ImportEventsRequestSchema, {
      boundary: "b",
      events: [imported(0, { tags: tagsOf(4) })],
    });
    const bytes = toBinary(ImportEventsRequestSchema, request);
    const error = refusal(() =>
      checkBinaryCounts(ImportEventsRequestSchema, bytes, counts, "messages[2]"),
    );
    let expected = "";
    try {
      toImportRequest(request, ctx);
    } catch (e) {
      expected = (e as StoreError).within("messages[2]").message;
    }
    expect(error?.rawMessage).toBe(expected);
    expect(expected).toBe("messages[2].events[0].tags: must have at most 3 tags, got 4");
  });

  it("gives every list field of every request message a limit: the validator's where it has one", () => {
    const limited: string[] = [];
    const generic: string[] = [];
    const seen = new Set<DescMessage>();
    const visit = (message: DescMessage) => {
      if (seen.has(message)) return;
      seen.add(message);
      for (const field of message.fields) {
        if (field.fieldKind === "list" || field.fieldKind === "map") {
          const name = `${message.typeName}.${field.name}`;
          const rule = counts.fields.get(field);
          if (rule === undefined) generic.push(name);
          else limited.push(`${name} ≤ ${rule.max}`);
        }
        if (field.message !== undefined) visit(field.message);
      }
    };
    for (const service of [EventStore, Admin, Health, ServerReflection]) {
      for (const method of service.methods) visit(method.input);
    }
    expect(limited.sort()).toEqual([
      "orisun.v1.CreateApiKeyRequest.grants ≤ 256",
      "orisun.v1.CreateUserRequest.grants ≤ 256",
      "orisun.v1.Criterion.event_types ≤ 4",
      "orisun.v1.Criterion.tags ≤ 3",
      "orisun.v1.Event.tags ≤ 3",
      "orisun.v1.EventToSave.tags ≤ 3",
      "orisun.v1.ImportEventsRequest.events ≤ 5",
      "orisun.v1.Query.criteria ≤ 4",
      "orisun.v1.ReadForDecisionRequest.queries ≤ 4",
      "orisun.v1.SaveEventsRequest.events ≤ 5",
    ]);
    expect(generic).toEqual([]);
  });
});

describe("the wire format, read as protobuf-es reads it", () => {
  it("counts a known field whatever its record's wire type, as protobuf-es does", () => {
    // Field 2 (events) with wire type 0: protobuf-es still reads a length and a message.
    const bytes = Uint8Array.from([0x1a, 0x01, 0x62, ...times(6, [0x10, 0x00])]);
    expect(fromBinary(SaveEventsRequestSchema, bytes).events).toHaveLength(6);
    expect(
      refusal(() => checkBinaryCounts(SaveEventsRequestSchema, bytes, counts))?.rawMessage,
    ).toBe("events: must contain at most 5 events, got 6");
  });

  it("counts the elements of packed and unpacked lists of numbers", () => {
    const at = create(ExtensionNumberResponseSchema, {
      extensionNumber: Array.from({ length: 10_000 }, (_, i) => i * 1000),
    });
    const packed = toBinary(ExtensionNumberResponseSchema, at);
    expect(() => checkBinaryCounts(ExtensionNumberResponseSchema, packed, counts)).not.toThrow();
    const over = toBinary(
      ExtensionNumberResponseSchema,
      create(ExtensionNumberResponseSchema, { extensionNumber: [...at.extensionNumber, 300] }),
    );
    expect(
      refusal(() => checkBinaryCounts(ExtensionNumberResponseSchema, over, counts))?.rawMessage,
    ).toBe("extension_number: must have at most 10000 entries, got 10001");
    // The same numbers unpacked (one record each, field 2, wire type 0), and split in two packed runs.
    const unpacked: number[] = [];
    for (let i = 0; i <= 10_000; i++) unpacked.push(0x10, ...varint(i));
    expect(
      fromBinary(ExtensionNumberResponseSchema, Uint8Array.from(unpacked)).extensionNumber,
    ).toHaveLength(10_001);
    expect(
      refusal(() =>
        checkBinaryCounts(ExtensionNumberResponseSchema, Uint8Array.from(unpacked), counts),
      )?.rawMessage,
    ).toBe("extension_number: must have at most 10000 entries, got 10001");
    const run = (from: number, to: number) => {
      const values = Array.from({ length: to - from }, (_, i) => varint(from + i)).flat();
      return [0x12, ...varint(values.length), ...values];
    };
    const split = Uint8Array.from([...run(0, 6000), ...run(6000, 10_001)]);
    expect(fromBinary(ExtensionNumberResponseSchema, split).extensionNumber).toHaveLength(10_001);
    expect(
      refusal(() => checkBinaryCounts(ExtensionNumberResponseSchema, split, counts))?.rawMessage,
    ).toBe("extension_number: must have at most 10000 entries, got 10001");
  });

  it("counts map entries, and follows map values into their messages", () => {
    const keys = (n: number) =>
      Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, "v"]));
    const at = toBinary(ErrorInfoSchema, create(ErrorInfoSchema, { metadata: keys(10_000) }));
    expect(() => checkBinaryCounts(ErrorInfoSchema, at, counts)).not.toThrow();
    const over = toBinary(ErrorInfoSchema, create(ErrorInfoSchema, { metadata: keys(10_001) }));
    expect(refusal(() => checkBinaryCounts(ErrorInfoSchema, over, counts))?.rawMessage).toBe(
      "metadata: must have at most 10000 entries, got 10001",
    );
    const json = JSON.stringify({ reason: "r", metadata: keys(10_001) });
    expect(refusal(() => checkJsonCounts(ErrorInfoSchema, json, counts))?.rawMessage).toBe(
      "metadata: must have at most 10000 entries, got 10001",
    );
    // google.protobuf.Struct: a map of Values, which hold Structs and ListValues.
    const nested = toBinary(
      StructSchema,
      fromJson(StructSchema, { a: { b: Array.from({ length: 10_001 }, () => 1) } }),
    );
    expect(refusal(() => checkBinaryCounts(StructSchema, nested, counts))?.rawMessage).toBe(
      "fields[0].struct_value.fields[0].list_value.values: must have at most 10000 entries, got 10001",
    );
  });

  it("refuses messages nested more than 32 deep", () => {
    const deep = (n: number): JsonValue => (n === 0 ? {} : { a: deep(n - 1) });
    // Each Struct level is two messages (the Struct, and the Value holding it).
    const ok = toBinary(StructSchema, fromJson(StructSchema, deep(15)));
    expect(() => checkBinaryCounts(StructSchema, ok, counts)).not.toThrow();
    const tooDeep = toBinary(StructSchema, fromJson(StructSchema, deep(20)));
    const error = refusal(() => checkBinaryCounts(StructSchema, tooDeep, counts));
    expect(error?.code).toBe(Code.InvalidArgument);
    expect(error?.rawMessage).toBe(
      "google.protobuf.Struct: must nest messages at most 32 levels deep",
    );
  });

  it("counts unknown fields at any depth, up to a cap for the whole request", () => {
    const unknown = (n: number) => times(n, [0xf8, 0x06, 0x01]); // field 111, varint 1
    const top = (n: number) => Uint8Array.from([0x1a, 0x01, 0x62, ...unknown(n)]);
    expect(fromBinary(SaveEventsRequestSchema, top(3)).$unknown).toHaveLength(3);
    expect(() =>
      checkBinaryCounts(SaveEventsRequestSchema, top(MAX_UNKNOWN_FIELDS), counts),
    ).not.toThrow();
    const error = refusal(() =>
      checkBinaryCounts(SaveEventsRequestSchema, top(MAX_UNKNOWN_FIELDS + 1), counts),
    );
    expect(error?.code).toBe(Code.ResourceExhausted);
    expect(error?.rawMessage).toBe(
      "orisun.v1.SaveEventsRequest: must carry at most 10000 fields unknown to this server, at any depth (number 10001 was in orisun.v1.SaveEventsRequest)",
    );
    // 5,000 at the top and 5,001 in an event's tag.
    const inner = unknown(5001);
    const tag = [0x1a, ...varint(inner.length), ...inner];
    const event = [0x12, ...varint(tag.length), ...tag];
    const spread = Uint8Array.from([...unknown(5000), ...event]);
    expect(
      refusal(() => checkBinaryCounts(SaveEventsRequestSchema, spread, counts))?.rawMessage,
    ).toBe(
      "orisun.v1.SaveEventsRequest: must carry at most 10000 fields unknown to this server, at any depth (number 10001 was in orisun.v1.Tag)",
    );
  });

  it("refuses groups", () => {
    const bytes = Uint8Array.from([0x1a, 0x01, 0x62, 0x4b, 0x08, 0x01, 0x4c]); // field 9: group
    expect(fromBinary(SaveEventsRequestSchema, bytes).$unknown).toHaveLength(1);
    const error = refusal(() => checkBinaryCounts(SaveEventsRequestSchema, bytes, counts));
    expect(error?.code).toBe(Code.InvalidArgument);
    expect(error?.rawMessage).toBe(
      "the request body is not a valid message: field 9 of orisun.v1.SaveEventsRequest is a group (wire type 3), which this API never uses",
    );
  });

  it("leaves bytes protobuf-es cannot read to it: a message cut anywhere passes", () => {
    const bytes = toBinary(
      SaveEventsRequestSchema,
      create(SaveEventsRequestSchema, {
        boundary: "b",
        events: [ev({ tags: tagsOf(3), eventId: "x" }), ev({ metadata: "{}" })],
        consistencyCondition: {
          consistencyMarker: { commitPosition: 300n, preparePosition: 1n << 40n },
          criteria: query([{ eventTypes: typesOf(4), tags: tagsOf(3) }]),
        },
      }),
    );
    let failures = 0;
    for (let n = 0; n < bytes.length; n++) {
      const cut = bytes.subarray(0, n);
      expect(() => checkBinaryCounts(SaveEventsRequestSchema, cut, counts)).not.toThrow();
      try {
        fromBinary(SaveEventsRequestSchema, cut);
      } catch {
        failures++;
      }
    }
    expect(failures).toBeGreaterThan(bytes.length / 2);
    for (const garbage of [[0x00], [0xff, 0xff], [0x16], [0x12, 0xff, 0xff, 0xff, 0xff, 0xff]]) {
      const bad = Uint8Array.from(garbage);
      expect(() => checkBinaryCounts(SaveEventsRequestSchema, bad, counts)).not.toThrow();
      expect(() => fromBinary(SaveEventsRequestSchema, bad)).toThrow();
    }
  });

  it("reports a limit passed before bytes protobuf-es cannot read (it decodes up to them)", () => {
    const bytes = Uint8Array.from([...times(6, [0x12, 0x00]), 0x12, 0x05, 0x0a]);
    expect(() => fromBinary(SaveEventsRequestSchema, bytes)).toThrow();
    expect(
      refusal(() => checkBinaryCounts(SaveEventsRequestSchema, bytes, counts))?.rawMessage,
    ).toBe("events: must contain at most 5 events, got at least 6");
    const json = `{"events":[${Array(6).fill("{}").join(",")},{"eventType":"T",`;
    expect(refusal(() => checkJsonCounts(SaveEventsRequestSchema, json, counts))?.rawMessage).toBe(
      "events: must contain at most 5 events, got at least 6",
    );
  });

  it("sees the counts protobuf-es decodes, on random and broken messages", () => {
    const random = mulberry32(20240601);
    let decoded = 0;
    let refused = 0;
    for (let run = 0; run < 4000; run++) {
      const bytes = Uint8Array.from(randomSaveEvents(random));
      let message: MessageShape<typeof SaveEventsRequestSchema> | undefined;
      try {
        message = fromBinary(SaveEventsRequestSchema, bytes);
      } catch {
        message = undefined;
      }
      const error = refusal(() => checkBinaryCounts(SaveEventsRequestSchema, bytes, counts));
      // A stray byte may start a group, which protobuf-es skips and this scan refuses.
      if (message === undefined || error?.rawMessage.includes("is a group")) continue;
      decoded++;
      const criteria = message.consistencyCondition?.criteria?.criteria ?? [];
      const over =
        message.events.length > 5 ||
        message.events.some((e) => e.tags.length > 3) ||
        criteria.length > 4 ||
        criteria.some((c) => c.tags.length > 3 || c.eventTypes.length > 4);
      expect(error !== undefined, `run ${run}: ${Buffer.from(bytes).toString("hex")}`).toBe(over);
      if (error !== undefined) {
        refused++;
        expect(error.code).toBe(Code.ResourceExhausted);
      }
    }
    expect(decoded).toBeGreaterThan(500);
    expect(refused).toBeGreaterThan(100);
  });
});

describe("JSON", () => {
  it("finds keys by proto name and JSON name, also spelled with escapes", () => {
    const json = '{"boundary":"b","criteria":{"criteria":[{"event_types":["a","b","c","d","e"]}]}}';
    expect(refusal(() => checkJsonCounts(GetEventsRequestSchema, json, counts))?.rawMessage).toBe(
      "criteria.criteria[0].event_types: must have at most 4 types, got 5",
    );
    const escaped = `{"ev\\u0065nts" : [ {}, {} ,{},{},{},{}],"\\u0062oundary":"b"}`;
    expect(fromJsonString(SaveEventsRequestSchema, escaped).events).toHaveLength(6);
    expect(
      refusal(() => checkJsonCounts(SaveEventsRequestSchema, escaped, counts))?.rawMessage,
    ).toBe("events: must contain at most 5 events, got 6");
    const bytes = new TextEncoder().encode(`\ufeff ${escaped}`);
    expect(refusal(() => checkJsonCounts(SaveEventsRequestSchema, bytes, counts))?.rawMessage).toBe(
      "events: must contain at most 5 events, got 6",
    );
  });

  it("reads strings holding brackets, braces, commas and escaped quotes as strings", () => {
    const tricky = 'a]}\\"[{,\\"\\\\';
    const event = `{"eventType":"${tricky}","data":"{\\"x\\":[1,{\\"y\\":\\"]\\"}]}","tags":[{"key":"${tricky}","value":"\\\\"}]}`;
    const body = (n: number) => `{"boundary":"b","events":[${Array(n).fill(event).join(" , ")}]}`;
    expect(fromJsonString(SaveEventsRequestSchema, body(5)).events[0]?.eventType).toBe(
      'a]}"[{,"\\',
    );
    expect(() => checkJsonCounts(SaveEventsRequestSchema, body(5), counts)).not.toThrow();
    expect(
      refusal(() => checkJsonCounts(SaveEventsRequestSchema, body(6), counts))?.rawMessage,
    ).toBe("events: must contain at most 5 events, got 6");
  });

  it("lets null and empty lists through, and leaves malformed JSON to the parser", () => {
    expect(() => checkJsonCounts(SaveEventsRequestSchema, '{"events":null}', counts)).not.toThrow();
    expect(() => checkJsonCounts(SaveEventsRequestSchema, '{"events":[]}', counts)).not.toThrow();
    const good = toJsonString(
      SaveEventsRequestSchema,
      create(SaveEventsRequestSchema, {
        boundary: "b",
        events: [ev({ tags: tagsOf(3) }), ev()],
        consistencyCondition: { criteria: query([{ eventTypes: typesOf(4) }]) },
      }),
    );
    for (let n = 0; n < good.length; n++) {
      expect(() =>
        checkJsonCounts(SaveEventsRequestSchema, good.slice(0, n), counts),
      ).not.toThrow();
    }
    for (const bad of [
      "",
      "{",
      "[",
      '{"events":[}',
      '{"events"}',
      "{,}",
      '{"events":[{]}',
      "nul",
    ]) {
      expect(() => checkJsonCounts(SaveEventsRequestSchema, bad, counts)).not.toThrow();
    }
  });

  it("counts what JSON.parse would build outside the schema", () => {
    expect(() => checkJsonCounts(SaveEventsRequestSchema, '{"foo":[1,2]}', counts)).not.toThrow();
    const values = Array(10_000).fill("[]").join(",");
    const error = refusal(() =>
      checkJsonCounts(SaveEventsRequestSchema, `{"foo":[${values}]}`, counts),
    );
    expect(error?.code).toBe(Code.ResourceExhausted);
    expect(error?.rawMessage).toBe(
      "orisun.v1.SaveEventsRequest: must carry at most 10000 JSON values outside its schema (unknown keys and what they hold, values of the wrong type), at any depth (number 10001 was in orisun.v1.SaveEventsRequest)",
    );
    const wrongType = `{"events":[{"eventType":[${values}]}]}`;
    expect(
      refusal(() => checkJsonCounts(SaveEventsRequestSchema, wrongType, counts))?.rawMessage,
    ).toMatch(
      /^orisun\.v1\.SaveEventsRequest: must carry at most 10000 JSON values .* \(number 10001 was in orisun\.v1\.EventToSave\)$/,
    );
  });

  it("refuses arrays and objects nested more than 64 deep", () => {
    const nested = (n: number) => `{"foo":${"[".repeat(n)}${"]".repeat(n)}}`;
    expect(() => checkJsonCounts(SaveEventsRequestSchema, nested(63), counts)).not.toThrow();
    const error = refusal(() => checkJsonCounts(SaveEventsRequestSchema, nested(64), counts));
    expect(error?.code).toBe(Code.InvalidArgument);
    expect(error?.rawMessage).toBe(
      "the request body must nest JSON arrays and objects at most 64 levels deep",
    );
  });

  it("sees the counts protobuf-es decodes, on random JSON", () => {
    const random = mulberry32(7);
    for (let run = 0; run < 1500; run++) {
      const text = randomSaveEventsJson(random);
      const message = fromJsonString(SaveEventsRequestSchema, text);
      const criteria = message.consistencyCondition?.criteria?.criteria ?? [];
      const over =
        message.events.length > 5 ||
        message.events.some((e) => e.tags.length > 3) ||
        criteria.length > 4 ||
        criteria.some((c) => c.tags.length > 3 || c.eventTypes.length > 4);
      const error = refusal(() => checkJsonCounts(SaveEventsRequestSchema, text, counts));
      expect(error !== undefined, text).toBe(over);
    }
  });
});

describe("large messages", () => {
  it("refuses 2,000,000 empty events at once, in binary and in JSON", () => {
    const binary = new Uint8Array(4_000_003);
    binary.set([0x1a, 0x01, 0x62]);
    for (let i = 3; i < binary.length; i += 2) binary[i] = 0x12;
    let start = performance.now();
    const error = refusal(() => checkBinaryCounts(SaveEventsRequestSchema, binary, defaults));
    const binaryMs = performance.now() - start;
    expect(error?.code).toBe(Code.ResourceExhausted);
    expect(error?.rawMessage).toBe("events: must contain at most 10000 events, got 2000000");

    const json = `{"boundary":"b","events":[${"{},".repeat(1_299_999)}{}]}`;
    start = performance.now();
    const jsonError = refusal(() => checkJsonCounts(SaveEventsRequestSchema, json, defaults));
    const jsonMs = performance.now() - start;
    expect(jsonError?.rawMessage).toBe("events: must contain at most 10000 events, got 1300000");
    console.log(
      `scan of 2,000,000 empty events: binary ${binaryMs.toFixed(1)} ms; 1,300,000 in JSON (${(json.length / 1e6).toFixed(1)} MB) ${jsonMs.toFixed(1)} ms`,
    );
  });
});

describe("countedBody", () => {
  const ok = toBinary(
    SaveEventsRequestSchema,
    create(SaveEventsRequestSchema, { boundary: "b", events: eventsOf(2) }),
  );
  const over = toBinary(
    SaveEventsRequestSchema,
    create(SaveEventsRequestSchema, { boundary: "b", events: eventsOf(6) }),
  );
  const check = (message: Uint8Array) =>
    checkBinaryCounts(SaveEventsRequestSchema, message, counts);

  it("checks each envelope before passing on the chunk that completes it, wherever chunks end", async () => {
    const messages = [ok, new Uint8Array(0), ok, over, ok];
    const stream = concat(messages.map((m) => envelope(0, m)));
    const ends: number[] = [];
    let offset = 0;
    for (const m of messages) {
      offset += 5 + m.length;
      ends.push(offset);
    }
    const overEnd = ends[3] ?? 0;
    const splits: Uint8Array[][] = [[stream], Array.from(stream, (b) => Uint8Array.of(b))];
    for (let k = 1; k < stream.length; k++)
      splits.push([stream.subarray(0, k), stream.subarray(k)]);
    for (const chunks of splits) {
      const passed: number[] = [];
      let seen = 0;
      const checked: number[] = [];
      const body = countedBody(
        source(chunks),
        "envelope",
        (message) => {
          checked.push(seen);
          check(message);
        },
        1024,
      );
      const error = await drain(body, (chunk) => {
        passed.push(...chunk);
        seen += chunk.length;
      });
      expect(error?.rawMessage).toBe("events: must contain at most 5 events, got 6");
      // Nothing of a chunk holding the refused message's last byte was passed on.
      expect(passed.length).toBeLessThan(overEnd);
      expect(Uint8Array.from(passed)).toEqual(stream.subarray(0, passed.length));
      // Each message was checked before its last byte was passed on.
      expect(checked).toHaveLength(4);
      checked.forEach((at, i) => {
        expect(at).toBeLessThan(ends[i] ?? 0);
      });
    }
  });

  it("passes a body of good messages through unchanged", async () => {
    const stream = concat([envelope(0, ok), envelope(0, ok), envelope(0x80, over)]);
    for (let k = 1; k < stream.length; k += 7) {
      const out: number[] = [];
      const error = await drain(
        countedBody(source([stream.subarray(0, k), stream.subarray(k)]), "envelope", check, 1024),
        (chunk) => out.push(...chunk),
      );
      expect(error).toBeUndefined();
      expect(Uint8Array.from(out)).toEqual(stream);
    }
  });

  it("hands a compressed message to the check as such, and passes gRPC-Web trailers and oversized envelopes unchecked", async () => {
    const compressed: Uint8Array[] = [];
    const error = await drain(
      countedBody(
        source([concat([envelope(0x01, over), envelope(0, ok)])]),
        "envelope",
        (message, isCompressed) => {
          if (isCompressed) compressed.push(message);
          else check(message);
        },
        1024,
      ),
      () => {},
    );
    expect(error).toBeUndefined();
    expect(compressed).toEqual([over]);
    for (const stream of [
      concat([envelope(0x80, over)]),
      concat([envelope(0, new Uint8Array(2000)), envelope(0, over)]),
    ]) {
      const error = await drain(countedBody(source([stream]), "envelope", check, 1024), () => {});
      expect(error).toBeUndefined();
    }
  });

  it("checks a whole body at its end, holding its last chunk until then", async () => {
    const yielded: number[] = [];
    const chunks = [over.subarray(0, 3), over.subarray(3, 10), over.subarray(10)];
    const error = await drain(countedBody(source(chunks), "whole", check, 1024), (chunk) =>
      yielded.push(...chunk),
    );
    expect(error?.rawMessage).toBe("events: must contain at most 5 events, got 6");
    expect(Uint8Array.from(yielded)).toEqual(over.subarray(0, 10));

    const checkedAt: number[] = [];
    const out: number[] = [];
    const good = [ok.subarray(0, 1), ok.subarray(1, 2), ok.subarray(2)];
    expect(
      await drain(
        countedBody(
          source(good),
          "whole",
          (message) => {
            checkedAt.push(out.length);
            expect(message).toEqual(ok);
          },
          1024,
        ),
        (chunk) => out.push(...chunk),
      ),
    ).toBeUndefined();
    expect(Uint8Array.from(out)).toEqual(ok);
    expect(checkedAt).toEqual([2]);

    let called = 0;
    const big = await drain(
      countedBody(
        source(chunks),
        "whole",
        () => {
          called++;
        },
        10,
      ),
      () => {},
    );
    expect(big).toBeUndefined();
    expect(called).toBe(0);
    await drain(
      countedBody(
        source([]),
        "whole",
        () => {
          called++;
        },
        10,
      ),
      () => {},
    );
    expect(called).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------

function times(n: number, bytes: readonly number[]): number[] {
  return Array.from({ length: n }, () => bytes).flat();
}

function varint(n: number): number[] {
  const out: number[] = [];
  let v = n;
  while (v > 0x7f) {
    out.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}

function envelope(flags: number, message: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + message.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

async function* source(chunks: readonly Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const chunk of chunks) yield chunk;
}

/** Reads a body to its end; the ConnectError it ended with, if any. */
async function drain(
  body: AsyncIterable<Uint8Array>,
  each: (chunk: Uint8Array) => void,
): Promise<ConnectError | undefined> {
  try {
    for await (const chunk of body) each(chunk);
  } catch (error) {
    if (error instanceof ConnectError) return error;
    throw error;
  }
  return undefined;
}

function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A SaveEventsRequest's bytes built from records: known fields with wrong wire types at times,
 * unknown fields, lengths that are off by one or two now and then (messages that run past their
 * end, or are cut), and entries up to a few over each limit.
 */
function randomSaveEvents(random: () => number): number[] {
  const pick = (n: number) => Math.floor(random() * n);
  const text = () => Array.from({ length: pick(3) }, () => 0x61 + pick(3));
  const len = (no: number, body: number[]) => {
    const wire = random() < 0.05 ? ([0, 1, 5][pick(3)] ?? 2) : 2;
    const skew = random() < 0.04 ? pick(5) - 2 : 0;
    return [(no << 3) | wire, ...varint(Math.max(0, body.length + skew)), ...body];
  };
  const unknown = () => {
    const no = 10 + pick(5);
    switch (pick(4)) {
      case 0:
        return [(no << 3) | 0, 0x96, 0x01];
      case 1:
        return [(no << 3) | 1, ...times(8, [7])];
      case 2:
        return [(no << 3) | 5, 1, 2, 3, 4];
      default:
        return len(no, text());
    }
  };
  const records = (count: number, make: () => number[]) =>
    Array.from({ length: count }, () => (random() < 0.1 ? unknown() : make())).flat();
  const tag = () => records(pick(3), () => len(1 + pick(2), text()));
  const tags = (no: number) => records(pick(6), () => len(no, tag()));
  const criterion = () => [...tags(1), ...records(pick(7), () => len(2, text()))];
  const query = () => records(pick(7), () => len(1, criterion()));
  const condition = () =>
    records(1 + pick(2), () => (random() < 0.5 ? len(2, query()) : len(1, [])));
  const event = () => [...records(pick(2), () => len(2, text())), ...tags(3)];
  const out = [
    ...records(pick(9), () => len(2, event())),
    ...(random() < 0.4 ? len(1, condition()) : []),
    ...(random() < 0.3 ? records(pick(4), () => len(2, event())) : []),
  ];
  if (random() < 0.1) out.splice(pick(out.length + 1), 0, pick(256));
  return out;
}

/** A SaveEventsRequest as JSON: both key spellings, escapes, whitespace, tricky strings. */
function randomSaveEventsJson(random: () => number): string {
  const pick = (n: number) => Math.floor(random() * n);
  const space = () => [" ", "", "\n", "\t ", ""][pick(5)] ?? "";
  const str = () => JSON.stringify(["a", '"]', "[{", "\\", "},\n", "é", "\u2028"][pick(7)]);
  const key = (name: string, json: string) => {
    const k = random() < 0.5 ? name : json;
    return random() < 0.2 ? `"\\u00${k.charCodeAt(0).toString(16)}${k.slice(1)}"` : `"${k}"`;
  };
  const object = (members: string[]) =>
    `{${space()}${members.filter((m) => m !== "").join(`${space()},${space()}`)}${space()}}`;
  const list = (n: number, make: () => string) =>
    `[${space()}${Array.from({ length: n }, make).join(`,${space()}`)}${space()}]`;
  const member = (k: string, v: string) => `${k}${space()}:${space()}${v}`;
  const tag = () =>
    object([member(key("key", "key"), str()), member(key("value", "value"), str())]);
  const tags = () => list(pick(6), tag);
  const criterion = () =>
    object([
      random() < 0.7 ? member(key("tags", "tags"), tags()) : "",
      random() < 0.7 ? member(key("event_types", "eventTypes"), list(pick(7), str)) : "",
    ]);
  const event = () =>
    object([member(key("event_type", "eventType"), str()), member(key("tags", "tags"), tags())]);
  const condition = () =>
    object([
      member(
        key("criteria", "criteria"),
        object([member(key("criteria", "criteria"), list(pick(7), criterion))]),
      ),
    ]);
  return object([
    member(key("boundary", "boundary"), str()),
    member(key("events", "events"), random() < 0.1 ? "null" : list(pick(8), event)),
    random() < 0.5 ? member(key("consistency_condition", "consistencyCondition"), condition()) : "",
  ]);
}
