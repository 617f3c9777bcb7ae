import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import {
  Direction,
  type EventToSaveSchema,
  GetEventsRequestSchema,
  PositionSchema,
  QuerySchema,
  SaveEventsRequestSchema,
} from "../gen/orisun/v1/eventstore_pb.js";
import {
  DEFAULT_COUNT,
  MAX_COUNT,
  toAppendRequest,
  toPosition,
  toQuery,
  toReadRequest,
  type ValidationContext,
  validateBoundary,
} from "../server/api/validate.js";
import type { Limits } from "../server/config.js";
import { quote, StoreError } from "../server/store/errors.js";
import { MAX_POSITION_PART, positionAfter } from "../server/store/types.js";

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
const ctx: ValidationContext = { limits, boundaries: undefined };
const restricted: ValidationContext = { limits, boundaries: ["users", "orders"] };

type EventInit = MessageInitShape<typeof EventToSaveSchema>;
const ev = (extra: EventInit = {}): EventInit => ({
  eventId: "e1",
  eventType: "T",
  data: '{"a":1}',
  ...extra,
});
const save = (init: MessageInitShape<typeof SaveEventsRequestSchema>) =>
  create(SaveEventsRequestSchema, { boundary: "b", ...init });
const read = (init: MessageInitShape<typeof GetEventsRequestSchema>) =>
  create(GetEventsRequestSchema, { boundary: "b", ...init });

function storeError(fn: () => unknown): StoreError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(StoreError);
    return error as StoreError;
  }
  throw new Error("expected a StoreError");
}
function invalid(fn: () => unknown, field: string): StoreError {
  const e = storeError(fn);
  expect(e.kind).toBe("invalid");
  expect(e.field).toBe(field);
  expect(e.message.startsWith(`${field}: `)).toBe(true);
  return e;
}
function tooLarge(fn: () => unknown, field: string): StoreError {
  const e = storeError(fn);
  expect(e.kind).toBe("too_large");
  expect(e.field).toBe(field);
  expect(e.message).toContain(field);
  return e;
}

describe("validateBoundary", () => {
  it.each(["a", "users", "a_1", `a${"b".repeat(62)}`])("accepts %s", (b) => {
    expect(validateBoundary(b, ctx)).toBe(b);
  });
  it.each(["", "A", "1a", "_a", "a-b", "a b", "é", `a${"b".repeat(63)}`, "a\u0000"])(
    "rejects %j",
    (b) => {
      invalid(() => validateBoundary(b, ctx), "boundary");
    },
  );
  it("restricts to the configured set", () => {
    expect(validateBoundary("orders", restricted)).toBe("orders");
    const e = invalid(() => validateBoundary("payments", restricted), "boundary");
    expect(e.message).toContain("payments");
  });
});

describe("toPosition", () => {
  it("passes undefined and valid positions through", () => {
    expect(toPosition(undefined, "p")).toBeUndefined();
    const max = 9_223_372_036_854_775_807n;
    expect(
      toPosition(create(PositionSchema, { commitPosition: max, preparePosition: 3n }), "p"),
    ).toEqual({ commit: max, prepare: 3n });
  });
  it("rejects values above int64 max, naming the sub-field", () => {
    const over = 18_446_744_073_709_551_615n;
    invalid(
      () => toPosition(create(PositionSchema, { commitPosition: over }), "from_position"),
      "from_position.commit_position",
    );
    invalid(
      () =>
        toPosition(
          create(PositionSchema, { preparePosition: 9_223_372_036_854_775_808n }),
          "from_position",
        ),
      "from_position.prepare_position",
    );
  });
});

