import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApp, startApp } from "../server/app.js";
import { loadConfig } from "../server/config.js";
import { dropSchema, freshSchema, PG_URL } from "./support/databases.js";
import { frame } from "./support/raw-rpc.js";

// Real sockets against a real server on both paths of the one port: the cleartext sniffer and
// TLS. Timeouts are short through the settings so each test runs in seconds; margins are wide
// because the machine is shared.
const HANDSHAKE_MS = 600;
const HEADERS_MS = 1_000;
const IDLE_MS = 1_500;
/** How long a connection that should be closed may take before the test calls it open. */
const CLOSE_WITHIN_MS = 15_000;

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Server {
  app: RunningApp;
  dir: string;
  schema: string;
  tls: boolean;
}

async function startServer(useTls: boolean, env: Record<string, string>): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), "orisun-test-limits-"));
  const tlsEnv: Record<string, string> = {};
  if (useTls) {
    tlsEnv.ORISUN_TLS_KEY = join(dir, "key.pem");
    tlsEnv.ORISUN_TLS_CERT = join(dir, "cert.pem");
    const subject = "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1";
    const args = `req -x509 -newkey rsa:2048 -nodes -days 1 ${subject}`.split(" ");
    execFileSync(
      "openssl",
      [...args, "-keyout", tlsEnv.ORISUN_TLS_KEY, "-out", tlsEnv.ORISUN_TLS_CERT],
      {
        stdio: "ignore",
      },
    );
  }
  // PostgreSQL rather than the embedded store: it starts in a second even on a busy machine.
  const schema = freshSchema("limits");
  const config = loadConfig(
    {
      ORISUN_PORT: "0",
      ORISUN_HOST: "127.0.0.1",
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_DATA_DIR: join(dir, "data"),
      ORISUN_LOG_LEVEL: "silent",
      ...tlsEnv,
      ...env,
    },
    [],
  );
  try {
    return { app: await startApp(config), dir, schema, tls: useTls };
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    await dropSchema(schema);
    throw error;
  }
}

async function stopServer(server: Server | undefined): Promise<void> {
  if (!server) return;
  try {
    await server.app.close(2_000);
  } finally {
    rmSync(server.dir, { recursive: true, force: true });
    await dropSchema(server.schema);
  }
}

/** Resolves with the milliseconds until the socket closed, or undefined if it outlived `ms`. */
function closedWithin(socket: net.Socket, ms: number): Promise<number | undefined> {
  const started = Date.now();
  return new Promise((resolve) => {
    if (socket.destroyed) return resolve(0);
    const timer = setTimeout(() => resolve(undefined), ms);
    socket.once("close", () => {
      clearTimeout(timer);
      resolve(Date.now() - started);
    });
  });
}

/** A TCP connection that has not said a word: no TLS hello, no HTTP. */
async function rawSocket(server: Server, localAddress = "127.0.0.1"): Promise<net.Socket> {
  const socket = net.connect({ port: server.app.port, host: "127.0.0.1", localAddress });
  socket.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", () => resolve());
    socket.once("error", reject);
  });
  return socket;
}

/**
 * An HTTP/1.1 byte stream: plain TCP, or TLS with ALPN http/1.1. Resolves once the connection
 * is up (for TLS, the handshake done) or undefined if the server closed it first.
 */
async function h1Socket(
  server: Server,
  localAddress = "127.0.0.1",
): Promise<{ socket: net.Socket; localPort: number; received: () => string } | undefined> {
  const tcp = net.connect({ port: server.app.port, host: "127.0.0.1", localAddress });
  const socket = server.tls
    ? tls.connect({ socket: tcp, rejectUnauthorized: false, ALPNProtocols: ["http/1.1"] })
    : tcp;
  tcp.on("error", () => {});
  socket.on("error", () => {});
  let got = "";
  socket.on("data", (d: Buffer) => {
    got += d.toString("latin1");
  });
  const up = await new Promise<boolean>((resolve) => {
    socket.once(server.tls ? "secureConnect" : "connect", () => resolve(true));
    socket.once("close", () => resolve(false));
  });
  if (!up) return undefined;
  return { socket, localPort: tcp.localPort ?? 0, received: () => got };
}

