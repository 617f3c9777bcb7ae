import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, configPathFromArgs, loadConfig } from "../server/config.js";
import { configError } from "./support/config.js";
import { freshDataDir } from "./support/databases.js";

function yamlFile(text: string): string {
  const file = join(freshDataDir(), "orisun.yaml");
  writeFileSync(file, text);
  return file;
}

function rejects(env: Record<string, string>, name: string, argv: string[] = []): ConfigError {
  const error = configError(env, argv);
  expect(error.message).toContain(name);
  return error;
}

describe("loadConfig defaults", () => {
  it("has the documented defaults", () => {
    const c = loadConfig({}, []);
    expect(c.port).toBe(50051);
    expect(c.pgUrl).toBeUndefined();
    expect(c.pgSchema).toBe("public");
    expect(c.natsUrl).toBeUndefined();
    expect(c.dataDir).toBe(resolve("./data"));
    expect(c.tls).toBeUndefined();
    expect(c.boundaries).toBeUndefined();
    expect(c.corsOrigins).toEqual([]);
    expect(c.pubsubRetentionMs).toBe(86_400_000);
    expect(c.pubsubDedupeWindowMs).toBe(120_000);
    expect(c.limits).toMatchObject({
      maxEventsPerSave: 10_000,
      maxEventDataBytes: 1024 * 1024,
      maxTagsPerEvent: 64,
      maxTagBytes: 256,
      maxRequestBytes: 4 * 1024 * 1024,
    });
  });

  it("ignores empty and non-ORISUN variables", () => {
    const c = loadConfig({ ORISUN_PORT: "", PORT: "1", ORISUN_PG_URL: "" }, []);
    expect(c.port).toBe(50051);
    expect(c.pgUrl).toBeUndefined();
  });
});