describe("toQuery", () => {
  it("no query or no criteria matches everything", () => {
    expect(toQuery(undefined, "criteria", ctx)).toEqual([]);
    expect(toQuery(create(QuerySchema, {}), "criteria", ctx)).toEqual([]);
  });
  it("converts criteria", () => {
    const q = create(QuerySchema, {
      criteria: [{ eventTypes: ["A", "B"], tags: [{ key: "k", value: "" }] }],
    });
    expect(toQuery(q, "criteria", ctx)).toEqual([
      { types: ["A", "B"], tags: [{ key: "k", value: "" }] },
    ]);
  });
  it("rejects a criterion with neither tags nor types", () => {
    const q = create(QuerySchema, { criteria: [{ eventTypes: ["A"] }, {}] });
    invalid(() => toQuery(q, "criteria", ctx), "criteria.criteria[1]");
  });
  it("limits criteria, types and tags", () => {
    const many = Array.from({ length: 5 }, () => ({ eventTypes: ["A"] }));
    tooLarge(() => toQuery(create(QuerySchema, { criteria: many }), "q", ctx), "q.criteria");
    const types = create(QuerySchema, { criteria: [{ eventTypes: ["a", "b", "c", "d", "e"] }] });
    tooLarge(() => toQuery(types, "q", ctx), "q.criteria[0].event_types");
    const tags = create(QuerySchema, {
      criteria: [{ tags: Array.from({ length: 4 }, (_, i) => ({ key: `k${i}`, value: "v" })) }],
    });
    tooLarge(() => toQuery(tags, "q", ctx), "q.criteria[0].tags");
  });
  it("checks tag keys and values in UTF-8 bytes", () => {
    const q = (key: string, value: string) =>
      create(QuerySchema, { criteria: [{ tags: [{ key, value }] }] });
    expect(toQuery(q("éééé", "12345678"), "q", ctx)).toHaveLength(1); // 8 bytes each
    tooLarge(() => toQuery(q("ééééé", "v"), "q", ctx), "q.criteria[0].tags[0].key"); // 5 chars, 10 bytes
    tooLarge(() => toQuery(q("k", "ééééé"), "q", ctx), "q.criteria[0].tags[0].value");
    invalid(() => toQuery(q("", "v"), "q", ctx), "q.criteria[0].tags[0].key");
    invalid(() => toQuery(q("k\u0000", "v"), "q", ctx), "q.criteria[0].tags[0].key");
  });
  it("rejects empty and NUL event types", () => {
    invalid(
      () => toQuery(create(QuerySchema, { criteria: [{ eventTypes: [""] }] }), "q", ctx),
      "q.criteria[0].event_types[0]",
    );
    invalid(
      () => toQuery(create(QuerySchema, { criteria: [{ eventTypes: ["A", "\u0000"] }] }), "q", ctx),
      "q.criteria[0].event_types[1]",
    );
  });
});