async function until(check: () => boolean, ms = CLOSE_WITHIN_MS): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!check() && Date.now() < deadline) await pause(20);
  return check();
}

async function h2Session(server: Server): Promise<http2.ClientHttp2Session> {
  const session = http2.connect(server.app.url, { rejectUnauthorized: false });
  session.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    session.once("connect", () => resolve());
    session.once("error", reject);
  });
  return session;
}

function sessionClosedWithin(session: http2.ClientHttp2Session, ms: number) {
  return closedWithin(session.socket as net.Socket, ms);
}

/** One request on a session; resolves with its status and body. */
function h2Request(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  body?: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers);
    let status = 0;
    let text = "";
    stream.on("response", (h) => {
      status = Number(h[":status"]);
    });
    stream.on("data", (d: Buffer) => {
      text += d.toString();
    });
    stream.on("end", () => resolve({ status, body: text }));
    stream.on("error", reject);
    stream.end(body);
  });
}

const SERVICE = "/orisun.v1.EventStore";

async function append(server: Server, boundary: string, eventId: string): Promise<void> {
  const session = await h2Session(server);
  try {
    const answer = await h2Request(
      session,
      { ":method": "POST", ":path": `${SERVICE}/SaveEvents`, "content-type": "application/json" },
      JSON.stringify({ boundary, events: [{ eventId, eventType: "Noted", data: "{}" }] }),
    );
    expect(answer.status).toBe(200);
  } finally {
    session.close();
  }
}

/** A Connect streaming request body: one uncompressed envelope. */
function envelope(json: unknown): Buffer {
  return Buffer.from(frame(Buffer.from(JSON.stringify(json))));
}

