import { StoreError, type StoreErrorKind } from "../store/errors.js";
import type { AppendRequest, Criterion, EventToAppend, Position, Tag } from "../store/types.js";

/**
 * The frames workers exchange when one forwards an append to the worker that commits its
 * boundary (boundary-owners.ts), over a Unix socket only the server's user can open. Each frame
 * is: u32 length of what follows, u32 request id, u8 kind, payload. Strings are u32 byte length
 * then UTF-8; positions two int64. The peer is a sibling process of the same build, but a frame
 * that does not parse is still refused (FrameError) rather than trusted.
 */
export const FrameKind = { append: 1, cancel: 2, ok: 3, error: 4, goodbye: 5 } as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

export type Frame =
  | {
      readonly kind: typeof FrameKind.append;
      readonly id: number;
      readonly request: AppendRequest;
      /** The forwarding call's trace context (tracing.ts), or "" when it has none. */
      readonly trace: string;
    }
  | { readonly kind: typeof FrameKind.cancel; readonly id: number }
  | { readonly kind: typeof FrameKind.goodbye; readonly id: number }
  | { readonly kind: typeof FrameKind.ok; readonly id: number; readonly position: Position }
  | { readonly kind: typeof FrameKind.error; readonly id: number; readonly error: StoreError };

const HEADER = 9;

export class FrameError extends Error {
  override readonly name = "FrameError";
}

class Writer {
  private offset = 0;
  constructor(readonly buffer: Buffer) {}
  u8(v: number): void {
    this.offset = this.buffer.writeUInt8(v, this.offset);
  }
  u32(v: number): void {
    this.offset = this.buffer.writeUInt32BE(v, this.offset);
  }
  i64(v: bigint): void {
    this.offset = this.buffer.writeBigInt64BE(v, this.offset);
  }
  str(v: string): void {
    const length = this.buffer.write(v, this.offset + 4, "utf8");
    this.offset = this.buffer.writeUInt32BE(length, this.offset) + length;
  }
  get end(): number {
    return this.offset;
  }
}

const strSize = (v: string) => 4 + Buffer.byteLength(v, "utf8");
const tagsSize = (tags: readonly Tag[]) =>
  tags.reduce((n, t) => n + strSize(t.key) + strSize(t.value), 4);
const eventSize = (e: EventToAppend) =>
  strSize(e.id) + strSize(e.type) + tagsSize(e.tags) + strSize(e.data) + strSize(e.metadata);
const criterionSize = (c: Criterion) =>
  c.types.reduce((n, t) => n + strSize(t), 4) + tagsSize(c.tags);

function requestSize(r: AppendRequest): number {
  let n = strSize(r.boundary) + 4 + 1;
  for (const e of r.events) n += eventSize(e);
  if (r.condition) n += 16 + 4 + r.condition.query.reduce((s, c) => s + criterionSize(c), 0);
  return n;
}

function writeTags(w: Writer, tags: readonly Tag[]): void {
  w.u32(tags.length);
  for (const t of tags) {
    w.str(t.key);
    w.str(t.value);
  }
}

function writeRequest(w: Writer, r: AppendRequest): void {
  w.str(r.boundary);
  w.u32(r.events.length);
  for (const e of r.events) {
    w.str(e.id);
    w.str(e.type);
    writeTags(w, e.tags);
    w.str(e.data);
    w.str(e.metadata);
  }
  w.u8(r.condition ? 1 : 0);
  if (!r.condition) return;
  w.i64(r.condition.after.commit);
  w.i64(r.condition.after.prepare);
  w.u32(r.condition.query.length);
  for (const c of r.condition.query) {
    w.u32(c.types.length);
    for (const t of c.types) w.str(t);
    writeTags(w, c.tags);
  }
}

interface ErrorJson {
  readonly kind: StoreErrorKind;
  readonly rule: string;
  readonly field?: string;
  readonly metadata: Readonly<Record<string, string>>;
}

/** One frame's bytes, length prefix included. */
export function encodeFrame(frame: Frame): Buffer {
  let payload = 0;
  let text = "";
  switch (frame.kind) {
    case FrameKind.append:
      payload = requestSize(frame.request) + strSize(frame.trace);
      break;
    case FrameKind.ok:
      payload = 16;
      break;
    case FrameKind.error: {
      const e = frame.error;
      const json: ErrorJson = { kind: e.kind, rule: e.rule, field: e.field, metadata: e.metadata };
      text = JSON.stringify(json);
      payload = strSize(text);
      break;
    }
  }
  const w = new Writer(Buffer.allocUnsafe(HEADER + payload));
  w.u32(HEADER - 4 + payload);
  w.u32(frame.id);
  w.u8(frame.kind);
  if (frame.kind === FrameKind.append) {
    writeRequest(w, frame.request);
    w.str(frame.trace);
  } else if (frame.kind === FrameKind.ok) {
    w.i64(frame.position.commit);
    w.i64(frame.position.prepare);
  } else if (frame.kind === FrameKind.error) w.str(text);
  if (w.end !== w.buffer.length) throw new FrameError(`frame size ${w.end} ≠ ${w.buffer.length}`);
  return w.buffer;
}