describe("toAppendRequest", () => {
  it("converts a valid request", () => {
    const r = toAppendRequest(
      save({
        events: [ev({ tags: [{ key: "k", value: "v" }], metadata: '{"m":1}' })],
        consistencyCondition: {
          consistencyMarker: { commitPosition: 2n, preparePosition: 5n },
          criteria: { criteria: [{ tags: [{ key: "k", value: "v" }] }] },
        },
      }),
      ctx,
    );
    expect(r).toEqual({
      boundary: "b",
      events: [
        {
          id: "e1",
          type: "T",
          tags: [{ key: "k", value: "v" }],
          data: '{"a":1}',
          metadata: '{"m":1}',
        },
      ],
      condition: {
        after: { commit: 2n, prepare: 5n },
        query: [{ types: [], tags: [{ key: "k", value: "v" }] }],
      },
    });
  });

  it("without condition, condition is undefined; without marker, it is {0,0}", () => {
    expect(toAppendRequest(save({ events: [ev()] }), ctx).condition).toBeUndefined();
    const r = toAppendRequest(
      save({ events: [ev()], consistencyCondition: { criteria: { criteria: [] } } }),
      ctx,
    );
    expect(r.condition?.after).toEqual({ commit: 0n, prepare: 0n });
  });

  it("gives an empty event_id a UUIDv7", () => {
    const r = toAppendRequest(save({ events: [ev({ eventId: "" }), ev({ eventId: "" })] }), ctx);
    const [a, b] = r.events.map((e) => e.id);
    expect(a).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(b).not.toBe(a);
  });

  it("allows empty metadata", () => {
    expect(toAppendRequest(save({ events: [ev({ metadata: "" })] }), ctx).events[0]?.metadata).toBe(
      "",
    );
  });

  it("rejects a bad or unconfigured boundary", () => {
    invalid(() => toAppendRequest(save({ boundary: "Bad", events: [ev()] }), ctx), "boundary");
    invalid(() => toAppendRequest(save({ boundary: "", events: [ev()] }), ctx), "boundary");
    invalid(() => toAppendRequest(save({ boundary: "b", events: [ev()] }), restricted), "boundary");
  });

  it("rejects an empty events list and too many events", () => {
    invalid(() => toAppendRequest(save({ events: [] }), ctx), "events");
    const six = Array.from({ length: 6 }, (_, i) => ev({ eventId: `e${i}` }));
    tooLarge(() => toAppendRequest(save({ events: six }), ctx), "events");
    expect(toAppendRequest(save({ events: six.slice(0, 5) }), ctx).events).toHaveLength(5);
  });

  it.each([
    ["empty event_type", { eventType: "" }, "events[1].event_type"],
    ["NUL in event_type", { eventType: "A\u0000" }, "events[1].event_type"],
    ["NUL in event_id", { eventId: "x\u0000" }, "events[1].event_id"],
    ["empty data", { data: "" }, "events[1].data"],
    ["non-JSON data", { data: "{nope" }, "events[1].data"],
    ["non-JSON metadata", { metadata: "meta" }, "events[1].metadata"],
    ["empty tag key", { tags: [{ key: "", value: "v" }] }, "events[1].tags[0].key"],
  ] as [string, EventInit, string][])("rejects %s", (_label, extra, field) => {
    invalid(
      () => toAppendRequest(save({ events: [ev({ eventId: "ok" }), ev(extra)] }), ctx),
      field,
    );
  });

  it("limits JSON nesting to 512 levels", () => {
    const big: ValidationContext = {
      limits: { ...limits, maxEventDataBytes: 10_000 },
      boundaries: undefined,
    };
    const nested = (n: number) => `${"[".repeat(n)}${"]".repeat(n)}`;
    expect(toAppendRequest(save({ events: [ev({ data: nested(512) })] }), big).events).toHaveLength(
      1,
    );
    invalid(
      () => toAppendRequest(save({ events: [ev({ data: nested(513) })] }), big),
      "events[0].data",
    );
    invalid(
      () => toAppendRequest(save({ events: [ev({ metadata: nested(513) })] }), big),
      "events[0].metadata",
    );
    // Brackets inside strings do not count.
    const str = JSON.stringify({ s: `\\"${"[".repeat(600)}` });
    expect(toAppendRequest(save({ events: [ev({ data: str })] }), big).events).toHaveLength(1);
  });

  it.each([
    ["data over the limit", { data: JSON.stringify("x".repeat(99)) }, "events[0].data"],
    ["multibyte data over the limit", { data: JSON.stringify("€".repeat(40)) }, "events[0].data"],
    ["metadata over the limit", { metadata: JSON.stringify("x".repeat(99)) }, "events[0].metadata"],
    [
      "too many tags",
      { tags: Array.from({ length: 4 }, (_, i) => ({ key: `k${i}`, value: "v" })) },
      "events[0].tags",
    ],
    ["multibyte tag key", { tags: [{ key: "ééééé", value: "v" }] }, "events[0].tags[0].key"],
    ["multibyte tag value", { tags: [{ key: "k", value: "ééééé" }] }, "events[0].tags[0].value"],
    ["long event_type", { eventType: "T".repeat(257) }, "events[0].event_type"],
    ["long event_id", { eventId: "i".repeat(257) }, "events[0].event_id"],
  ] as [string, EventInit, string][])("rejects %s as too large", (_label, extra, field) => {
    tooLarge(() => toAppendRequest(save({ events: [ev(extra)] }), ctx), field);
  });

  it("rejects a duplicate event_id within one request, naming both", () => {
    const e = invalid(
      () =>
        toAppendRequest(
          save({ events: [ev({ eventId: "x" }), ev({ eventId: "y" }), ev({ eventId: "x" })] }),
          ctx,
        ),
      "events[2].event_id",
    );
    expect(e.message).toContain("events[0]");
  });

  it("validates the condition's marker and criteria", () => {
    invalid(
      () =>
        toAppendRequest(
          save({
            events: [ev()],
            consistencyCondition: {
              consistencyMarker: { commitPosition: 18_446_744_073_709_551_615n },
              criteria: { criteria: [{ eventTypes: ["T"] }] },
            },
          }),
          ctx,
        ),
      "consistency_condition.consistency_marker.commit_position",
    );
    invalid(
      () =>
        toAppendRequest(
          save({ events: [ev()], consistencyCondition: { criteria: { criteria: [{}] } } }),
          ctx,
        ),
      "consistency_condition.criteria.criteria[0]",
    );
  });
});

