import { type ChildProcess, spawn } from "node:child_process";
import { resolve } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  dropSchema,
  freshDataDir,
  freshSchema,
  PG_HOST,
  PG_PORT,
  pgUrlVia,
} from "../support/databases.js";
import { type OwnNatsServer, startOwnNatsServer } from "../support/nats-server.js";
import { freePort } from "../support/spawn-server.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";

/** The server as a plain child, so that the test can read its log while it is still starting. */
interface Starting {
  readonly child: ChildProcess;
  readonly port: number;
  output(): string;
  exited: Promise<number | null>;
}

const started = new Set<ChildProcess>();

async function start(env: Record<string, string>): Promise<Starting> {
  const port = await freePort();
  const child = spawn(process.execPath, [resolve("dist/server/main.js")], {
    env: {
      PATH: process.env.PATH ?? "",
      ORISUN_LOG_LEVEL: "info",
      ...env,
      ORISUN_PORT: String(port),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  started.add(child);
  let log = "";
  child.stdout?.on("data", (d: Buffer) => {
    log += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    log += d.toString();
  });
  const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
  return { child, port, output: () => log, exited };
}

async function until(what: string, condition: () => boolean, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const count = (text: string, needle: string) => text.split(needle).length - 1;

describe("start-up waits for PostgreSQL and NATS", () => {
  const schemas: string[] = [];
  let proxy: TcpProxy | undefined;
  let nats: OwnNatsServer | undefined;
  afterEach(async () => {
    for (const child of started) if (child.exitCode === null) child.kill("SIGKILL");
    started.clear();
    await proxy?.close();
    await nats?.stop();
  });
  afterAll(async () => {
    for (const schema of schemas) await dropSchema(schema);
  });

  it("PostgreSQL and then NATS that appear after the server started: one line per attempt, then it serves", async () => {
    proxy = await startTcpProxy(PG_HOST, PG_PORT);
    proxy.cut();
    nats = await startOwnNatsServer();
    await nats.stop();
    const schema = freshSchema("startup");
    schemas.push(schema);
    const server = await start({
      ORISUN_PG_URL: pgUrlVia(proxy.port),
      ORISUN_PG_SCHEMA: schema,
      ORISUN_NATS_URL: nats.url,
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_STARTUP_TIMEOUT: "60s",
    });
    await until(
      "two PostgreSQL attempts",
      () => count(server.output(), "PostgreSQL is not reachable yet") >= 2,
    );
    proxy.restore();
    await until(
      "two NATS attempts",
      () => count(server.output(), "NATS is not reachable yet") >= 2,
    );
    expect(server.child.exitCode).toBeNull();
    await nats.start();
    await until("listening", () => server.output().includes("Orisun listening"));
    const answer = await fetch(`http://127.0.0.1:${server.port}/orisun.v1.EventStore/SaveEvents`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ boundary: "late", events: [{ event_type: "T", data: "{}" }] }),
    });
    expect(await answer.json()).toEqual({
      logPosition: { commitPosition: "1", preparePosition: "1" },
    });
    // Each attempt's line says what failed and when the next comes.
    const line = server
      .output()
      .split("\n")
      .find((l) => l.includes("PostgreSQL is not reachable yet"));
    expect(JSON.parse(line ?? "{}")).toMatchObject({ level: 40, attempt: 1, retryInMs: 250 });
    server.child.kill("SIGTERM");
    expect(await server.exited).toBe(0);
  });

  it("gives up after ORISUN_STARTUP_TIMEOUT and exits non-zero", async () => {
    proxy = await startTcpProxy(PG_HOST, PG_PORT);
    proxy.cut();
    const began = Date.now();
    const server = await start({
      ORISUN_PG_URL: pgUrlVia(proxy.port),
      ORISUN_PG_SCHEMA: freshSchema("startup"),
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_STARTUP_TIMEOUT: "3s",
    });
    expect(await server.exited).toBe(1);
    const took = Date.now() - began;
    expect(took).toBeGreaterThan(2_000);
    expect(took).toBeLessThan(20_000);
    expect(count(server.output(), "PostgreSQL is not reachable yet")).toBeGreaterThanOrEqual(2);
    expect(server.output()).toContain("orisun: failed to start");
  });

  it("an error that waiting cannot fix (no such database) fails at once, without retrying", async () => {
    const url = new URL(pgUrlVia(PG_PORT));
    url.hostname = PG_HOST;
    url.pathname = "/orisun_no_such_database";
    const server = await start({
      ORISUN_PG_URL: url.toString(),
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_STARTUP_TIMEOUT: "60s",
    });
    expect(await server.exited).toBe(1);
    expect(server.output()).not.toContain("not reachable yet");
    expect(server.output()).toContain("orisun_no_such_database");
  });
});
