import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import {
  DEFAULT_LIVE_STREAM_MAX_AGE_MS,
  DEFAULT_LIVE_STREAM_MAX_BYTES,
  LIVE_STREAM_DUPLICATE_WINDOW_MS,
} from "./broker/jetstream.js";
import { DEFAULT_PUBSUB_STREAM_MAX_BYTES } from "./broker/jetstream-pubsub.js";
import { DEFAULT_MEMORY_GROUP_MAX_BYTES } from "./broker/memory-pubsub.js";
import { DEFAULT_MIN_FREE_BYTES } from "./store/disk-space.js";

/** Everything the server reads at start-up. Environment variables win over the YAML file. */
export interface Config {
  readonly port: number;
  readonly host: string;
  /** PostgreSQL URL; undefined: embedded PGlite in `dataDir`. */
  readonly pgUrl: string | undefined;
  readonly pgSchema: string;
  readonly pgPoolSize: number;
  /** Server-side statement_timeout; the client gives up on an unanswered statement shortly after. */
  readonly pgStatementTimeoutMs: number;
  readonly pgLockTimeoutMs: number;
  readonly pgIdleInTransactionTimeoutMs: number;
  /** Opening a connection, and waiting for a free one of the pool. */
  readonly pgConnectTimeoutMs: number;
  /** Connections catch-up reads of subscriptions may use at once (PGlite: always one). */
  readonly catchUpConnections: number;
  /** NATS URL; undefined: the in-process broker. */
  readonly natsUrl: string | undefined;
  /** Path of a NATS `.creds` file (user JWT and NKey seed); undefined: none. */
  readonly natsCredsFile: string | undefined;
  readonly dataDir: string;
  /** Embedded only: below this many bytes free on the data folder's disk, writes are refused; 0: never. */
  readonly dataMinFreeBytes: number;
  /** With NATS: the most bytes a boundary's live stream keeps (its oldest messages go first); 0: no bound. */
  readonly liveStreamMaxBytes: number;
  /** With NATS: how long a boundary's live stream keeps a message. */
  readonly liveStreamMaxAgeMs: number;
  readonly tls: TlsConfig | undefined;
  /** Allowed boundaries; undefined: any valid name, created on first write. */
  readonly boundaries: readonly string[] | undefined;
  readonly corsOrigins: readonly string[];
  readonly pubsubRetentionMs: number;
  readonly pubsubDedupeWindowMs: number;
  /** A durable group with no member for this long is deleted with its waiting messages. */
  readonly pubsubGroupExpiryMs: number;
  /**
   * With NATS, the most bytes the pub/sub stream keeps; embedded, each group's backlog in memory.
   * Past it the oldest messages go.
   */
  readonly pubsubMaxBytes: number;
  /** Caps on what clients create on demand; beyond each, RESOURCE_EXHAUSTED naming its variable. */
  readonly maxBoundaries: number;
  readonly maxGroups: number;
  /** Named subscriptions per process: each holds a PostgreSQL advisory lock. */
  readonly maxNamedSubscriptions: number;
  readonly maxSubscriptionsPerConnection: number;
  readonly maxSubscriptions: number;
  /** Estimated bytes of events kept for condition checks in memory, all boundaries together. */
  readonly recentCommitsBytes: number;
  /** After how long without a commit a boundary's publisher, lock and window are let go. */
  readonly boundaryIdleMs: number;
  /** How often the publisher looks for boundaries with commits nobody published. */
  readonly publisherSweepMs: number;
  /** The least time between two JetStream messages of one boundary; 0: every commit at once. */
  readonly publishLingerMs: number;
  /** Longest a group-commit transaction waits for more requests to join it; 0: never. */
  readonly groupCommitWaitMs: number;
  /** Estimated bytes of its own commits a publisher holds to publish from memory, all boundaries. */
  readonly publishBufferBytes: number;
  readonly logLevel: string;
  /** Probes of the store and NATS behind gRPC health and /readyz. */
  readonly health: HealthSettings;
  /** Requests one gRPC reflection stream may make. */
  readonly reflectionMaxRequests: number;
  /** `json`: one JSON object a line (pino); `pretty`: coloured human-readable lines (pino-pretty). */
  readonly logFormat: "json" | "pretty";
  /** Server processes sharing the one port (node:cluster); 1: no cluster, this process serves. */
  readonly workers: number;
  /** ORISUN_WORKER_STALL_TIMEOUT: a worker whose event loop has not run this long is killed. */
  readonly workerStallMs: number;
  /** How long start-up keeps retrying an unreachable PostgreSQL or NATS before it gives up. */
  readonly startupTimeoutMs: number;
  readonly limits: Limits;
  readonly connections: ConnectionLimits;
  readonly observability: ObservabilityConfig;
  readonly auth: AuthConfig;
}

