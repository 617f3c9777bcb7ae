import { create, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import type { Position, StoredEvent } from "../store/types.js";

/**
 * orisun.v1.Event in protobuf's binary format, written straight from a stored event: the same
 * bytes as `toBinary(EventSchema, toProtoEvent(event))` (test/event-encoding.spec.ts checks
 * that over random events), without building a message, a Timestamp and a Position for each
 * event and without protobuf-es's growing buffer. Catch-up sends every event of a boundary
 * once, so this is the per-event cost of a subscription's history.
 *
 * Field order and proto3 presence as protobuf-es writes them: fields 1 to 8 in order, a scalar
 * only when it is not its default, the position and the timestamp always (they are set
 * messages, even when all their fields are zero), each tag as a message.
 */

/**
 * Where events are written: grown by doubling. A scratch buffer is reused (`take` copies what was
 * written out and shrinks it back after an unusually large event); a one-off answer keeps its
 * bytes (`finish`).
 */
export class EncodeBuffer {
  bytes: Buffer;
  length = 0;

  constructor(private readonly initial = 64 * 1024) {
    this.bytes = Buffer.allocUnsafe(initial);
  }

  /** Room for `more` bytes after `length`. */
  reserve(more: number): void {
    const needed = this.length + more;
    if (needed <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < needed) size *= 2;
    const grown = Buffer.allocUnsafe(size);
    this.bytes.copy(grown, 0, 0, this.length);
    this.bytes = grown;
  }

  /** A copy of what was written, and an empty buffer of at most 4 times its first size. */
  take(): Uint8Array {
    const out = new Uint8Array(this.length);
    out.set(this.bytes.subarray(0, this.length));
    this.length = 0;
    if (this.bytes.length > 4 * this.initial) this.bytes = Buffer.allocUnsafe(this.initial);
    return out;
  }

  /** What was written, without a copy: the buffer is not to be written again. */
  finish(): Uint8Array {
    return this.bytes.subarray(0, this.length);
  }
}

/** Appends `event`'s encoding to `out`; returns its length in bytes. */
export function writeEvent(out: EncodeBuffer, event: StoredEvent): number {
  const idBytes = Buffer.byteLength(event.id);
  const typeBytes = Buffer.byteLength(event.type);
  const dataBytes = Buffer.byteLength(event.data);
  const metadataBytes = Buffer.byteLength(event.metadata);
  const boundaryBytes = Buffer.byteLength(event.boundary);
  const tagBytes: number[] = [];
  let tagsSize = 0;
  for (const tag of event.tags) {
    const key = Buffer.byteLength(tag.key);
    const value = Buffer.byteLength(tag.value);
    const inner = stringFieldSize(key) + stringFieldSize(value);
    tagBytes.push(key, value, inner);
    tagsSize += 1 + varintSize(inner) + inner;
  }
  const positionBytes = positionSize(event.position);
  const ms = event.createdAt.getTime();
  const seconds = Math.floor(ms / 1000);
  const nanos = (ms - seconds * 1000) * 1_000_000;
  const timestampSize =
    (seconds === 0 ? 0 : 1 + int64Size(seconds)) + (nanos === 0 ? 0 : 1 + varintSize(nanos));
  const size =
    stringFieldSize(idBytes) +
    stringFieldSize(typeBytes) +
    tagsSize +
    stringFieldSize(dataBytes) +
    stringFieldSize(metadataBytes) +
    1 +
    varintSize(positionBytes) +
    positionBytes +
    1 +
    varintSize(timestampSize) +
    timestampSize +
    stringFieldSize(boundaryBytes);

  out.reserve(size);
  const buf = out.bytes;
  let at = out.length;
  at = writeString(buf, at, 0x0a, event.id, idBytes);
  at = writeString(buf, at, 0x12, event.type, typeBytes);
  event.tags.forEach((tag, i) => {
    const inner = tagBytes[i * 3 + 2] ?? 0;
    buf[at++] = 0x1a;
    at = writeVarint(buf, at, inner);
    at = writeString(buf, at, 0x0a, tag.key, tagBytes[i * 3] ?? 0);
    at = writeString(buf, at, 0x12, tag.value, tagBytes[i * 3 + 1] ?? 0);
  });
  at = writeString(buf, at, 0x22, event.data, dataBytes);
  at = writeString(buf, at, 0x2a, event.metadata, metadataBytes);
  buf[at++] = 0x32;
  at = writeVarint(buf, at, positionBytes);
  at = writePosition(buf, at, event.position);
  buf[at++] = 0x3a;
  at = writeVarint(buf, at, timestampSize);
  if (seconds !== 0) {
    buf[at++] = 0x08;
    at = writeInt64(buf, at, seconds);
  }
  if (nanos !== 0) {
    buf[at++] = 0x10;
    at = writeVarint(buf, at, nanos);
  }
  at = writeString(buf, at, 0x42, event.boundary, boundaryBytes);
  out.length = at;
  return size;
}

/**
 * A GetEventsResponse: each event as field 1, then the head as field 2, as protobuf-es writes
 * them, in `out` (finished: not to be written again). Each event is written after room for the longest length prefix and moved back onto the
 * prefix it needs, so the events are encoded once.
 */
export function writeEventsResponse(
  out: EncodeBuffer,
  events: readonly StoredEvent[],
  head: Position,
): Uint8Array {
  for (const event of events) {
    out.reserve(6);
    const start = out.length;
    out.length += 6;
    const size = writeEvent(out, event);
    const buf = out.bytes;
    buf[start] = 0x0a;
    const body = writeVarint(buf, start + 1, size);
    if (body < start + 6) buf.copyWithin(body, start + 6, start + 6 + size);
    out.length = body + size;
  }
  const headBytes = positionSize(head);
  out.reserve(2 + headBytes);
  const buf = out.bytes;
  buf[out.length++] = 0x12;
  out.length = writeVarint(buf, out.length, headBytes);
  out.length = writePosition(buf, out.length, head);
  return out.finish();
}

/**
 * A message of `schema` that protobuf-es serialises as exactly `bytes`, an encoding of such a
 * message: every field unset and one unknown field holding the bytes after the first tag (Connect
 * offers no way to hand it bytes; unknown fields are written as they are).
 */
export function preEncoded<Desc extends DescMessage>(
  schema: Desc,
  bytes: Uint8Array,
): MessageShape<Desc> {
  const message = create(schema);
  if (bytes.length > 0) {
    const reader = new BinaryReader(bytes);
    const [no, wireType] = reader.tag();
    message.$unknown = [{ no, wireType, data: bytes.subarray(reader.pos) }];
  }
  return message;
}

function positionSize({ commit, prepare }: Position): number {
  return (
    (commit === 0n ? 0 : 1 + uint64Size(commit)) + (prepare === 0n ? 0 : 1 + uint64Size(prepare))
  );
}

function writePosition(buf: Buffer, at: number, { commit, prepare }: Position): number {
  if (commit !== 0n) {
    buf[at++] = 0x08;
    at = writeUint64(buf, at, commit);
  }
  if (prepare !== 0n) {
    buf[at++] = 0x10;
    at = writeUint64(buf, at, prepare);
  }
  return at;
}

/** Bytes of `value` as a uint32 varint (0 ≤ value < 2^32). */
export function varintSize(value: number): number {
  if (value < 0x80) return 1;
  if (value < 0x4000) return 2;
  if (value < 0x200000) return 3;
  if (value < 0x10000000) return 4;
  return 5;
}

/** Writes a uint32 varint (0 ≤ value < 2^32) at `at`; returns the position after it. */
export function writeVarint(buf: Buffer, at: number, value: number): number {
  let v = value;
  while (v >= 0x80) {
    buf[at++] = (v & 0x7f) | 0x80;
    v = Math.floor(v / 128);
  }
  buf[at++] = v;
  return at;
}

function stringFieldSize(bytes: number): number {
  return bytes === 0 ? 0 : 1 + varintSize(bytes) + bytes;
}

function writeString(buf: Buffer, at: number, tag: number, value: string, bytes: number): number {
  if (bytes === 0) return at;
  buf[at++] = tag;
  at = writeVarint(buf, at, bytes);
  return at + buf.write(value, at, bytes, "utf8");
}

/** Positions are below 2^53 in any log this side of a few centuries; bigint beyond. */
const SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function uint64Size(value: bigint): number {
  if (value <= SAFE) return longVarintSize(Number(value));
  let size = 1;
  for (let v = value; v >= 0x80n; v >>= 7n) size++;
  return size;
}

function writeUint64(buf: Buffer, at: number, value: bigint): number {
  if (value <= SAFE) return writeLongVarint(buf, at, Number(value));
  let v = value;
  while (v >= 0x80n) {
    buf[at++] = Number(v & 0x7fn) | 0x80;
    v >>= 7n;
  }
  buf[at++] = Number(v);
  return at;
}

/** A negative int64 is written as its 64-bit two's complement: ten bytes. */
function int64Size(value: number): number {
  return value < 0 ? 10 : longVarintSize(value);
}

function writeInt64(buf: Buffer, at: number, value: number): number {
  return value < 0
    ? writeUint64(buf, at, BigInt.asUintN(64, BigInt(value)))
    : writeLongVarint(buf, at, value);
}

/** A varint of a non-negative safe integer (up to 2^53). */
function longVarintSize(value: number): number {
  let size = 1;
  for (let v = value; v >= 0x80; v = Math.floor(v / 128)) size++;
  return size;
}

function writeLongVarint(buf: Buffer, at: number, value: number): number {
  let v = value;
  while (v >= 0x80) {
    buf[at++] = (v % 128) | 0x80;
    v = Math.floor(v / 128);
  }
  buf[at++] = v;
  return at;
}