describe.each([
  { name: "cleartext", tls: false },
  { name: "TLS", tls: true },
])("timeouts on the $name path", ({ tls: useTls }) => {
  let server: Server | undefined;
  beforeAll(async () => {
    server = await startServer(useTls, {
      ORISUN_HANDSHAKE_TIMEOUT: `${HANDSHAKE_MS}ms`,
      ORISUN_HEADERS_TIMEOUT: `${HEADERS_MS}ms`,
      ORISUN_IDLE_TIMEOUT: `${IDLE_MS}ms`,
    });
  });
  afterAll(() => stopServer(server));
  const running = () => server as Server;

  it("closes a TCP connection that sends nothing after the handshake timeout", async () => {
    const socket = await rawSocket(running());
    try {
      const closedAfter = await closedWithin(socket, CLOSE_WITHIN_MS);
      expect(closedAfter).toBeDefined();
      expect(closedAfter).toBeGreaterThanOrEqual(HANDSHAKE_MS - 100);
    } finally {
      socket.destroy();
    }
  });

  it("closes a slowloris HTTP/1.1 sender after the headers timeout, though it never goes quiet", async () => {
    const conn = await h1Socket(running());
    expect(conn).toBeDefined();
    const { socket, received } = conn as NonNullable<typeof conn>;
    try {
      socket.write("GET /healthz HTTP/1.1\r\nHost: x\r\n");
      const closed = closedWithin(socket, CLOSE_WITHIN_MS);
      let lines = 0;
      // A header line every 200 ms: never idle, never done.
      while (!socket.destroyed && lines < CLOSE_WITHIN_MS / 200) {
        socket.write(`X-Trickle-${lines++}: y\r\n`);
        await pause(200);
      }
      const closedAfter = await closed;
      expect(closedAfter).toBeDefined();
      expect(received()).not.toMatch(/^HTTP\/1\.1 200/);
    } finally {
      socket.destroy();
    }
  });

  it("closes an idle HTTP/1.1 keep-alive connection after the idle timeout", async () => {
    const conn = await h1Socket(running());
    expect(conn).toBeDefined();
    const { socket, received } = conn as NonNullable<typeof conn>;
    try {
      socket.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
      expect(await until(() => received().includes('"ok"'))).toBe(true);
      expect(received()).toMatch(/^HTTP\/1\.1 200/);
      const closedAfter = await closedWithin(socket, CLOSE_WITHIN_MS);
      expect(closedAfter).toBeDefined();
      expect(closedAfter).toBeGreaterThanOrEqual(IDLE_MS - 300);
    } finally {
      socket.destroy();
    }
  });

  it("turns TCP keepalive on for accepted connections", async () => {
    const conn = await h1Socket(running());
    expect(conn).toBeDefined();
    const { socket, localPort } = conn as NonNullable<typeof conn>;
    try {
      // The kernel's view of the server's end of this connection shows its keepalive timer.
      const port = running().app.port;
      const ss = execFileSync("ss", ["-tnoe", "state", "established", `( sport = :${port} )`], {
        encoding: "utf8",
      });
      const ours = ss.split("\n").filter((l) => l.includes(`:${localPort} `));
      expect(ours.length).toBe(1);
      expect(ours[0]).toContain("timer:(keepalive");
    } finally {
      socket.destroy();
    }
  });

  it("closes an HTTP/2 session without streams after the idle timeout", async () => {
    const session = await h2Session(running());
    try {
      expect((await h2Request(session, { ":path": "/healthz" })).status).toBe(200);
      const closedAfter = await sessionClosedWithin(session, CLOSE_WITHIN_MS);
      expect(closedAfter).toBeDefined();
      expect(closedAfter).toBeGreaterThanOrEqual(IDLE_MS - 300);
    } finally {
      session.destroy();
    }
  });

  it("keeps an HTTP/2 session with a quiet subscription open past the idle timeout, and delivers to it", async () => {
    const boundary = `quiet_h2_${useTls ? "tls" : "clear"}`;
    const session = await h2Session(running());
    try {
      const stream = session.request({
        ":method": "POST",
        ":path": `${SERVICE}/SubscribeToEvents`,
        "content-type": "application/connect+json",
      });
      stream.on("error", () => {});
      let got = "";
      stream.on("data", (d: Buffer) => {
        got += d.toString("latin1");
      });
      stream.end(envelope({ boundary }));
      // Three idle timeouts of silence.
      expect(await sessionClosedWithin(session, 3 * IDLE_MS)).toBeUndefined();
      const eventId = randomUUID();
      await append(running(), boundary, eventId);
      expect(await until(() => got.includes(eventId))).toBe(true);
      // Once the subscription ends the session is idle, and goes.
      stream.close(http2.constants.NGHTTP2_CANCEL);
      expect(await sessionClosedWithin(session, CLOSE_WITHIN_MS)).toBeDefined();
    } finally {
      session.destroy();
    }
  });

  it("keeps an HTTP/1.1 connection with a quiet subscription open past the idle timeout, and delivers to it", async () => {
    const boundary = `quiet_h1_${useTls ? "tls" : "clear"}`;
    const conn = await h1Socket(running());
    expect(conn).toBeDefined();
    const { socket, received } = conn as NonNullable<typeof conn>;
    try {
      const body = envelope({ boundary });
      socket.write(
        `POST ${SERVICE}/SubscribeToEvents HTTP/1.1\r\nHost: x\r\n` +
          `Content-Type: application/connect+json\r\nContent-Length: ${body.length}\r\n\r\n`,
      );
      socket.write(body);
      expect(await closedWithin(socket, 3 * IDLE_MS)).toBeUndefined();
      const eventId = randomUUID();
      await append(running(), boundary, eventId);
      expect(await until(() => received().includes(eventId))).toBe(true);
    } finally {
      socket.destroy();
    }
  });
});