/** GET /metrics and OpenTelemetry traces. */
export interface ObservabilityConfig {
  /** ORISUN_METRICS: on (default) or off (no /metrics route, nothing measured). */
  readonly metrics: boolean;
  /** ORISUN_METRICS_BOUNDARY_LABELS: boundaries with a label of their own; the rest are "_other". */
  readonly boundaryLabels: number;
  /** OTEL_EXPORTER_OTLP_ENDPOINT: traces are exported there; undefined: no tracing. */
  readonly otlpEndpoint: string | undefined;
  /** OTEL_SERVICE_NAME, default "orisun". */
  readonly serviceName: string;
}

export interface HealthSettings {
  /** How often the store and NATS are probed; checks read the last answer. */
  readonly intervalMs: number;
  /** A probe unanswered by then counts as failed. */
  readonly timeoutMs: number;
}

export interface TlsConfig {
  readonly cert: string;
  readonly key: string;
  /** PEM of the CA that signs client certificates (mutual TLS); undefined: none requested. */
  readonly clientCa?: string;
}

export interface AuthConfig {
  readonly enabled: boolean;
  /** ORISUN_AUTH=off given explicitly while binding a non-loopback address: warned at start-up. */
  readonly explicitlyOffOnNetwork: boolean;
  /** Name and password of the admin created when the store has none. */
  readonly adminUser: string;
  readonly adminPassword: string | undefined;
  /** Verified credentials kept in memory, least recently used evicted first. */
  readonly cacheEntries: number;
  /** User names and client addresses whose failed attempts are counted, LRU beyond. */
  readonly trackedClients: number;
}

export interface Limits {
  readonly maxEventsPerSave: number;
  readonly maxEventDataBytes: number;
  readonly maxTagsPerEvent: number;
  readonly maxTagBytes: number;
  readonly maxRequestBytes: number;
  readonly maxCriteria: number;
  readonly maxMessageBytes: number;
  /**
   * Bytes of events in one read's answer (GetEvents, ReadForDecision, a subscription's catch-up
   * page); the read stops early past it, with at least one event (per query).
   */
  readonly maxReadBytes: number;
}

/** How long a client may hold a connection without using it, and how many it may hold. */
export interface ConnectionLimits {
  /** From accept to the first bytes routed (cleartext) or the TLS handshake done. */
  readonly handshakeTimeoutMs: number;
  /** From the first byte of an HTTP/1.1 request to the end of its headers. */
  readonly headersTimeoutMs: number;
  /** A connection with no request or stream in flight is closed after this. */
  readonly idleTimeoutMs: number;
  readonly maxStreamsPerConnection: number;
  readonly maxConnectionsPerAddress: number;
  readonly maxConnections: number;
  /** Bytes of request bodies still arriving on one connection (body-budget.ts). */
  readonly maxConnectionBodyBytes: number;
  /** Bytes of request bodies still arriving at the process, all connections together. */
  readonly maxBodyBytes: number;
  /** From a call's arrival to the end of its request body (unary and server-streaming calls). */
  readonly bodyTimeoutMs: number;
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

type Source = Readonly<Record<string, string | undefined>>;

const MiB = 1024 * 1024;
const BOUNDARY = /^[a-z][a-z0-9_]{0,62}$/;
/** The user names of API.md. */
export const USER_NAME = /^[a-zA-Z0-9_.@-]{1,64}$/;
export const MIN_PASSWORD_CHARS = 8;
export const MAX_PASSWORD_CHARS = 1024;

/** 127.0.0.0/8, ::1 and localhost: only this machine can connect. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h === "::1" || /^127(\.\d{1,3}){3}$/.test(h);
}
const SCHEMA = /^[a-z_][a-z0-9_]{0,62}$/;

/** Reads `-config path` / `--config path` / `--config=path` from argv. */
export function configPathFromArgs(argv: readonly string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    const eq = /^--?config=(.*)$/.exec(arg);
    if (eq) return eq[1];
    if (arg === "-config" || arg === "--config") {
      const next = argv[i + 1];
      if (next === undefined) throw new ConfigError(`${arg}: expects a file path`);
      return next;
    }
  }
  return undefined;
}