class Reader {
  private offset: number;
  constructor(
    private readonly buffer: Buffer,
    start: number,
    private readonly end: number,
  ) {
    this.offset = start;
  }
  private need(n: number): number {
    const at = this.offset;
    if (at + n > this.end) throw new FrameError("truncated frame");
    this.offset = at + n;
    return at;
  }
  u8(): number {
    return this.buffer.readUInt8(this.need(1));
  }
  u32(): number {
    return this.buffer.readUInt32BE(this.need(4));
  }
  i64(): bigint {
    return this.buffer.readBigInt64BE(this.need(8));
  }
  /** A count of entries that each take at least `min` bytes: more than fit is a broken frame. */
  count(min: number): number {
    const n = this.u32();
    if (n * min > this.end - this.offset) throw new FrameError("count past the frame's end");
    return n;
  }
  str(): string {
    const length = this.u32();
    const at = this.need(length);
    return this.buffer.toString("utf8", at, at + length);
  }
  done(): void {
    if (this.offset !== this.end) throw new FrameError("bytes after the frame's payload");
  }
}

function readTags(r: Reader): Tag[] {
  const tags: Tag[] = new Array(r.count(8));
  for (let i = 0; i < tags.length; i++) tags[i] = { key: r.str(), value: r.str() };
  return tags;
}

function readRequest(r: Reader): AppendRequest {
  const boundary = r.str();
  const events: EventToAppend[] = new Array(r.count(20));
  for (let i = 0; i < events.length; i++) {
    events[i] = { id: r.str(), type: r.str(), tags: readTags(r), data: r.str(), metadata: r.str() };
  }
  if (r.u8() === 0) return { boundary, events };
  const after = { commit: r.i64(), prepare: r.i64() };
  const query: Criterion[] = new Array(r.count(8));
  for (let i = 0; i < query.length; i++) {
    const types: string[] = new Array(r.count(4));
    for (let j = 0; j < types.length; j++) types[j] = r.str();
    query[i] = { types, tags: readTags(r) };
  }
  return { boundary, events, condition: { after, query } };
}

/** Every kind, so that the compiler names a new kind missing here. */
const KINDS: Readonly<Record<StoreErrorKind, true>> = {
  invalid: true,
  too_large: true,
  condition_failed: true,
  already_exists: true,
  unavailable: true,
  not_found: true,
  failed_precondition: true,
  limit_reached: true,
  deadline_exceeded: true,
  out_of_space: true,
  internal: true,
};
const isKind = (kind: unknown): kind is StoreErrorKind =>
  typeof kind === "string" && Object.hasOwn(KINDS, kind);

function readError(r: Reader): StoreError {
  let json: Partial<ErrorJson>;
  try {
    json = JSON.parse(r.str()) as Partial<ErrorJson>;
  } catch {
    throw new FrameError("an error frame that is not JSON");
  }
  if (!isKind(json.kind) || typeof json.rule !== "string") {
    throw new FrameError("an error frame without a known kind and a rule");
  }
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(json.metadata ?? {})) metadata[k] = String(v);
  const field = typeof json.field === "string" ? json.field : undefined;
  return new StoreError(json.kind, json.rule, field, { metadata });
}

/**
 * Cuts whole frames off the front of a byte stream: push what the socket read, and each frame
 * that is complete comes back decoded. A frame longer than `maxFrameBytes` is refused before it
 * is buffered.
 */
export class FrameReader {
  /** Bytes read and not yet decoded; joined only once a whole frame is in. */
  private chunks: Buffer[] = [];
  private size = 0;

  constructor(private readonly maxFrameBytes: number) {}

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.size += chunk.length;
    const frames: Frame[] = [];
    while (this.size >= 4) {
      if ((this.chunks[0] as Buffer).length < 4) this.join();
      const length = (this.chunks[0] as Buffer).readUInt32BE(0);
      if (length < HEADER - 4 || length > this.maxFrameBytes) {
        throw new FrameError(`a frame of ${length} bytes (at most ${this.maxFrameBytes})`);
      }
      if (this.size < 4 + length) break;
      const buffer = this.join();
      frames.push(decodeFrame(buffer, 0, 4 + length));
      const rest = buffer.subarray(4 + length);
      this.chunks = rest.length === 0 ? [] : [rest];
      this.size = rest.length;
    }
    return frames;
  }

  private join(): Buffer {
    const whole =
      this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    this.chunks = [whole];
    return whole;
  }
}

function decodeFrame(buffer: Buffer, start: number, end: number): Frame {
  const r = new Reader(buffer, start + 4, end);
  const id = r.u32();
  const kind = r.u8();
  let frame: Frame;
  switch (kind) {
    case FrameKind.append:
      frame = { kind, id, request: readRequest(r), trace: r.str() };
      break;
    case FrameKind.cancel:
    case FrameKind.goodbye:
      frame = { kind, id };
      break;
    case FrameKind.ok:
      frame = { kind, id, position: { commit: r.i64(), prepare: r.i64() } };
      break;
    case FrameKind.error:
      frame = { kind, id, error: readError(r) };
      break;
    default:
      throw new FrameError(`unknown frame kind ${kind}`);
  }
  r.done();
  return frame;
}
