import { describe, expect, it } from "vitest";
import {
  MAX_MESSAGE_ID_BYTES,
  MAX_SUBJECT_BYTES,
  subjectMatches,
  validateConsumerName,
  validateMessageId,
  validatePublishSubject,
  validateSubscribeSubject,
} from "../server/broker/pubsub.js";
import { StoreError } from "../server/store/errors.js";

function rejects(fn: () => unknown, kind: string, field: string, rule: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(StoreError);
  const e = caught as StoreError;
  expect(e.kind).toBe(kind);
  expect(e.field).toBe(field);
  expect(e.message).toMatch(rule);
  expect(e.message.startsWith(`${field}: `)).toBe(true);
}

describe("publish subjects", () => {
  it.each(["orders", "orders.created", "a.b.c.d", "$sys-like.x_y", "café.ünï", "a-b.0"])(
    "accepts %s",
    (subject) => expect(validatePublishSubject(subject)).toBe(subject),
  );

  it("rejects an empty subject", () =>
    rejects(() => validatePublishSubject(""), "invalid", "subject", /must not be empty/));

  it.each(["a..b", ".a", "a.", "."])("rejects the empty token in %j", (subject) =>
    rejects(() => validatePublishSubject(subject), "invalid", "subject", /empty tokens/),
  );

  it.each(["a b", "a\tb", "a\nb", "a\rb", "a\u0000b", "a\u007fb", "a\u00a0b", " a"])(
    "rejects whitespace and control characters in %j",
    (subject) =>
      rejects(
        () => validatePublishSubject(subject),
        "invalid",
        "subject",
        /whitespace or control characters \(U\+[0-9A-F]{4} at index \d+\)/,
      ),
  );

  it.each(["a.*", "*", "a.>", ">", "a.b*", "a.>b"])("rejects the wildcard in %j", (subject) =>
    rejects(() => validatePublishSubject(subject), "invalid", "subject", /wildcards/),
  );

  it("limits the length in UTF-8 bytes", () => {
    expect(validatePublishSubject("a".repeat(MAX_SUBJECT_BYTES))).toHaveLength(MAX_SUBJECT_BYTES);
    rejects(
      () => validatePublishSubject("é".repeat(MAX_SUBJECT_BYTES / 2 + 1)),
      "too_large",
      "subject",
      /at most 256 bytes/,
    );
  });

  it("names the field it is given", () =>
    rejects(
      () => validatePublishSubject("", "message.subject"),
      "invalid",
      "message.subject",
      /empty/,
    ));
});

describe("subscribe subjects", () => {
  it.each(["orders", "orders.*", "*.created", "orders.>", ">", "*", "a.*.c.>", "*.*"])(
    "accepts %s",
    (subject) => expect(validateSubscribeSubject(subject)).toBe(subject),
  );

  it.each(["a.b*", "a.*b", "a.>>", "a.b>", "**"])("rejects the partial wildcard in %j", (subject) =>
    rejects(() => validateSubscribeSubject(subject), "invalid", "subject", /whole token/),
  );

  it.each(["a.>.b", ">.a", ">.>"])("rejects %j, where > is not last", (subject) =>
    rejects(() => validateSubscribeSubject(subject), "invalid", "subject", /last token/),
  );

  it.each(["", "a..*", "a b.>", "*."])("applies the common rules to %j", (subject) =>
    rejects(() => validateSubscribeSubject(subject), "invalid", "subject", /./),
  );
});

describe("consumer names", () => {
  it.each(["", "billing", "Billing-2", "a_b", "x".repeat(128)])("accepts %j", (name) =>
    expect(validateConsumerName(name)).toBe(name),
  );

  it.each(["a.b", "a b", "a*", "a>", "a/b", "a\\b", "é", "x".repeat(129)])("rejects %j", (name) =>
    rejects(
      () => validateConsumerName(name),
      "invalid",
      "consumer_name",
      /must be empty .* or match/,
    ),
  );
});

describe("message ids", () => {
  it.each(["", "evt-1", "018f3a1e-7c2b-7d4e-9a10-2b3c4d5e6f70", "ä b"])("accepts %j", (id) =>
    expect(validateMessageId(id)).toBe(id),
  );

  it.each(["a\nb", "a\r\nb", "a\u0000"])("rejects the control character in %j", (id) =>
    rejects(() => validateMessageId(id), "invalid", "id", /control characters/),
  );

  it.each([" a", "a ", "\u00a0a"])("rejects the surrounding whitespace in %j", (id) =>
    rejects(() => validateMessageId(id), "invalid", "id", /whitespace/),
  );

  it("limits the length in UTF-8 bytes", () => {
    expect(validateMessageId("i".repeat(MAX_MESSAGE_ID_BYTES))).toHaveLength(MAX_MESSAGE_ID_BYTES);
    rejects(
      () => validateMessageId("i".repeat(MAX_MESSAGE_ID_BYTES + 1)),
      "too_large",
      "id",
      /256/,
    );
  });
});

describe("subject matching", () => {
  it.each([
    ["orders.created", "orders.created", true],
    ["orders.created", "orders.updated", false],
    ["orders.created", "orders.created.eu", false],
    ["orders.*", "orders.created", true],
    ["orders.*", "orders", false],
    ["orders.*", "orders.created.eu", false],
    ["*.created", "orders.created", true],
    ["*.*", "a.b", true],
    ["*.*", "a", false],
    ["orders.>", "orders.created", true],
    ["orders.>", "orders.created.eu", true],
    ["orders.>", "orders", false],
    [">", "a", true],
    [">", "a.b.c", true],
    ["*", "a", true],
    ["*", "a.b", false],
    ["a.*.c.>", "a.b.c.d.e", true],
    ["a.*.c.>", "a.b.c", false],
    ["a.*.c.>", "a.b.x.d", false],
  ])("%s against %s: %s", (pattern, subject, expected) =>
    expect(subjectMatches(pattern, subject)).toBe(expected),
  );
});