/** Flattens the YAML layout of the original server into the environment variable names. */
function yamlToEnv(path: string): Record<string, string> {
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(path, "utf8"));
  } catch (error) {
    throw new ConfigError(`config file ${path}: ${(error as Error).message}`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== "object") throw new ConfigError(`config file ${path}: must be a YAML mapping`);
  const out: Record<string, string> = {};
  const section = (name: string): Record<string, unknown> => {
    const value = (doc as Record<string, unknown>)[name];
    if (value === undefined || value === null) return {};
    if (typeof value !== "object")
      throw new ConfigError(`config file ${path}: ${name} must be a mapping`);
    return value as Record<string, unknown>;
  };
  const str = (v: unknown) => (v === undefined || v === null ? undefined : String(v));
  const db = section("db");
  if (db.host !== undefined || db.name !== undefined || db.user !== undefined) {
    const url = new URL("postgres://localhost");
    url.hostname = str(db.host) ?? "localhost";
    url.port = str(db.port) ?? "5432";
    url.username = encodeURIComponent(str(db.user) ?? "postgres");
    url.password = encodeURIComponent(str(db.password) ?? "");
    url.pathname = `/${encodeURIComponent(str(db.name) ?? "orisun")}`;
    out.ORISUN_PG_URL = url.toString();
  }
  const schema = str(db.schema);
  if (schema !== undefined) out.ORISUN_PG_SCHEMA = schema;
  const natsUrl = str(section("nats").url);
  if (natsUrl !== undefined) out.ORISUN_NATS_URL = natsUrl;
  const port = str(section("server").port);
  if (port !== undefined) out.ORISUN_PORT = port;
  return out;
}

/**
 * 0 (no bound: see DEFAULT_LIVE_STREAM_MAX_BYTES for why that is the default), or at least 8 MiB:
 * a message (up to NATS's max_payload, 1 MiB by default) must fit many times.
 */
function liveStreamMaxBytes(env: Source): number {
  const bytes = integer(
    env,
    "ORISUN_LIVE_STREAM_MAX_BYTES",
    DEFAULT_LIVE_STREAM_MAX_BYTES,
    0,
    Number.MAX_SAFE_INTEGER,
  );
  if (bytes !== 0 && bytes < 8 * MiB) {
    throw new ConfigError(
      `ORISUN_LIVE_STREAM_MAX_BYTES: must be 0 (no bound) or at least ${8 * MiB}, got "${env.ORISUN_LIVE_STREAM_MAX_BYTES}"`,
    );
  }
  return bytes;
}

/** At least the streams' duplicate window (2 minutes), which JetStream wants no longer. */
function liveStreamMaxAge(env: Source): number {
  const ms = duration(env, "ORISUN_LIVE_STREAM_MAX_AGE", DEFAULT_LIVE_STREAM_MAX_AGE_MS);
  if (ms < LIVE_STREAM_DUPLICATE_WINDOW_MS || ms > 24 * 3_600_000) {
    throw new ConfigError(
      `ORISUN_LIVE_STREAM_MAX_AGE: must be from 2m to 24h, got "${env.ORISUN_LIVE_STREAM_MAX_AGE}"`,
    );
  }
  return ms;
}

