import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { EventSchema, GetEventsResponseSchema } from "../gen/orisun/v1/eventstore_pb.js";
import { BATCH_BYTES, carriers as carriersOf } from "../server/api/batched-stream.js";
import { toProtoEvent, toProtoPosition } from "../server/api/convert.js";
import {
  EncodeBuffer,
  preEncoded,
  writeEvent,
  writeEventsResponse,
} from "../server/api/event-encoding.js";
import type { StoredEvent } from "../server/store/types.js";
import { prng } from "./support/prng.js";

const SEED = Number(process.env.TEST_SEED ?? Date.now() % 1_000_000);

/** Strings that stress UTF-8 and varint lengths: empty, ASCII, 2-, 3- and 4-byte characters, lone surrogates. */
function text(random: () => number, max: number): string {
  const pieces = ["", "a", "é", "€", "😀", "\u0000", '"', "\\", "\n", "\ud800", "x".repeat(130)];
  const length = Math.floor(random() * random() * max);
  let out = "";
  while (out.length < length) out += pieces[Math.floor(random() * pieces.length)];
  return out;
}

function bigPosition(random: () => number): bigint {
  const kinds = [
    0n,
    1n,
    127n,
    128n,
    BigInt(Math.floor(random() * 1e6)),
    2n ** 53n - 1n,
    2n ** 53n,
    2n ** 53n + 1n,
    2n ** 63n - 1n,
    2n ** 64n - 1n,
  ];
  return kinds[Math.floor(random() * kinds.length)] ?? 0n;
}

function randomEvent(random: () => number): StoredEvent {
  const dates = [
    0,
    1,
    999,
    1000,
    -1,
    -1001,
    Date.UTC(1969, 11, 31, 23, 59, 59, 999),
    Date.UTC(2026, 11, 2, 1, 2, 3, 456),
    8.64e15,
    -8.64e15,
    Math.floor(random() * 4e12),
  ];
  return {
    boundary: text(random, 40),
    id: text(random, 40),
    type: text(random, 30),
    tags: Array.from({ length: Math.floor(random() * 5) }, () => ({
      key: text(random, 20),
      value: text(random, 300),
    })),
    data: text(random, random() < 0.05 ? 70_000 : 400),
    metadata: text(random, 200),
    position: { commit: bigPosition(random), prepare: bigPosition(random) },
    createdAt: new Date(dates[Math.floor(random() * dates.length)] ?? 0),
  };
}

describe(`writeEvent (seed ${SEED})`, () => {
  it("writes exactly what protobuf-es writes for the same event, for 3,000 random events", () => {
    const random = prng(SEED);
    const out = new EncodeBuffer(16);
    for (let i = 0; i < 3_000; i++) {
      const event = randomEvent(random);
      const size = writeEvent(out, event);
      const bytes = out.take();
      expect(size).toBe(bytes.length);
      expect(Buffer.from(bytes).equals(toBinary(EventSchema, toProtoEvent(event)))).toBe(true);
    }
  });
});

describe(`writeEventsResponse (seed ${SEED})`, () => {
  it("writes exactly what protobuf-es writes for a GetEventsResponse, and preEncoded hands Connect those bytes", () => {
    const random = prng(SEED + 2);
    for (let i = 0; i < 200; i++) {
      // Empty pages, and events whose length prefix takes 1, 2 or 3 bytes.
      const events = Array.from({ length: Math.floor(random() * random() * 60) }, () =>
        randomEvent(random),
      );
      const head = { commit: bigPosition(random), prepare: bigPosition(random) };
      const bytes = writeEventsResponse(new EncodeBuffer(16), events, head);
      const want = toBinary(
        GetEventsResponseSchema,
        create(GetEventsResponseSchema, {
          events: events.map(toProtoEvent),
          head: toProtoPosition(head),
        }),
      );
      expect(Buffer.from(bytes).equals(want)).toBe(true);
      const shell = preEncoded(GetEventsResponseSchema, bytes);
      expect(Buffer.from(toBinary(GetEventsResponseSchema, shell)).equals(want)).toBe(true);
    }
  });
});

describe("carriers", () => {
  /** The envelopes in a carrier's serialisation after its 5-byte marker. */
  function envelopes(carrierBytes: Uint8Array): Uint8Array[] {
    const view = Buffer.from(carrierBytes);
    expect([...view.subarray(0, 5)]).toEqual([0xfa, 0xff, 0xff, 0xff, 0x0f]);
    const out: Uint8Array[] = [];
    for (let at = 5; at < view.length; ) {
      expect(view[at]).toBe(0);
      const length = view.readUInt32BE(at + 1);
      out.push(view.subarray(at + 5, at + 5 + length));
      at += 5 + length;
    }
    return out;
  }

  it("frames every event of a run, in order, in carriers cut after BATCH_BYTES, from its own encoding or a shared one", () => {
    const random = prng(SEED + 1);
    const run = Array.from({ length: 1_500 }, () => randomEvent(random));
    for (const shared of [undefined, (e: StoredEvent) => toBinary(EventSchema, toProtoEvent(e))]) {
      const carriers = carriersOf(run, shared).map((c) => toBinary(EventSchema, c));
      const decoded = carriers.flatMap(envelopes);
      expect(decoded.length).toBe(run.length);
      const wrong = decoded.findIndex((bytes, i) => {
        const event = fromBinary(EventSchema, bytes);
        const want = toBinary(EventSchema, toProtoEvent(run[i] as StoredEvent));
        return event.$unknown !== undefined || !Buffer.from(bytes).equals(want);
      });
      expect(wrong).toBe(-1);
      // Every carrier but the last went just past the threshold with its last event.
      for (const c of carriers.slice(0, -1)) {
        const last = envelopes(c).at(-1)?.length ?? 0;
        expect(c.length - 5).toBeGreaterThanOrEqual(BATCH_BYTES);
        expect(c.length - 5 - last - 5).toBeLessThan(BATCH_BYTES);
      }
    }
  });
});
