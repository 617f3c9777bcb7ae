import { readFileSync } from "node:fs";
import {
  DiscardPolicy,
  JetStreamApiError,
  type JetStreamManager,
  RetentionPolicy,
  StorageType,
  type StreamInfo,
} from "@nats-io/jetstream";
import {
  type Authenticator,
  connect,
  credsAuthenticator,
  type NatsConnection,
  nanos,
} from "@nats-io/transport-node";
import type { StoredEvent } from "../store/types.js";

/** Pino-style, so the app's logger fits as is. */
export interface BrokerLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/**
 * Connects once and then reconnects forever: a NATS outage must degrade the live path (the feed
 * falls back to the store), never end it. The first connect fails fast so that a wrong URL or
 * credentials are reported at startup instead of hanging it.
 *
 * Credentials come from the URL (`nats://user:password@host:4222`, or `nats://token@host:4222`;
 * percent-encoded) or from a `.creds` file (JWT and NKey seed, read at each connect so that a
 * renewed file is picked up). The client library (3.4) ignores credentials in a URL, and takes a
 * numeric password for the port: they are taken out of the URL here and passed as options.
 */
export async function connectNats(
  url: string,
  log: Pick<BrokerLog, "info" | "warn">,
  credsFile?: string,
): Promise<NatsConnection> {
  const { server, user, pass, token } = splitCredentials(url);
  const authenticator: Authenticator | undefined =
    credsFile === undefined ? undefined : credsAuthenticator(() => readFileSync(credsFile));
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers: server,
      ...(user === undefined ? {} : { user, pass }),
      ...(token === undefined ? {} : { token }),
      ...(authenticator === undefined ? {} : { authenticator }),
      name: "orisun",
      maxReconnectAttempts: -1,
      reconnectTimeWait: 1_000,
      // Notice a silently dead TCP connection in ~30 s rather than the default ~4 min.
      pingInterval: 15_000,
      maxPingOut: 2,
      // Every request (each JetStream publish awaits an ack) would otherwise build two Error
      // objects up front to capture the caller's stack: 5% of the server's CPU while appending,
      // 13% while bulk loading (profiled). Errors keep their own stacks.
      noAsyncTraces: true,
    });
  } catch (error) {
    const how =
      credsFile !== undefined
        ? `with the credentials file ${credsFile}`
        : user !== undefined
          ? `as user "${user}"`
          : token !== undefined
            ? "with a token"
            : "without credentials";
    const cause = (error as Error).cause;
    const detail = cause instanceof Error ? ` (${cause.message})` : "";
    throw new Error(
      `cannot connect to NATS at ${server} ${how}: ${(error as Error).message}${detail}`,
      { cause: error },
    );
  }
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === "disconnect") log.warn({ server: status.server }, "NATS disconnected");
      else if (status.type === "reconnect") log.info({ server: status.server }, "NATS reconnected");
      else if (status.type === "error") log.warn({ err: status.error }, "NATS error");
    }
  })();
  return nc;
}

/**
 * The URL without its user part, and what that part held: `user:password` (either may be empty),
 * or a lone token.
 */
export function splitCredentials(url: string): {
  server: string;
  user?: string;
  pass?: string;
  token?: string;
} {
  const userinfo = /^[a-z]+:\/\/([^@/]*)@/i.exec(url)?.[1];
  if (userinfo === undefined) return { server: url };
  const server = url.replace(`${userinfo}@`, "");
  const colon = userinfo.indexOf(":");
  if (colon < 0) return { server, token: decodeURIComponent(userinfo) };
  return {
    server,
    user: decodeURIComponent(userinfo.slice(0, colon)),
    pass: decodeURIComponent(userinfo.slice(colon + 1)),
  };
}

const BOUNDARY = /^[a-z][a-z0-9_]{0,62}$/;

export interface StreamNames {
  readonly stream: string;
  readonly subject: string;
}

/**
 * One stream per (namespace, boundary). The namespace (the app passes its PostgreSQL schema)
 * keeps stores that share one NATS apart, e.g. test runs each on a fresh schema.
 */
export function streamNames(namespace: string, boundary: string): StreamNames {
  if (!BOUNDARY.test(boundary)) throw new Error(`not a boundary name: ${JSON.stringify(boundary)}`);
  // Never empty: an empty token would make the subject invalid.
  const ns = namespace.replace(/[^A-Za-z0-9_]/g, "_") || "default";
  return { stream: `ORISUN_EVENTS_${ns}_${boundary}`, subject: `orisun.events.${ns}.${boundary}` };
}

/**
 * ORISUN_LIVE_STREAM_MAX_BYTES unset: no bound in bytes on a boundary's live stream. JetStream
 * reserves a stream's max_bytes against the server's storage (max_file_store, by default 75% of
 * its disk's free space) from its creation on, whatever it holds: at 256 MiB a stream, a NATS with
 * 59.85 GB for JetStream held the streams of 239 boundaries and refused the 240th with
 * "insufficient storage resources". The age bounds the bytes instead: the streams of a deployment
 * hold at most what it commits in that time, however many boundaries it has.
 */
export const DEFAULT_LIVE_STREAM_MAX_BYTES = 0;