function integer(env: Source, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name}: must be an integer from ${min} to ${max}, got "${raw}"`);
  }
  return value;
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Durations as `500ms`, `90s`, `2m`, `24h`, `7d`. */
function duration(env: Source, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const match = /^(\d+)(ms|s|m|h|d)$/.exec(raw.trim());
  const unit = match ? UNITS[match[2] ?? ""] : undefined;
  if (!match || unit === undefined || Number(match[1]) === 0) {
    throw new ConfigError(`${name}: must be a positive duration like 90s, 2m or 24h, got "${raw}"`);
  }
  return Number(match[1]) * unit;
}

/**
 * A short wait that may be none: 0 to 1s. It holds back appends or live delivery, so a longer one
 * is refused rather than taken.
 */
function linger(env: Source, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const match = /^(\d+)(ms|s)$/.exec(raw.trim());
  const ms = match ? Number(match[1]) * (match[2] === "s" ? 1000 : 1) : Number.NaN;
  if (!(ms <= 1000)) {
    throw new ConfigError(`${name}: must be a duration from 0ms to 1s, like 5ms, got "${raw}"`);
  }
  return ms;
}

/** A duration that Node's timers can hold: longer ones would fire at once. */
function timeout(env: Source, name: string, fallback: number): number {
  const ms = duration(env, name, fallback);
  if (ms > 2_147_483_647) throw new ConfigError(`${name}: must be at most 24d, got "${env[name]}"`);
  return ms;
}

function list(env: Source, name: string): string[] | undefined {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return undefined;
  return raw
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

function url(env: Source, name: string, protocols: readonly string[]): string | undefined {
  const raw = env[name];
  if (raw === undefined || raw === "") return undefined;
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    // Without the user part: it may hold a password.
    const shown = raw.replace(/\/\/[^@/]*@/, "//…@");
    throw new ConfigError(`${name}: must be a URL like ${protocols[0]}//host:port, got "${shown}"`);
  }
  if (!protocols.includes(parsed.protocol)) {
    throw new ConfigError(`${name}: must use ${protocols.join(" or ")}, got "${parsed.protocol}"`);
  }
  return raw;
}