describe.each([
  { name: "cleartext", tls: false },
  { name: "TLS", tls: true },
])("connection and stream caps on the $name path", ({ tls: useTls }) => {
  const PER_ADDRESS = 3;
  const TOTAL = 5;
  const STREAMS = 4;
  let server: Server | undefined;
  beforeAll(async () => {
    server = await startServer(useTls, {
      ORISUN_MAX_CONNECTIONS_PER_ADDRESS: String(PER_ADDRESS),
      ORISUN_MAX_CONNECTIONS: String(TOTAL),
      ORISUN_MAX_STREAMS_PER_CONNECTION: String(STREAMS),
    });
  });
  afterAll(() => stopServer(server));
  const running = () => server as Server;

  it("closes connections over the per-address and total caps at once; the admitted ones keep working", async () => {
    const held: net.Socket[] = [];
    try {
      const admitted: NonNullable<Awaited<ReturnType<typeof h1Socket>>>[] = [];
      for (let i = 0; i < PER_ADDRESS; i++) {
        const conn = await h1Socket(running(), "127.0.0.1");
        expect(conn).toBeDefined();
        if (conn) {
          admitted.push(conn);
          held.push(conn.socket);
        }
      }
      // Over the per-address cap: closed before a byte is read, so a request gets no answer.
      const extra = net.connect({ port: running().app.port, host: "127.0.0.1" });
      held.push(extra);
      extra.on("error", () => {});
      let answered = "";
      extra.on("data", (d: Buffer) => {
        answered += d.toString("latin1");
      });
      extra.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
      expect(await closedWithin(extra, CLOSE_WITHIN_MS)).toBeDefined();
      expect(answered).toBe("");

      // Another address gets in, up to the total cap.
      for (let i = 0; i < TOTAL - PER_ADDRESS; i++) {
        const conn = await h1Socket(running(), "127.0.0.2");
        expect(conn).toBeDefined();
        if (conn) held.push(conn.socket);
      }
      const overTotal = await rawSocket(running(), "127.0.0.2").catch(() => undefined);
      if (overTotal) {
        held.push(overTotal);
        expect(await closedWithin(overTotal, CLOSE_WITHIN_MS)).toBeDefined();
      }

      // The clients already in are served.
      for (const { socket, received } of admitted) {
        expect(socket.destroyed).toBe(false);
        socket.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        expect(await until(() => received().includes('"ok"'))).toBe(true);
      }
    } finally {
      for (const socket of held) socket.destroy();
    }
  });

  it("refuses streams over the per-connection cap cleanly; the connection keeps serving", async () => {
    // Wait for the sockets of the test before to be gone from the server's count.
    await pause(200);
    const session = http2.connect(running().app.url, { rejectUnauthorized: false });
    session.on("error", () => {});
    try {
      // Sent together before the server's SETTINGS arrive, so the client does not hold any back.
      const outcomes = await Promise.all(
        Array.from({ length: 5 * STREAMS }, () =>
          h2Request(session, { ":path": "/healthz" }).then(
            (r) => (r.status === 200 ? "served" : `status ${r.status}`),
            // REFUSED_STREAM: the server did nothing with it, so a client may retry.
            (e: Error) => (/NGHTTP2_REFUSED_STREAM/.test(e.message) ? "refused" : e.message),
          ),
        ),
      );
      const served = outcomes.filter((o) => o === "served").length;
      const refused = outcomes.filter((o) => o === "refused").length;
      expect(served + refused).toBe(outcomes.length);
      expect(served).toBeGreaterThanOrEqual(STREAMS);
      expect(refused).toBeGreaterThan(0);
      // Same session, later: served again.
      expect((await h2Request(session, { ":path": "/healthz" })).status).toBe(200);
      expect(session.closed || session.destroyed).toBe(false);
    } finally {
      session.destroy();
    }
  });

  it("answers HTTP/1.1 requests pipelined beyond the per-connection cap with 429, in order; the connection keeps serving", async () => {
    await pause(200);
    const conn = await h1Socket(running());
    expect(conn).toBeDefined();
    const { socket, received } = conn as NonNullable<typeof conn>;
    try {
      // Sent in one write: Node parses them all at once and would run them all at once.
      socket.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(5 * STREAMS));
      // Answers follow each other with no line break between a body and the next status line.
      const statuses = () => [...received().matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]);
      expect(await until(() => statuses().length === 5 * STREAMS)).toBe(true);
      expect(statuses()).toEqual([
        ...Array(STREAMS).fill("200"),
        ...Array(4 * STREAMS).fill("429"),
      ]);
      expect(received()).toContain('"code":"resource_exhausted"');
      expect(received()).toContain("ORISUN_MAX_STREAMS_PER_CONNECTION");
      // Answered, so no longer in flight: the same connection is served again.
      socket.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
      expect(await until(() => statuses().length === 5 * STREAMS + 1)).toBe(true);
      expect(statuses().at(-1)).toBe("200");
    } finally {
      socket.destroy();
    }
  });
});