describe("toReadRequest", () => {
  it("applies defaults", () => {
    expect(toReadRequest(read({}), ctx)).toEqual({
      boundary: "b",
      query: [],
      from: undefined,
      count: DEFAULT_COUNT,
      direction: "asc",
      maxBytes: ctx.limits.maxReadBytes,
    });
    expect(DEFAULT_COUNT).toBe(100);
  });
  it("clamps count to 10,000", () => {
    expect(MAX_COUNT).toBe(10_000);
    expect(toReadRequest(read({ count: 20_000 }), ctx).count).toBe(10_000);
    expect(toReadRequest(read({ count: 10_000 }), ctx).count).toBe(10_000);
    expect(toReadRequest(read({ count: 1 }), ctx).count).toBe(1);
  });
  it("reads DESC and from_position", () => {
    const r = toReadRequest(
      read({
        direction: Direction.DESC,
        fromPosition: { commitPosition: 3n, preparePosition: 7n },
      }),
      ctx,
    );
    expect(r.direction).toBe("desc");
    expect(r.from).toEqual({ commit: 3n, prepare: 7n });
  });
  it("rejects unknown directions", () => {
    const e = invalid(() => toReadRequest(read({ direction: 7 as Direction }), ctx), "direction");
    expect(e.message).toContain("7");
  });
  it("rejects bad boundary, position and criteria", () => {
    invalid(() => toReadRequest(read({ boundary: "" }), ctx), "boundary");
    invalid(() => toReadRequest(read({ boundary: "payments" }), restricted), "boundary");
    invalid(
      () =>
        toReadRequest(read({ fromPosition: { commitPosition: 18_446_744_073_709_551_615n } }), ctx),
      "from_position.commit_position",
    );
    invalid(
      () => toReadRequest(read({ criteria: { criteria: [{}] } }), ctx),
      "criteria.criteria[0]",
    );
  });
});

describe("quoting input and the positions at the end of the log", () => {
  it("quotes at most 100 characters, escaped, never half a surrogate pair", () => {
    expect(quote("orders")).toBe('"orders"');
    expect(quote("a\nb")).toBe('"a\\nb"');
    const long = "x".repeat(1_000_000);
    expect(quote(long)).toBe(`"${"x".repeat(100)}"… (1000000 characters)`);
    const emoji = `${"x".repeat(99)}😀tail`; // the pair straddles the cut
    expect(quote(emoji)).toBe(`"${"x".repeat(99)}"… (${emoji.length} characters)`);
    expect(() => validateBoundary(long, ctx)).toThrow(/^boundary: .{0,250}$/);
  });

  it("refuses text with a lone surrogate", () => {
    invalid(
      () => toAppendRequest(save({ boundary: "b", events: [ev({ eventType: "T\ud800" })] }), ctx),
      "events[0].event_type",
    );
    invalid(
      () => toAppendRequest(save({ boundary: "b", events: [ev({ data: '"\udc00"' })] }), ctx),
      "events[0].data",
    );
  });

  it("finds the position after any valid one, and none after the last", () => {
    expect(positionAfter({ commit: 3n, prepare: 7n })).toEqual({ commit: 3n, prepare: 8n });
    expect(positionAfter({ commit: 3n, prepare: MAX_POSITION_PART })).toEqual({
      commit: 4n,
      prepare: 0n,
    });
    expect(
      positionAfter({ commit: MAX_POSITION_PART, prepare: MAX_POSITION_PART }),
    ).toBeUndefined();
  });
});