/** Builds the configuration from the environment and an optional YAML file; throws ConfigError naming the bad value. */
export function loadConfig(
  env: Source = process.env,
  argv: readonly string[] = process.argv.slice(2),
): Config {
  const file = configPathFromArgs(argv);
  const merged: Source = { ...(file === undefined ? {} : yamlToEnv(file)), ...stripEmpty(env) };

  const boundaries = list(merged, "ORISUN_BOUNDARIES");
  for (const b of boundaries ?? []) {
    if (!BOUNDARY.test(b)) {
      throw new ConfigError(`ORISUN_BOUNDARIES: "${b}" must match ${BOUNDARY.source}`);
    }
  }
  const pgSchema = merged.ORISUN_PG_SCHEMA ?? "public";
  if (!SCHEMA.test(pgSchema)) {
    throw new ConfigError(`ORISUN_PG_SCHEMA: must match ${SCHEMA.source}, got "${pgSchema}"`);
  }
  const cert = merged.ORISUN_TLS_CERT;
  const key = merged.ORISUN_TLS_KEY;
  if ((cert === undefined) !== (key === undefined)) {
    throw new ConfigError("ORISUN_TLS_CERT and ORISUN_TLS_KEY: set both or neither");
  }
  const readPem = (name: string, path: string) => {
    try {
      return readFileSync(path, "utf8");
    } catch (error) {
      throw new ConfigError(`${name}: cannot read ${path}: ${(error as Error).message}`);
    }
  };
  const natsCredsFile = merged.ORISUN_NATS_CREDS;
  if (natsCredsFile !== undefined) {
    readPem("ORISUN_NATS_CREDS", natsCredsFile);
    if (/^[a-z]+:\/\/[^@/]*@/i.test(merged.ORISUN_NATS_URL ?? "")) {
      throw new ConfigError(
        "ORISUN_NATS_CREDS and credentials in ORISUN_NATS_URL: set one or the other",
      );
    }
  }
  const logLevel = merged.ORISUN_LOG_LEVEL ?? "info";
  if (!["fatal", "error", "warn", "info", "debug", "trace", "silent"].includes(logLevel)) {
    throw new ConfigError(
      `ORISUN_LOG_LEVEL: must be one of fatal, error, warn, info, debug, trace, silent, got "${logLevel}"`,
    );
  }
  const logFormat = merged.ORISUN_LOG_FORMAT ?? "json";
  if (logFormat !== "json" && logFormat !== "pretty") {
    throw new ConfigError(`ORISUN_LOG_FORMAT: must be json or pretty, got "${logFormat}"`);
  }
  const workers = workerCount(merged);
  const headersTimeoutMs = timeout(merged, "ORISUN_HEADERS_TIMEOUT", 15_000);
  const maxRequestBytes = integer(merged, "ORISUN_MAX_REQUEST_BYTES", 4 * MiB, 1024, 1024 * MiB);
  const pubsubRetentionMs = duration(merged, "ORISUN_PUBSUB_RETENTION", 86_400_000);
  // Below the retention, a member returning within it would miss messages its group had kept.
  const pubsubGroupExpiryMs = duration(
    merged,
    "ORISUN_PUBSUB_GROUP_EXPIRY",
    Math.max(7 * 86_400_000, pubsubRetentionMs),
  );
  if (pubsubGroupExpiryMs > 3650 * 86_400_000) {
    throw new ConfigError(
      `ORISUN_PUBSUB_GROUP_EXPIRY: must be at most 3650d (as must ORISUN_PUBSUB_RETENTION, its lower bound), got ${pubsubGroupExpiryMs / 86_400_000} days`,
    );
  }
  if (pubsubGroupExpiryMs < pubsubRetentionMs) {
    throw new ConfigError(
      `ORISUN_PUBSUB_GROUP_EXPIRY: must be at least ORISUN_PUBSUB_RETENTION (${pubsubRetentionMs} ms), got "${merged.ORISUN_PUBSUB_GROUP_EXPIRY}"`,
    );
  }
  const natsUrl = url(merged, "ORISUN_NATS_URL", ["nats:", "tls:", "ws:", "wss:"]);
  const pgPoolSize = integer(merged, "ORISUN_PG_POOL_SIZE", 10, 1, 1000);
  // Half the pool by default: the other half stays free for appends and GetEvents.
  const catchUpConnections = integer(
    merged,
    "ORISUN_CATCHUP_CONNECTIONS",
    Math.max(1, Math.floor(pgPoolSize / 2)),
    1,
    1000,
  );
  if (catchUpConnections > pgPoolSize) {
    throw new ConfigError(
      `ORISUN_CATCHUP_CONNECTIONS: must be at most ORISUN_PG_POOL_SIZE (${pgPoolSize}), got ${catchUpConnections}`,
    );
  }
  const host = merged.ORISUN_HOST ?? "127.0.0.1";
  const clientCa = merged.ORISUN_TLS_CLIENT_CA;
  if (clientCa !== undefined && cert === undefined) {
    throw new ConfigError(
      "ORISUN_TLS_CLIENT_CA: needs ORISUN_TLS_CERT and ORISUN_TLS_KEY (client certificates are asked for over TLS only)",
    );
  }
  return {
    port: integer(merged, "ORISUN_PORT", 50051, 0, 65535),
    host,
    pgUrl: url(merged, "ORISUN_PG_URL", ["postgres:", "postgresql:"]),
    pgSchema,
    pgPoolSize,
    pgStatementTimeoutMs: duration(merged, "ORISUN_PG_STATEMENT_TIMEOUT", 10_000),
    pgLockTimeoutMs: duration(merged, "ORISUN_PG_LOCK_TIMEOUT", 5_000),
    pgIdleInTransactionTimeoutMs: duration(merged, "ORISUN_PG_IDLE_IN_TRANSACTION_TIMEOUT", 60_000),
    pgConnectTimeoutMs: duration(merged, "ORISUN_PG_CONNECT_TIMEOUT", 5_000),
    catchUpConnections,
    natsUrl,
    natsCredsFile: natsCredsFile === undefined ? undefined : resolve(natsCredsFile),
    dataDir: resolve(merged.ORISUN_DATA_DIR ?? "./data"),
    dataMinFreeBytes: integer(
      merged,
      "ORISUN_DATA_MIN_FREE_BYTES",
      DEFAULT_MIN_FREE_BYTES,
      0,
      Number.MAX_SAFE_INTEGER,
    ),
    liveStreamMaxBytes: liveStreamMaxBytes(merged),
    liveStreamMaxAgeMs: liveStreamMaxAge(merged),
    tls:
      cert === undefined || key === undefined
        ? undefined
        : {
            cert: readPem("ORISUN_TLS_CERT", cert),
            key: readPem("ORISUN_TLS_KEY", key),
            ...(clientCa === undefined
              ? {}
              : { clientCa: readPem("ORISUN_TLS_CLIENT_CA", clientCa) }),
          },
    boundaries,
    corsOrigins: list(merged, "ORISUN_CORS_ORIGINS") ?? [],
    pubsubRetentionMs,
    pubsubDedupeWindowMs: duration(merged, "ORISUN_PUBSUB_DEDUPE_WINDOW", 120_000),
    pubsubGroupExpiryMs,
    // At least 8 MiB: a message (up to NATS's max_payload, 1 MiB by default) must fit many times.
    pubsubMaxBytes: integer(
      merged,
      "ORISUN_PUBSUB_MAX_BYTES",
      natsUrl ? DEFAULT_PUBSUB_STREAM_MAX_BYTES : DEFAULT_MEMORY_GROUP_MAX_BYTES,
      8 * MiB,
      Number.MAX_SAFE_INTEGER,
    ),
    maxBoundaries: integer(merged, "ORISUN_MAX_BOUNDARIES", 10_000, 1, 10_000_000),
    maxGroups: integer(merged, "ORISUN_MAX_GROUPS", 1_000, 1, 100_000),
    maxNamedSubscriptions: integer(merged, "ORISUN_MAX_NAMED_SUBSCRIPTIONS", 1_000, 1, 100_000),
    maxSubscriptionsPerConnection: integer(
      merged,
      "ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION",
      100,
      1,
      100_000,
    ),
    maxSubscriptions: integer(merged, "ORISUN_MAX_SUBSCRIPTIONS", 10_000, 1, 1_000_000),
    recentCommitsBytes: integer(
      merged,
      "ORISUN_RECENT_COMMITS_BYTES",
      64 * MiB,
      0,
      64 * 1024 * MiB,
    ),
    boundaryIdleMs: duration(merged, "ORISUN_BOUNDARY_IDLE", 120_000),
    publisherSweepMs: duration(merged, "ORISUN_PUBLISHER_SWEEP", 5_000),
    publishLingerMs: linger(merged, "ORISUN_PUBLISH_LINGER", 10),
    groupCommitWaitMs: linger(merged, "ORISUN_GROUP_COMMIT_WAIT", 5),
    publishBufferBytes: integer(
      merged,
      "ORISUN_PUBLISH_BUFFER_BYTES",
      64 * MiB,
      0,
      64 * 1024 * MiB,
    ),
    logLevel,
    health: health(merged),
    reflectionMaxRequests: integer(merged, "ORISUN_REFLECTION_MAX_REQUESTS", 1_000, 1, 1_000_000),
    logFormat,
    workers,
    workerStallMs: workerStall(merged),
    startupTimeoutMs: timeout(merged, "ORISUN_STARTUP_TIMEOUT", 60_000),
    limits: {
      maxEventsPerSave: integer(merged, "ORISUN_MAX_EVENTS_PER_SAVE", 10_000, 1, 1_000_000),
      maxEventDataBytes: integer(merged, "ORISUN_MAX_EVENT_BYTES", MiB, 1, 64 * MiB),
      maxTagsPerEvent: integer(merged, "ORISUN_MAX_TAGS_PER_EVENT", 64, 1, 10_000),
      maxTagBytes: integer(merged, "ORISUN_MAX_TAG_BYTES", 256, 1, 65_536),
      maxRequestBytes,
      maxCriteria: integer(merged, "ORISUN_MAX_CRITERIA", 100, 1, 10_000),
      maxMessageBytes: integer(merged, "ORISUN_MAX_MESSAGE_BYTES", MiB, 1, 64 * MiB),
      // As a request: what gRPC clients take by default (4 MiB), so a page always reaches them.
      maxReadBytes: integer(merged, "ORISUN_MAX_READ_BYTES", 4 * MiB, 64 * 1024, 1024 * MiB),
    },
    observability: observabilityConfig(merged, env),
    connections: {
      handshakeTimeoutMs: timeout(merged, "ORISUN_HANDSHAKE_TIMEOUT", 10_000),
      headersTimeoutMs,
      idleTimeoutMs: timeout(merged, "ORISUN_IDLE_TIMEOUT", 120_000),
      maxStreamsPerConnection: integer(merged, "ORISUN_MAX_STREAMS_PER_CONNECTION", 100, 1, 10_000),
      maxConnectionsPerAddress: integer(
        merged,
        "ORISUN_MAX_CONNECTIONS_PER_ADDRESS",
        256,
        1,
        1_000_000,
      ),
      // Below the common soft limit of 1,024 descriptors, leaving room for the database pool,
      // NATS and files: past the limit every accept and open fails, not only the extra clients.
      maxConnections: integer(merged, "ORISUN_MAX_CONNECTIONS", 900, 1, 1_000_000),
      ...bodyBudgets(merged, maxRequestBytes),
      bodyTimeoutMs: bodyTimeout(merged, headersTimeoutMs),
    },
    auth: authConfig(merged, host),
  };
}

