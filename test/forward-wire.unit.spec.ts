import { describe, expect, it } from "vitest";
import {
  encodeFrame,
  type Frame,
  FrameError,
  FrameKind,
  FrameReader,
} from "../server/process/forward-wire.js";
import { StoreError } from "../server/store/errors.js";
import type { AppendRequest } from "../server/store/types.js";

const conditional: AppendRequest = {
  boundary: "orders-ü",
  events: [
    {
      id: "0b6f5c8e-1d2a-4f7e-9c3b-2a1d0e9f8c7b",
      type: "OrderPlaced",
      tags: [
        { key: "order", value: "42" },
        { key: "emoji", value: "🚀" },
      ],
      data: '{"total":12.5,"note":"\\u0000 and \\"quotes\\""}',
      metadata: '{"by":"ada"}',
    },
    { id: "e2", type: "T", tags: [], data: "{}", metadata: "" },
  ],
  condition: {
    after: { commit: 9_223_372_036_854_775_807n, prepare: 7n },
    query: [
      { types: ["OrderPlaced", "OrderCancelled"], tags: [{ key: "order", value: "42" }] },
      { types: [], tags: [] },
    ],
  },
};

const frames: Frame[] = [
  {
    kind: FrameKind.append,
    id: 1,
    request: conditional,
    trace: "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
  },
  { kind: FrameKind.append, id: 0xffff_ffff, request: { boundary: "b", events: [] }, trace: "" },
  { kind: FrameKind.cancel, id: 7 },
  { kind: FrameKind.goodbye, id: 0 },
  { kind: FrameKind.ok, id: 3, position: { commit: 12n, prepare: 9_000_000_000n } },
];

describe("the frames workers forward appends with", () => {
  it("decode to what was encoded, whichever way the bytes are cut", () => {
    const bytes = Buffer.concat(frames.map(encodeFrame));
    for (let cut = 0; cut <= bytes.length; cut++) {
      const reader = new FrameReader(1 << 20);
      const got = [...reader.push(bytes.subarray(0, cut)), ...reader.push(bytes.subarray(cut))];
      expect(got, `cut at ${cut}`).toEqual(frames);
    }
    // One byte at a time.
    const reader = new FrameReader(1 << 20);
    const got = [...bytes].flatMap((b) => reader.push(Buffer.of(b)));
    expect(got).toEqual(frames);
  });

  it("carry a store error's kind, rule, field and metadata", () => {
    const error = new StoreError(
      "condition_failed",
      "an event matching…",
      "consistency_condition",
      {
        metadata: { boundary: "orders", marker_commit_position: "4" },
      },
    );
    const [frame] = new FrameReader(1 << 20).push(
      encodeFrame({ kind: FrameKind.error, id: 5, error }),
    );
    expect(frame?.kind).toBe(FrameKind.error);
    const back = (frame as Extract<Frame, { kind: 4 }>).error;
    expect(back).toBeInstanceOf(StoreError);
    expect([back.kind, back.rule, back.field, back.metadata, back.message]).toEqual([
      error.kind,
      error.rule,
      error.field,
      error.metadata,
      error.message,
    ]);
    const bare = new StoreError("unavailable", "no database");
    const [again] = new FrameReader(1 << 20).push(
      encodeFrame({ kind: FrameKind.error, id: 6, error: bare }),
    );
    expect((again as Extract<Frame, { kind: 4 }>).error.field).toBeUndefined();
  });

  it("refuse a frame longer than the limit before buffering it", () => {
    const bytes = encodeFrame({ kind: FrameKind.append, id: 1, request: conditional, trace: "" });
    const reader = new FrameReader(bytes.length - 5);
    expect(() => reader.push(bytes.subarray(0, 4))).toThrow(FrameError);
  });

  it("refuse broken frames: unknown kind, counts past the end, trailing bytes, a bad error", () => {
    const framed = (kind: number, payload: Buffer) => {
      const head = Buffer.alloc(9);
      head.writeUInt32BE(5 + payload.length, 0);
      head.writeUInt32BE(1, 4);
      head.writeUInt8(kind, 8);
      return Buffer.concat([head, payload]);
    };
    const u32 = (n: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(n);
      return b;
    };
    const str = (s: string) => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);
    const cases: [string, Buffer][] = [
      ["unknown kind", framed(99, Buffer.alloc(0))],
      ["a string longer than the frame", framed(FrameKind.append, u32(1000))],
      [
        "a million events in a few bytes",
        framed(FrameKind.append, Buffer.concat([str("b"), u32(1_000_000)])),
      ],
      ["bytes after the payload", framed(FrameKind.cancel, Buffer.of(1))],
      ["an ok without its position", framed(FrameKind.ok, Buffer.alloc(8))],
      ["an error that is not JSON", framed(FrameKind.error, str("{"))],
      ["an error of an unknown kind", framed(FrameKind.error, str('{"kind":"boom","rule":"x"}'))],
      ["a length below the header", Buffer.concat([u32(2), Buffer.alloc(2)])],
    ];
    for (const [name, bytes] of cases) {
      expect(() => new FrameReader(1 << 20).push(bytes), name).toThrow(FrameError);
    }
  });
});