describe("loadConfig environment parsing", () => {
  it("reads every variable", () => {
    const c = loadConfig(
      {
        ORISUN_PORT: "7000",
        ORISUN_HOST: "127.0.0.1",
        ORISUN_PG_URL: "postgresql://u:p@db:5433/es",
        ORISUN_PG_SCHEMA: "tenant_1",
        ORISUN_PG_POOL_SIZE: "3",
        ORISUN_NATS_URL: "nats://n:4222",
        ORISUN_DATA_DIR: "/tmp/orisun-data",
        ORISUN_DATA_MIN_FREE_BYTES: "0",
        ORISUN_LIVE_STREAM_MAX_BYTES: "16777216",
        ORISUN_BOUNDARIES: " users , orders ,",
        ORISUN_CORS_ORIGINS: "https://a.example,https://b.example",
        ORISUN_PUBSUB_RETENTION: "2h",
        ORISUN_PUBSUB_DEDUPE_WINDOW: "500ms",
        ORISUN_LOG_LEVEL: "warn",
        ORISUN_MAX_EVENTS_PER_SAVE: "5",
        ORISUN_MAX_EVENT_BYTES: "1000",
        ORISUN_MAX_TAGS_PER_EVENT: "4",
        ORISUN_MAX_TAG_BYTES: "16",
        ORISUN_MAX_REQUEST_BYTES: "8192",
        ORISUN_MAX_CRITERIA: "7",
        ORISUN_MAX_MESSAGE_BYTES: "99",
        ORISUN_MAX_READ_BYTES: "65536",
      },
      [],
    );
    expect(c.port).toBe(7000);
    expect(c.host).toBe("127.0.0.1");
    expect(c.pgUrl).toBe("postgresql://u:p@db:5433/es");
    expect(c.pgSchema).toBe("tenant_1");
    expect(c.pgPoolSize).toBe(3);
    expect(c.natsUrl).toBe("nats://n:4222");
    expect(c.dataDir).toBe("/tmp/orisun-data");
    expect(c.dataMinFreeBytes).toBe(0);
    expect(c.liveStreamMaxBytes).toBe(16_777_216);
    expect(c.boundaries).toEqual(["users", "orders"]);
    expect(c.corsOrigins).toEqual(["https://a.example", "https://b.example"]);
    expect(c.pubsubRetentionMs).toBe(7_200_000);
    expect(c.pubsubDedupeWindowMs).toBe(500);
    expect(c.logLevel).toBe("warn");
    expect(c.limits).toEqual({
      maxEventsPerSave: 5,
      maxEventDataBytes: 1000,
      maxTagsPerEvent: 4,
      maxTagBytes: 16,
      maxRequestBytes: 8192,
      maxCriteria: 7,
      maxMessageBytes: 99,
      maxReadBytes: 65_536,
    });
  });

  it.each([
    ["90s", 90_000],
    ["2m", 120_000],
    ["7d", 604_800_000],
  ])("duration %s", (raw, ms) => {
    expect(loadConfig({ ORISUN_PUBSUB_RETENTION: raw }, []).pubsubRetentionMs).toBe(ms);
  });

  it("ORISUN_DATA_MIN_FREE_BYTES: 128 MiB unless set, a whole number of bytes", () => {
    expect(loadConfig({}, []).dataMinFreeBytes).toBe(134_217_728);
    expect(loadConfig({ ORISUN_DATA_MIN_FREE_BYTES: "1048576" }, []).dataMinFreeBytes).toBe(
      1_048_576,
    );
    expect(() => loadConfig({ ORISUN_DATA_MIN_FREE_BYTES: "64MiB" }, [])).toThrow(
      'ORISUN_DATA_MIN_FREE_BYTES: must be an integer from 0 to 9007199254740991, got "64MiB"',
    );
  });

  it("ORISUN_LIVE_STREAM_MAX_BYTES: no bound (0) unless set, else at least 8 MiB", () => {
    expect(loadConfig({}, []).liveStreamMaxBytes).toBe(0);
    expect(loadConfig({ ORISUN_LIVE_STREAM_MAX_BYTES: "0" }, []).liveStreamMaxBytes).toBe(0);
    expect(() => loadConfig({ ORISUN_LIVE_STREAM_MAX_BYTES: "1048576" }, [])).toThrow(
      'ORISUN_LIVE_STREAM_MAX_BYTES: must be 0 (no bound) or at least 8388608, got "1048576"',
    );
  });

  it("ORISUN_LIVE_STREAM_MAX_AGE: 10 minutes unless set, from 2m to 24h", () => {
    expect(loadConfig({}, []).liveStreamMaxAgeMs).toBe(600_000);
    expect(loadConfig({ ORISUN_LIVE_STREAM_MAX_AGE: "1h" }, []).liveStreamMaxAgeMs).toBe(3_600_000);
    for (const raw of ["90s", "2d"]) {
      expect(() => loadConfig({ ORISUN_LIVE_STREAM_MAX_AGE: raw }, [])).toThrow(
        `ORISUN_LIVE_STREAM_MAX_AGE: must be from 2m to 24h, got "${raw}"`,
      );
    }
  });

  it("ORISUN_PUBSUB_MAX_BYTES: 1 GiB with NATS, 64 MiB per group embedded, at least 8 MiB", () => {
    const nats = { ORISUN_NATS_URL: "nats://127.0.0.1:4222" };
    expect(loadConfig(nats, []).pubsubMaxBytes).toBe(1_073_741_824);
    expect(loadConfig({}, []).pubsubMaxBytes).toBe(67_108_864);
    expect(loadConfig({ ORISUN_PUBSUB_MAX_BYTES: "16777216" }, []).pubsubMaxBytes).toBe(16_777_216);
    expect(() => loadConfig({ ...nats, ORISUN_PUBSUB_MAX_BYTES: "1048576" }, [])).toThrow(
      'ORISUN_PUBSUB_MAX_BYTES: must be an integer from 8388608 to 9007199254740991, got "1048576"',
    );
  });

  it("ORISUN_MAX_READ_BYTES: 4 MiB unless set, 64 KiB to 1 GiB", () => {
    expect(loadConfig({}, []).limits.maxReadBytes).toBe(4_194_304);
    expect(() => loadConfig({ ORISUN_MAX_READ_BYTES: "1000" }, [])).toThrow(
      'ORISUN_MAX_READ_BYTES: must be an integer from 65536 to 1073741824, got "1000"',
    );
  });

  it("ORISUN_MAX_NAMED_SUBSCRIPTIONS: 1,000 per process unless set", () => {
    expect(loadConfig({}, []).maxNamedSubscriptions).toBe(1_000);
    expect(loadConfig({ ORISUN_MAX_NAMED_SUBSCRIPTIONS: "50" }, []).maxNamedSubscriptions).toBe(50);
    expect(() => loadConfig({ ORISUN_MAX_NAMED_SUBSCRIPTIONS: "0" }, [])).toThrow(
      'ORISUN_MAX_NAMED_SUBSCRIPTIONS: must be an integer from 1 to 100000, got "0"',
    );
  });

  it("port 0 (any free port) is allowed", () => {
    expect(loadConfig({ ORISUN_PORT: "0" }, []).port).toBe(0);
  });

  it("reads TLS files", () => {
    const dir = freshDataDir();
    writeFileSync(join(dir, "c.pem"), "CERT");
    writeFileSync(join(dir, "k.pem"), "KEY");
    const c = loadConfig(
      { ORISUN_TLS_CERT: join(dir, "c.pem"), ORISUN_TLS_KEY: join(dir, "k.pem") },
      [],
    );
    expect(c.tls).toEqual({ cert: "CERT", key: "KEY" });
  });

  it("reads the connection limits, with their defaults", () => {
    expect(loadConfig({}, []).connections).toEqual({
      handshakeTimeoutMs: 10_000,
      headersTimeoutMs: 15_000,
      idleTimeoutMs: 120_000,
      maxStreamsPerConnection: 100,
      maxConnectionsPerAddress: 256,
      maxConnections: 900,
      maxConnectionBodyBytes: 32 * 1024 * 1024,
      maxBodyBytes: 512 * 1024 * 1024,
      bodyTimeoutMs: 30_000,
    });
    const c = loadConfig(
      {
        ORISUN_HANDSHAKE_TIMEOUT: "3s",
        ORISUN_HEADERS_TIMEOUT: "500ms",
        ORISUN_IDLE_TIMEOUT: "5m",
        ORISUN_MAX_STREAMS_PER_CONNECTION: "8",
        ORISUN_MAX_CONNECTIONS_PER_ADDRESS: "16",
        ORISUN_MAX_CONNECTIONS: "4000",
        ORISUN_MAX_CONNECTION_BODY_BYTES: "8388608",
        ORISUN_MAX_BODY_BYTES: "67108864",
        ORISUN_BODY_TIMEOUT: "90s",
      },
      [],
    );
    expect(c.connections).toEqual({
      handshakeTimeoutMs: 3_000,
      headersTimeoutMs: 500,
      idleTimeoutMs: 300_000,
      maxStreamsPerConnection: 8,
      maxConnectionsPerAddress: 16,
      maxConnections: 4000,
      maxConnectionBodyBytes: 8 * 1024 * 1024,
      maxBodyBytes: 64 * 1024 * 1024,
      bodyTimeoutMs: 90_000,
    });
    expect(() => loadConfig({ ORISUN_BODY_TIMEOUT: "10s" }, [])).toThrow(
      'ORISUN_BODY_TIMEOUT: must be at least ORISUN_HEADERS_TIMEOUT (15000 ms), got "10s"',
    );
    expect(loadConfig({ ORISUN_HEADERS_TIMEOUT: "1m" }, []).connections.bodyTimeoutMs).toBe(60_000);
    for (const bad of ["0s", "soon", "25d"]) {
      expect(() => loadConfig({ ORISUN_BODY_TIMEOUT: bad }, [])).toThrow(
        /^ORISUN_BODY_TIMEOUT: must be/,
      );
    }
  });

  it("bounds request bodies in flight so that one request of the largest size fits", () => {
    // Defaults follow a larger request limit.
    const big = loadConfig({ ORISUN_MAX_REQUEST_BYTES: String(64 * 1024 * 1024) }, []);
    expect(big.connections.maxConnectionBodyBytes).toBe(64 * 1024 * 1024);
    rejects(
      { ORISUN_MAX_REQUEST_BYTES: "8192", ORISUN_MAX_CONNECTION_BODY_BYTES: "4096" },
      "ORISUN_MAX_CONNECTION_BODY_BYTES: must be at least ORISUN_MAX_REQUEST_BYTES",
    );
    rejects(
      { ORISUN_MAX_CONNECTION_BODY_BYTES: "67108864", ORISUN_MAX_BODY_BYTES: "33554432" },
      "ORISUN_MAX_BODY_BYTES: must be at least ORISUN_MAX_CONNECTION_BODY_BYTES",
    );
    rejects({ ORISUN_MAX_BODY_BYTES: "lots" }, "ORISUN_MAX_BODY_BYTES");
  });

  it("reads the NATS credentials file setting, refusing it next to credentials in the URL", () => {
    const dir = mkdtempSync(join(tmpdir(), "orisun-creds-"));
    try {
      const file = join(dir, "orisun.creds");
      writeFileSync(file, "creds");
      const env = { ORISUN_NATS_URL: "nats://n:4222", ORISUN_NATS_CREDS: file };
      expect(loadConfig(env, []).natsCredsFile).toBe(file);
      const both = { ...env, ORISUN_NATS_URL: "nats://u:p@n:4222" };
      rejects(both, "ORISUN_NATS_CREDS");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("loadConfig rejects bad values naming the variable", () => {
  it.each([
    ["ORISUN_PORT", "abc"],
    ["ORISUN_PORT", "-1"],
    ["ORISUN_PORT", "65536"],
    ["ORISUN_PORT", "80.5"],
    ["ORISUN_PORT", "1e3"],
    ["ORISUN_PG_URL", "http://x"],
    ["ORISUN_PG_URL", "not a url"],
    ["ORISUN_PG_SCHEMA", "Bad-Schema"],
    ["ORISUN_PG_SCHEMA", "1abc"],
    ["ORISUN_PG_SCHEMA", 'x"; DROP'],
    ["ORISUN_PG_POOL_SIZE", "0"],
    ["ORISUN_NATS_URL", "http://n:4222"],
    ["ORISUN_NATS_URL", "nope"],
    ["ORISUN_BOUNDARIES", "users,Orders"],
    ["ORISUN_BOUNDARIES", "users,9x"],
    ["ORISUN_LOG_LEVEL", "loud"],
    ["ORISUN_PUBSUB_RETENTION", "forever"],
    ["ORISUN_PUBSUB_RETENTION", "0s"],
    ["ORISUN_PUBSUB_RETENTION", "10"],
    ["ORISUN_PUBSUB_DEDUPE_WINDOW", "2 minutes"],
    ["ORISUN_MAX_EVENTS_PER_SAVE", "0"],
    ["ORISUN_MAX_EVENT_BYTES", "lots"],
    ["ORISUN_MAX_TAGS_PER_EVENT", "0"],
    ["ORISUN_MAX_TAG_BYTES", "99999999"],
    ["ORISUN_MAX_REQUEST_BYTES", "100"],
    ["ORISUN_MAX_CRITERIA", "x"],
    ["ORISUN_MAX_MESSAGE_BYTES", "-5"],
    ["ORISUN_TLS_CERT", "/nonexistent/cert.pem"],
    ["ORISUN_HANDSHAKE_TIMEOUT", "0s"],
    ["ORISUN_HEADERS_TIMEOUT", "15"],
    ["ORISUN_IDLE_TIMEOUT", "25d"],
    ["ORISUN_MAX_STREAMS_PER_CONNECTION", "0"],
    ["ORISUN_MAX_CONNECTIONS_PER_ADDRESS", "many"],
    ["ORISUN_MAX_CONNECTIONS", "0"],
    ["ORISUN_NATS_CREDS", "/nonexistent/orisun.creds"],
  ])("%s=%s", (name, value) => {
    const env: Record<string, string> = { [name]: value };
    if (name === "ORISUN_TLS_CERT") env.ORISUN_TLS_KEY = "/nonexistent/key.pem";
    rejects(env, name);
  });

  it("a bad NATS URL is quoted without its password", () => {
    const error = rejects(
      { ORISUN_NATS_URL: "nats://user:s3cret@bad host:4222" },
      "ORISUN_NATS_URL",
    );
    expect(error.message).not.toContain("s3cret");
  });

  it("TLS cert without key (and key without cert)", () => {
    rejects({ ORISUN_TLS_CERT: "/x.pem" }, "ORISUN_TLS_KEY");
    rejects({ ORISUN_TLS_KEY: "/x.pem" }, "ORISUN_TLS_CERT");
  });
});

describe("database timeouts and the catch-up share", () => {
  it("have sane defaults and follow the pool size", () => {
    const c = loadConfig({}, []);
    expect(c.pgStatementTimeoutMs).toBe(10_000);
    expect(c.pgLockTimeoutMs).toBe(5_000);
    expect(c.pgIdleInTransactionTimeoutMs).toBe(60_000);
    expect(c.pgConnectTimeoutMs).toBe(5_000);
    expect(c.catchUpConnections).toBe(5);
    expect(loadConfig({ ORISUN_PG_POOL_SIZE: "1" }, []).catchUpConnections).toBe(1);
  });

  it("reads each variable", () => {
    const c = loadConfig(
      {
        ORISUN_PG_STATEMENT_TIMEOUT: "2s",
        ORISUN_PG_LOCK_TIMEOUT: "500ms",
        ORISUN_PG_IDLE_IN_TRANSACTION_TIMEOUT: "2m",
        ORISUN_PG_CONNECT_TIMEOUT: "3s",
        ORISUN_CATCHUP_CONNECTIONS: "3",
      },
      [],
    );
    expect(c.pgStatementTimeoutMs).toBe(2_000);
    expect(c.pgLockTimeoutMs).toBe(500);
    expect(c.pgIdleInTransactionTimeoutMs).toBe(120_000);
    expect(c.pgConnectTimeoutMs).toBe(3_000);
    expect(c.catchUpConnections).toBe(3);
  });

  it.each([
    ["ORISUN_PG_STATEMENT_TIMEOUT", "10"],
    ["ORISUN_PG_LOCK_TIMEOUT", "0s"],
    ["ORISUN_PG_IDLE_IN_TRANSACTION_TIMEOUT", "soon"],
    ["ORISUN_PG_CONNECT_TIMEOUT", "-1s"],
    ["ORISUN_CATCHUP_CONNECTIONS", "0"],
  ])("%s=%s", (name, value) => {
    rejects({ [name]: value }, name);
  });

  it("refuses a catch-up share larger than the pool", () => {
    const e = rejects(
      { ORISUN_PG_POOL_SIZE: "4", ORISUN_CATCHUP_CONNECTIONS: "5" },
      "ORISUN_CATCHUP_CONNECTIONS",
    );
    expect(e.message).toContain("ORISUN_PG_POOL_SIZE (4)");
  });
});

describe("YAML file", () => {
  const layout = (schema: string, port: number) =>
    yamlFile(
      [
        `db:   {host: dbhost, port: 5433, user: postgres, password: secret, name: orisun, schema: ${schema}}`,
        "nats: {url: nats://localhost:4222}",
        `server: {port: ${port}}`,
        "",
      ].join("\n"),
    );

  it("follows the original layout", () => {
    const file = layout("yaml_schema", 50052);
    for (const argv of [["--config", file], ["-config", file], [`--config=${file}`]]) {
      const c = loadConfig({}, argv);
      expect(c.port).toBe(50052);
      expect(c.pgSchema).toBe("yaml_schema");
      expect(c.natsUrl).toBe("nats://localhost:4222");
      const url = new URL(c.pgUrl ?? "");
      expect(url.protocol).toBe("postgres:");
      expect(url.hostname).toBe("dbhost");
      expect(url.port).toBe("5433");
      expect(url.username).toBe("postgres");
      expect(url.password).toBe("secret");
      expect(url.pathname).toBe("/orisun");
    }
  });

  it("environment variables win over the file", () => {
    const file = layout("yaml_schema", 50052);
    const c = loadConfig(
      {
        ORISUN_PORT: "6000",
        ORISUN_PG_SCHEMA: "env_schema",
        ORISUN_PG_URL: "postgres://other/db",
        ORISUN_NATS_URL: "nats://other:1",
      },
      ["--config", file],
    );
    expect(c.port).toBe(6000);
    expect(c.pgSchema).toBe("env_schema");
    expect(c.pgUrl).toBe("postgres://other/db");
    expect(c.natsUrl).toBe("nats://other:1");
  });

  it("an empty environment value does not override the file", () => {
    const file = layout("yaml_schema", 50052);
    expect(loadConfig({ ORISUN_PORT: "" }, ["--config", file]).port).toBe(50052);
  });

  it("values in the file are validated and named", () => {
    rejects({}, "ORISUN_PORT", ["--config", yamlFile("server: {port: abc}\n")]);
    rejects({}, "ORISUN_PG_SCHEMA", ["--config", yamlFile("db: {schema: Bad-Schema}\n")]);
  });

  it("an empty file is an empty configuration", () => {
    expect(loadConfig({}, ["--config", yamlFile("")]).port).toBe(50051);
  });

  it("rejects a missing file, bad YAML and a wrong shape, naming the file", () => {
    const missing = "/nonexistent/orisun.yaml";
    rejects({}, missing, ["--config", missing]);
    const bad = yamlFile("db: {host: [unclosed\n");
    rejects({}, bad, ["--config", bad]);
    const scalar = yamlFile("just a string\n");
    rejects({}, scalar, ["--config", scalar]);
    const section = yamlFile("db: 5\n");
    rejects({}, "db", ["--config", section]);
  });

  it("--config without a path", () => {
    expect(() => configPathFromArgs(["--config"])).toThrow(ConfigError);
    expect(configPathFromArgs(["x", "-config", "a.yaml"])).toBe("a.yaml");
    expect(configPathFromArgs(["-config=b.yaml"])).toBe("b.yaml");
    expect(configPathFromArgs([])).toBeUndefined();
  });
});

describe("pub/sub expiry and resource caps", () => {
  it("has the documented defaults", () => {
    const c = loadConfig({}, []);
    expect(c.pubsubGroupExpiryMs).toBe(7 * 86_400_000);
    expect(c.maxBoundaries).toBe(10_000);
    expect(c.maxGroups).toBe(1_000);
    expect(c.maxSubscriptionsPerConnection).toBe(100);
    expect(c.maxSubscriptions).toBe(10_000);
  });

  it("reads each variable", () => {
    const c = loadConfig(
      {
        ORISUN_PUBSUB_GROUP_EXPIRY: "30d",
        ORISUN_MAX_BOUNDARIES: "5",
        ORISUN_MAX_GROUPS: "6",
        ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION: "7",
        ORISUN_MAX_SUBSCRIPTIONS: "8",
      },
      [],
    );
    expect(c.pubsubGroupExpiryMs).toBe(30 * 86_400_000);
    expect(c.maxBoundaries).toBe(5);
    expect(c.maxGroups).toBe(6);
    expect(c.maxSubscriptionsPerConnection).toBe(7);
    expect(c.maxSubscriptions).toBe(8);
  });

  it("keeps groups at least as long as the retention: the default follows it, less is refused", () => {
    expect(loadConfig({ ORISUN_PUBSUB_RETENTION: "10d" }, []).pubsubGroupExpiryMs).toBe(
      10 * 86_400_000,
    );
    const short = { ORISUN_PUBSUB_RETENTION: "2s", ORISUN_PUBSUB_GROUP_EXPIRY: "2s" };
    expect(loadConfig(short, []).pubsubGroupExpiryMs).toBe(2_000);
    const error = rejects({ ORISUN_PUBSUB_GROUP_EXPIRY: "1h" }, "ORISUN_PUBSUB_GROUP_EXPIRY");
    expect(error.message).toContain("ORISUN_PUBSUB_RETENTION");
  });

  it.each([
    ["ORISUN_PUBSUB_GROUP_EXPIRY", "never"],
    ["ORISUN_PUBSUB_GROUP_EXPIRY", "3651d"],
    ["ORISUN_MAX_BOUNDARIES", "0"],
    ["ORISUN_MAX_GROUPS", "many"],
    ["ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION", "0"],
    ["ORISUN_MAX_SUBSCRIPTIONS", "-1"],
  ])("rejects %s=%s naming it", (name, value) => {
    rejects({ [name]: value }, name);
  });
});

describe("per-boundary bounds", () => {
  it("default to a 64 MiB window budget, 2 minutes idle and a 5 s sweep", () => {
    const c = loadConfig({}, []);
    expect(c.recentCommitsBytes).toBe(64 * 1024 * 1024);
    expect(c.boundaryIdleMs).toBe(120_000);
    expect(c.publisherSweepMs).toBe(5_000);
  });

  it("are read from the environment", () => {
    const c = loadConfig(
      {
        ORISUN_RECENT_COMMITS_BYTES: "0",
        ORISUN_BOUNDARY_IDLE: "30s",
        ORISUN_PUBLISHER_SWEEP: "500ms",
      },
      [],
    );
    expect(c.recentCommitsBytes).toBe(0);
    expect(c.boundaryIdleMs).toBe(30_000);
    expect(c.publisherSweepMs).toBe(500);
  });

  it.each([
    ["ORISUN_RECENT_COMMITS_BYTES", "-1"],
    ["ORISUN_RECENT_COMMITS_BYTES", "64MiB"],
    ["ORISUN_BOUNDARY_IDLE", "0s"],
    ["ORISUN_BOUNDARY_IDLE", "2"],
    ["ORISUN_PUBLISHER_SWEEP", "soon"],
  ])("rejects %s=%s, naming it", (name, value) => {
    rejects({ [name]: value }, name);
  });
});

describe.each([
  ["ORISUN_PUBLISH_LINGER", "publishLingerMs", 10],
  ["ORISUN_GROUP_COMMIT_WAIT", "groupCommitWaitMs", 5],
] as const)("%s", (name, field, fallback) => {
  it(`defaults to ${fallback} ms, takes 0 to switch it off and durations up to 1s`, () => {
    expect(loadConfig({}, [])[field]).toBe(fallback);
    expect(loadConfig({ [name]: "0ms" }, [])[field]).toBe(0);
    expect(loadConfig({ [name]: "20ms" }, [])[field]).toBe(20);
    expect(loadConfig({ [name]: "1s" }, [])[field]).toBe(1_000);
  });

  it.each(["2s", "1001ms", "5", "-1ms", "1m", "soon"])("rejects %s, naming it", (value) => {
    rejects({ [name]: value }, name);
  });
});

describe("ORISUN_PUBLISH_BUFFER_BYTES", () => {
  it("defaults to 64 MiB and is read from the environment", () => {
    expect(loadConfig({}, []).publishBufferBytes).toBe(64 * 1024 * 1024);
    expect(loadConfig({ ORISUN_PUBLISH_BUFFER_BYTES: "0" }, []).publishBufferBytes).toBe(0);
  });

  it.each(["-1", "1MiB", "1.5"])("rejects %s, naming it", (value) => {
    rejects({ ORISUN_PUBLISH_BUFFER_BYTES: value }, "ORISUN_PUBLISH_BUFFER_BYTES");
  });
});