/** At least 1s: a garbage collection or a burst of work holds an event loop for tens of ms. */
function workerStall(env: Source): number {
  const ms = timeout(env, "ORISUN_WORKER_STALL_TIMEOUT", 30_000);
  if (ms < 1_000) {
    throw new ConfigError(
      `ORISUN_WORKER_STALL_TIMEOUT: must be at least 1s, got "${env.ORISUN_WORKER_STALL_TIMEOUT}"`,
    );
  }
  return ms;
}

/** ORISUN_BODY_TIMEOUT: a body cannot be due before its request's headers (Node's HTTP/1.1 rule too). */
function bodyTimeout(env: Source, headersTimeoutMs: number): number {
  const ms = timeout(env, "ORISUN_BODY_TIMEOUT", Math.max(30_000, headersTimeoutMs));
  if (ms < headersTimeoutMs) {
    throw new ConfigError(
      `ORISUN_BODY_TIMEOUT: must be at least ORISUN_HEADERS_TIMEOUT (${headersTimeoutMs} ms), got "${env.ORISUN_BODY_TIMEOUT}"`,
    );
  }
  return ms;
}

/**
 * ORISUN_MAX_CONNECTION_BODY_BYTES and ORISUN_MAX_BODY_BYTES: each must let one request of the
 * largest size through, and a connection may not be given more than the process.
 */
