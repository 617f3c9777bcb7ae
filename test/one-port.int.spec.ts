import { connect, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApp, startApp } from "../server/app.js";
import { loadConfig } from "../server/config.js";
import { freshDataDir } from "./support/databases.js";

const PREFACE = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
// An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
const EMPTY_SETTINGS = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);

let app: RunningApp;
beforeAll(async () => {
  const config = loadConfig(
    {
      ORISUN_PORT: "0",
      ORISUN_HOST: "127.0.0.1",
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_LOG_LEVEL: "silent",
    },
    [],
  );
  app = await startApp(config);
});
afterAll(() => app.close());

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function open(): Promise<{ socket: Socket; received: () => Buffer }> {
  const socket = connect(app.port, "127.0.0.1");
  await new Promise<void>((r) => socket.once("connect", () => r()));
  let got = Buffer.alloc(0);
  socket.on("data", (d: Buffer) => {
    got = Buffer.concat([got, d]);
  });
  return { socket, received: () => got };
}

async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 100 && !check(); i++) await pause(20);
}

describe("one port for HTTP/1.1 and h2c", () => {
  it("routes an HTTP/2 preface that arrives in pieces to the HTTP/2 server", async () => {
    const { socket, received } = await open();
    socket.write(PREFACE.slice(0, 3));
    await pause(30);
    socket.write(PREFACE.slice(3, 17));
    await pause(30);
    socket.write(Buffer.concat([Buffer.from(PREFACE.slice(17)), EMPTY_SETTINGS]));
    await until(() => received().length >= 9);
    // The server's first frame is its own SETTINGS frame.
    expect(received()[3]).toBe(4);
    socket.destroy();
  });

  it("routes HTTP/1.1 whose first chunk is a single byte to the HTTP/1.1 server", async () => {
    const { socket, received } = await open();
    socket.write("G");
    await pause(30);
    socket.write("ET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    await until(() => received().toString().includes('"ok"'));
    expect(received().toString()).toMatch(/^HTTP\/1\.1 200/);
    socket.destroy();
  });

  it("treats a request that starts like the preface but differs as HTTP/1.1", async () => {
    const { socket, received } = await open();
    socket.write("PRI / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    await until(() => received().length > 0);
    expect(received().toString()).toMatch(/^HTTP\/1\.1 /);
    socket.destroy();
  });
});
