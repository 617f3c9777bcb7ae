import { existsSync, readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join, resolve } from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore } from "../../gen/orisun/v1/eventstore_pb.js";
import { failure } from "../support/clients.js";
import { dropSchema, freshDataDir, freshSchema, NATS_URL, PG_URL } from "../support/databases.js";
import { spawnServer } from "../support/spawn-server.js";
import { tempDir } from "../support/temp.js";

/** The packages' URLs a server loaded, recorded by test/fixtures/record-modules.mjs. */
function recording(): { env: Record<string, string>; loaded(): string } {
  const log = join(tempDir("orisun-modules-"), "modules.txt");
  return {
    env: {
      NODE_OPTIONS: `--import ${resolve("test/fixtures/record-modules.mjs")}`,
      ORISUN_TEST_MODULE_LOG: log,
    },
    loaded: () => (existsSync(log) ? readFileSync(log, "utf8") : ""),
  };
}

const SDK_PACKAGES = [
  "@opentelemetry/sdk-trace",
  "@opentelemetry/exporter-trace-otlp-http",
  "@opentelemetry/context-async-hooks",
];

/** The OTLP/JSON shapes this test reads (opentelemetry-proto's JSON mapping). */
interface OtlpValue {
  readonly stringValue?: string;
  readonly intValue?: number | string;
}
interface OtlpSpan {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly name: string;
  readonly kind: number;
  readonly attributes?: readonly { key: string; value: OtlpValue }[];
  readonly status?: { code?: number };
}
interface OtlpExport {
  readonly resourceSpans: readonly {
    resource?: { attributes?: readonly { key: string; value: OtlpValue }[] };
    scopeSpans: readonly { spans: readonly OtlpSpan[] }[];
  }[];
}

const SPAN_KIND_SERVER = 2;

async function until(condition: () => boolean, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 50));
  }
}
const STATUS_ERROR = 2;

const attribute = (span: OtlpSpan, key: string) => {
  const value = span.attributes?.find((a) => a.key === key)?.value;
  return value?.stringValue ?? (value?.intValue === undefined ? undefined : Number(value.intValue));
};