function bodyBudgets(env: Source, maxRequestBytes: number) {
  const maxConnectionBodyBytes = integer(
    env,
    "ORISUN_MAX_CONNECTION_BODY_BYTES",
    Math.max(32 * MiB, maxRequestBytes),
    1024,
    64 * 1024 * MiB,
  );
  const maxBodyBytes = integer(
    env,
    "ORISUN_MAX_BODY_BYTES",
    Math.max(512 * MiB, maxConnectionBodyBytes),
    1024,
    1024 * 1024 * MiB,
  );
  if (maxConnectionBodyBytes < maxRequestBytes) {
    throw new ConfigError(
      `ORISUN_MAX_CONNECTION_BODY_BYTES: must be at least ORISUN_MAX_REQUEST_BYTES (${maxRequestBytes}), got ${maxConnectionBodyBytes}`,
    );
  }
  if (maxBodyBytes < maxConnectionBodyBytes) {
    throw new ConfigError(
      `ORISUN_MAX_BODY_BYTES: must be at least ORISUN_MAX_CONNECTION_BODY_BYTES (${maxConnectionBodyBytes}), got ${maxBodyBytes}`,
    );
  }
  return { maxConnectionBodyBytes, maxBodyBytes };
}

function authConfig(env: Source, host: string): AuthConfig {
  const raw = env.ORISUN_AUTH?.trim().toLowerCase();
  if (raw !== undefined && raw !== "on" && raw !== "off") {
    throw new ConfigError(`ORISUN_AUTH: must be on or off, got "${env.ORISUN_AUTH}"`);
  }
  const loopback = isLoopback(host);
  const adminUser = env.ORISUN_ADMIN_USER ?? "admin";
  if (!USER_NAME.test(adminUser)) {
    throw new ConfigError(`ORISUN_ADMIN_USER: must match ${USER_NAME.source}, got "${adminUser}"`);
  }
  const adminPassword = env.ORISUN_ADMIN_PASSWORD;
  if (
    adminPassword !== undefined &&
    (adminPassword.length < MIN_PASSWORD_CHARS || adminPassword.length > MAX_PASSWORD_CHARS)
  ) {
    // Never the value: it is a secret.
    throw new ConfigError(
      `ORISUN_ADMIN_PASSWORD: must have ${MIN_PASSWORD_CHARS} to ${MAX_PASSWORD_CHARS} characters, got ${adminPassword.length}`,
    );
  }
  return {
    enabled: raw === undefined ? !loopback : raw === "on",
    explicitlyOffOnNetwork: raw === "off" && !loopback,
    adminUser,
    adminPassword,
    cacheEntries: integer(env, "ORISUN_AUTH_CACHE_ENTRIES", 10_000, 1, 10_000_000),
    trackedClients: integer(env, "ORISUN_AUTH_TRACKED_CLIENTS", 10_000, 1, 10_000_000),
  };
}