/** ORISUN_LIVE_STREAM_MAX_AGE unset: how long a boundary's live stream keeps a message. */
export const DEFAULT_LIVE_STREAM_MAX_AGE_MS = 10 * 60 * 1_000;

/**
 * The bounds of a boundary's live stream (ORISUN_LIVE_STREAM_MAX_BYTES, 0: none, and
 * ORISUN_LIVE_STREAM_MAX_AGE). Every process of a deployment must use the same, or each would
 * bring the stream back to its own.
 */
export interface LiveStreamLimits {
  readonly maxBytes: number;
  readonly maxAgeMs: number;
}

export const DEFAULT_LIVE_STREAM_LIMITS: LiveStreamLimits = {
  maxBytes: DEFAULT_LIVE_STREAM_MAX_BYTES,
  maxAgeMs: DEFAULT_LIVE_STREAM_MAX_AGE_MS,
};

/** The duplicate window of a live stream, which JetStream wants no longer than its age. */
export const LIVE_STREAM_DUPLICATE_WINDOW_MS = 2 * 60 * 1_000;

/**
 * Creates the boundary's stream, or brings an existing one to `limits`; returns its info.
 * JetStream accepts a create whose config equals the existing stream's, so concurrent creators
 * from several processes all succeed.
 */
export async function ensureStream(
  jsm: JetStreamManager,
  namespace: string,
  boundary: string,
  { maxBytes, maxAgeMs }: LiveStreamLimits = DEFAULT_LIVE_STREAM_LIMITS,
): Promise<StreamInfo> {
  const { stream, subject } = streamNames(namespace, boundary);
  const config = {
    subjects: [subject],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    // Live only: history is read from PostgreSQL, so the stream need not keep much. The oldest
    // messages go first past either bound; a feed that was behind them reads the gap from the store.
    max_age: nanos(maxAgeMs),
    max_bytes: maxBytes > 0 ? maxBytes : -1,
    // Long enough to drop what a crashed publisher's successor republishes.
    duplicate_window: nanos(LIVE_STREAM_DUPLICATE_WINDOW_MS),
  };
  try {
    return await jsm.streams.add({ name: stream, ...config });
  } catch (error) {
    if (!isApiError(error, STREAM_NAME_IN_USE)) throw error;
    return await jsm.streams.update(stream, config);
  }
}

/** JetStream's "stream name already in use with a different configuration". */
const STREAM_NAME_IN_USE = 10058;

function isApiError(error: unknown, code: number): boolean {
  return error instanceof JetStreamApiError && error.code === code;
}

/** The wire form of an event: JSON, positions as decimal strings (they exceed 2^53). */
interface WireEvent {
  boundary: string;
  id: string;
  type: string;
  tags: [string, string][];
  data: string;
  metadata: string;
  commit: string;
  prepare: string;
  createdAt: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** An event as wire JSON text; a message is a JSON array of these (see encodeEvents). */
export function wireText(event: StoredEvent): string {
  const wire: WireEvent = {
    boundary: event.boundary,
    id: event.id,
    type: event.type,
    tags: event.tags.map((t) => [t.key, t.value]),
    data: event.data,
    metadata: event.metadata,
    commit: event.position.commit.toString(),
    prepare: event.position.prepare.toString(),
    createdAt: event.createdAt.toISOString(),
  };
  return JSON.stringify(wire);
}

/** Consecutive events as one message: a JSON array of wire events. */
export function encodeEvents(texts: readonly string[]): Uint8Array {
  return encoder.encode(`[${texts.join(",")}]`);
}

/**
 * The events of one message, in order. Throws on anything encodeEvents did not make, except a
 * lone wire event, which is what versions before message batching published.
 */
export function decodeEvents(bytes: Uint8Array): StoredEvent[] {
  const parsed: unknown = JSON.parse(decoder.decode(bytes));
  const wires = Array.isArray(parsed) ? parsed : [parsed];
  if (wires.length === 0) throw new Error("not encoded events: an empty message");
  return wires.map(fromWire);
}

function fromWire(value: unknown): StoredEvent {
  const w = value as Partial<WireEvent> | null;
  const isString = (v: unknown): v is string => typeof v === "string";
  const createdAt = new Date(w?.createdAt ?? Number.NaN);
  if (
    !w ||
    !isString(w.boundary) ||
    !isString(w.id) ||
    !isString(w.type) ||
    !isString(w.data) ||
    !isString(w.metadata) ||
    !isString(w.commit) ||
    !isString(w.prepare) ||
    !/^\d+$/.test(w.commit) ||
    !/^\d+$/.test(w.prepare) ||
    Number.isNaN(createdAt.getTime()) ||
    !Array.isArray(w.tags) ||
    !w.tags.every((t) => Array.isArray(t) && t.length === 2 && t.every(isString))
  ) {
    throw new Error("not an encoded event");
  }
  return {
    boundary: w.boundary,
    id: w.id,
    type: w.type,
    tags: w.tags.map(([key, value]) => ({ key, value })),
    data: w.data,
    metadata: w.metadata,
    position: { commit: BigInt(w.commit), prepare: BigInt(w.prepare) },
    createdAt,
  };
}
