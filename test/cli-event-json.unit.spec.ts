import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { EventSchema } from "../gen/orisun/v1/eventstore_pb.js";
import { eventFromJson, eventToJson } from "../server/cli/event-json.js";
import { prng } from "./support/prng.js";

const random = prng(13);
const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)] as T;
const text = () =>
  Array.from({ length: Math.floor(random() * 12) }, () =>
    pick(["a", "Z", "é", '"', "\\", "\n", "\u0001", "😀", " ", "{", "0"]),
  ).join("");

function randomEvent() {
  return create(EventSchema, {
    eventId: text(),
    eventType: text(),
    tags: Array.from({ length: Math.floor(random() * 3) }, () => ({ key: text(), value: text() })),
    data: JSON.stringify({ s: text(), n: random() }),
    metadata: random() < 0.5 ? "" : JSON.stringify({ m: text() }),
    position:
      random() < 0.1
        ? undefined
        : {
            commitPosition: BigInt(Math.floor(random() * 2 ** 53)) * (random() < 0.2 ? 2047n : 1n),
            preparePosition: random() < 0.1 ? 0n : BigInt(Math.floor(random() * 2 ** 53)),
          },
    dateCreated:
      random() < 0.1
        ? undefined
        : {
            seconds: BigInt(
              Math.floor(random() * 253_402_300_799) - (random() < 0.2 ? 62_000_000_000 : 0),
            ),
            nanos: pick([0, 123_000_000, 123_456_000, 123_456_789, 999_999_999]),
          },
    boundary: pick(["", "orders", "a_1"]),
  });
}

describe("the CLI's Event JSON", () => {
  it("writes what protobuf-es writes, and reads it back to the same message", () => {
    for (let i = 0; i < 2_000; i++) {
      const event = randomEvent();
      const line = eventToJson(event);
      expect(line).toBe(toJsonString(EventSchema, event, { alwaysEmitImplicit: true }));
      expect(create(EventSchema, eventFromJson(line))).toEqual(event);
    }
  });

  it("reads what protobuf-es reads: proto names, numbers, offsets, null as default", () => {
    const line = JSON.stringify({
      event_id: "e1",
      event_type: "T",
      tags: [{ key: "k", value: "v" }],
      data: "{}",
      metadata: null,
      position: { commit_position: 7, preparePosition: "8" },
      date_created: "2026-12-02T03:04:05.5+01:00",
    });
    expect(create(EventSchema, eventFromJson(line))).toEqual(fromJsonString(EventSchema, line));
  });

  it("refuses what protobuf-es refuses, naming the field", () => {
    const refused: [string, RegExp][] = [
      ['{"eventId":"a","extra":1}', /unknown field "extra"/],
      ['{"eventId":1}', /eventId: must be a string/],
      ['{"tags":{}}', /tags: must be an array/],
      ['{"tags":[{"key":"k","x":"1"}]}', /tags\[0\]: unknown field "x"/],
      ['{"position":{"commitPosition":"-1"}}', /position.commitPosition: must be an unsigned/],
      ['{"position":{"commitPosition":"18446744073709551616"}}', /position.commitPosition/],
      ['{"position":{"commitPosition":1.5}}', /position.commitPosition/],
      ['{"dateCreated":"2026-12-02 03:04:05Z"}', /dateCreated: must be an RFC 3339/],
      ['{"dateCreated":"2026-13-02T03:04:05Z"}', /dateCreated: must be a valid date/],
      ['{"eventId":"a","event_id":"b"}', /given twice/],
      ["[]", /must be a JSON object/],
      ["{", /JSON/],
    ];
    for (const [line, message] of refused) {
      expect(() => eventFromJson(line), line).toThrow(message);
      expect(() => fromJsonString(EventSchema, line), line).toThrow();
    }
  });
});