/** The ORISUN_METRICS* settings, and the standard OpenTelemetry variables (from the environment). */
function observabilityConfig(merged: Source, env: Source): ObservabilityConfig {
  const metrics = merged.ORISUN_METRICS ?? "on";
  if (metrics !== "on" && metrics !== "off") {
    throw new ConfigError(`ORISUN_METRICS: must be on or off, got "${metrics}"`);
  }
  const serviceName = env.OTEL_SERVICE_NAME?.trim() || "orisun";
  if (serviceName.length > 255 || /\p{Cc}/u.test(serviceName)) {
    throw new ConfigError(
      "OTEL_SERVICE_NAME: must be at most 255 characters without control characters",
    );
  }
  return {
    metrics: metrics === "on",
    boundaryLabels: integer(merged, "ORISUN_METRICS_BOUNDARY_LABELS", 100, 0, 10_000),
    otlpEndpoint: url(env, "OTEL_EXPORTER_OTLP_ENDPOINT", ["http:", "https:"]),
    serviceName,
  };
}

/**
 * Interval plus timeout is how long a change may take to show: at most 5 s each keeps the
 * contract's 10 s.
 */
function health(env: Source): HealthSettings {
  const intervalMs = duration(env, "ORISUN_HEALTH_INTERVAL", 1_000);
  const timeoutMs = duration(env, "ORISUN_HEALTH_TIMEOUT", 3_000);
  for (const [name, ms] of [
    ["ORISUN_HEALTH_INTERVAL", intervalMs],
    ["ORISUN_HEALTH_TIMEOUT", timeoutMs],
  ] as const) {
    if (ms < 100 || ms > 5_000) {
      throw new ConfigError(`${name}: must be from 100ms to 5s, got "${env[name]}"`);
    }
  }
  return { intervalMs, timeoutMs };
}

/**
 * Default: one process per core when PostgreSQL and NATS are configured, else one. PGlite is one
 * process's database, and the in-process broker would split pub/sub groups and dedupe between
 * processes, so more than one worker needs both.
 */
function workerCount(env: Source): number {
  const shared = env.ORISUN_PG_URL !== undefined && env.ORISUN_NATS_URL !== undefined;
  const workers = integer(env, "ORISUN_WORKERS", shared ? availableParallelism() : 1, 1, 256);
  if (workers > 1 && env.ORISUN_PG_URL === undefined) {
    throw new ConfigError(
      `ORISUN_WORKERS: more than 1 needs ORISUN_PG_URL (the embedded PGlite serves one process), got ${workers}`,
    );
  }
  if (workers > 1 && env.ORISUN_NATS_URL === undefined) {
    throw new ConfigError(
      `ORISUN_WORKERS: more than 1 needs ORISUN_NATS_URL (the in-process broker cannot share pub/sub groups between processes), got ${workers}`,
    );
  }
  return workers;
}

function stripEmpty(env: Source): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env))
    if (k.startsWith("ORISUN_") && v !== undefined && v !== "") out[k] = v;
  return out;
}