describe("OpenTelemetry traces when OTEL_EXPORTER_OTLP_ENDPOINT is set", () => {
  const exports: OtlpExport[] = [];
  const paths: string[] = [];
  let receiver: Server;
  const schema = freshSchema("tracing");

  beforeAll(async () => {
    // A test-owned OTLP/HTTP receiver: it decodes what the exporter sends, as a collector would.
    receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        paths.push(`${req.method} ${req.url} ${req.headers["content-type"]}`);
        exports.push(JSON.parse(Buffer.concat(chunks).toString("utf8")) as OtlpExport);
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
      });
    });
    await new Promise<void>((done) => receiver.listen(0, "127.0.0.1", done));
  });
  afterAll(async () => {
    await new Promise((done) => receiver.close(done));
    await dropSchema(schema);
  });

  it("exports a span per RPC and per append transaction, the transaction inside its RPC", async () => {
    const { port } = receiver.address() as AddressInfo;
    const modules = recording();
    const server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_DATA_DIR: freshDataDir(),
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
      OTEL_SERVICE_NAME: "orisun-under-test",
      ...modules.env,
    });
    // The recording works: the SDK is loaded when tracing is on (see the test below for off).
    for (const name of SDK_PACKAGES) expect(modules.loaded()).toContain(`/${name}/`);
    try {
      const client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
      await client.saveEvents({
        boundary: "traced",
        events: [{ eventId: "a", eventType: "X", data: "{}" }],
      });
      await client.getEvents({ boundary: "traced", count: 10 });
      const refused = await failure(client.saveEvents({ boundary: "Not Valid", events: [] }));
      expect(refused.code).toBe(Code.InvalidArgument);
    } finally {
      // Spans go out in batches; a graceful stop sends what is left.
      expect(await server.stop()).toBe(0);
    }

    expect(paths.length).toBeGreaterThan(0);
    for (const p of paths) expect(p).toBe("POST /v1/traces application/json");
    const resources = exports.flatMap((e) => e.resourceSpans);
    const serviceNames = resources.map(
      (r) => r.resource?.attributes?.find((a) => a.key === "service.name")?.value.stringValue,
    );
    expect(new Set(serviceNames)).toEqual(new Set(["orisun-under-test"]));
    const spans = resources.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans));

    const saves = spans.filter((s) => s.name === "orisun.v1.EventStore/SaveEvents");
    expect(saves).toHaveLength(2);
    const ok = saves.find((s) => attribute(s, "rpc.connect_rpc.error_code") === "ok");
    const bad = saves.find(
      (s) => attribute(s, "rpc.connect_rpc.error_code") === "invalid_argument",
    );
    expect(ok?.kind).toBe(SPAN_KIND_SERVER);
    expect(attribute(ok as OtlpSpan, "rpc.service")).toBe("orisun.v1.EventStore");
    expect(attribute(ok as OtlpSpan, "rpc.method")).toBe("SaveEvents");
    expect(ok?.status?.code ?? 0).not.toBe(STATUS_ERROR);
    expect(bad?.status?.code).toBe(STATUS_ERROR);

    const transactions = spans.filter((s) => s.name === "orisun.append.transaction");
    expect(transactions).toHaveLength(1);
    const [transaction] = transactions;
    expect(transaction?.traceId).toBe(ok?.traceId);
    expect(transaction?.parentSpanId).toBe(ok?.spanId);
    expect(attribute(transaction as OtlpSpan, "orisun.boundary")).toBe("traced");
    expect(attribute(transaction as OtlpSpan, "orisun.requests")).toBe(1);

    expect(spans.filter((s) => s.name === "orisun.v1.EventStore/GetEvents")).toHaveLength(1);
  });

  it("with two workers, an append forwarded to its boundary's worker keeps its transaction inside its RPC", async () => {
    const { port } = receiver.address() as AddressInfo;
    const twoSchema = freshSchema("tracing2");
    const before = exports.length;
    let forwarded = 0;
    const server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: twoSchema,
      ORISUN_NATS_URL: NATS_URL,
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_WORKERS: "2",
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
    });
    try {
      await until(() => server.output().split("Orisun listening").length > 2);
      // One append at a time, each on a connection of its own: the primary hands connections
      // to the workers in turn, so half of them reach the worker that does not own the boundary.
      for (let i = 0; i < 8; i++) {
        const transport = createGrpcTransport({ baseUrl: server.url });
        await createClient(EventStore, transport).saveEvents({
          boundary: "forwarded",
          events: [{ eventType: "X", data: "{}" }],
        });
      }
      // Some of them were committed by the other worker, and their transactions made there.
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      forwarded = Number(
        metrics.match(/orisun_appends_routed_total\{route="forwarded"\} (\d+)/)?.[1],
      );
    } finally {
      expect(await server.stop()).toBe(0);
      await dropSchema(twoSchema);
    }
    const resources = exports.slice(before).flatMap((e) => e.resourceSpans);
    const spans = resources.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans));
    const saves = spans.filter((s) => s.name === "orisun.v1.EventStore/SaveEvents");
    expect(saves).toHaveLength(8);
    const transactions = spans.filter((s) => s.name === "orisun.append.transaction");
    expect(transactions).toHaveLength(8);
    for (const t of transactions) {
      const rpc = saves.find((s) => s.spanId === t.parentSpanId);
      expect(rpc?.traceId, "a transaction outside its RPC").toBe(t.traceId);
    }
    expect(forwarded).toBeGreaterThan(0);
  });

  it("without the variable, loads no OpenTelemetry SDK and exports nothing", async () => {
    const before = exports.length;
    const modules = recording();
    const server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_DATA_DIR: freshDataDir(),
      ...modules.env,
    });
    try {
      const client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
      await client.saveEvents({
        boundary: "untraced",
        events: [{ eventId: "b", eventType: "X", data: "{}" }],
      });
    } finally {
      expect(await server.stop()).toBe(0);
    }
    const loaded = modules.loaded();
    expect(loaded).toContain("/dist/server/main.js");
    for (const name of SDK_PACKAGES) expect(loaded).not.toContain(`/${name}/`);
    expect(exports.length).toBe(before);
  });
});
