import { connect, createServer, type Server, type Socket } from "node:net";
import { freePort } from "./spawn-server.js";

/**
 * A TCP proxy that can lose a response: after `hold()`, what the server sends is kept from the
 * client (requests still reach the server) until `cut()` resets every connection, as a network
 * that fails between a server's commit and its answer does. New connections pass again.
 */
export interface ResponseCutter {
  readonly port: number;
  hold(): void;
  cut(): void;
  close(): Promise<void>;
}

export async function startResponseCutter(host: string, port: number): Promise<ResponseCutter> {
  const listenPort = await freePort();
  const sockets = new Set<Socket>();
  let holding = false;
  const server: Server = createServer((client) => {
    const upstream = connect(port, host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.on("data", (chunk: Buffer) => upstream.write(chunk));
    client.on("end", () => upstream.end());
    upstream.on("data", (chunk: Buffer) => {
      if (!holding) client.write(chunk);
    });
    upstream.on("end", () => client.end());
  });
  await new Promise<void>((ready) => server.listen(listenPort, "127.0.0.1", ready));
  return {
    port: listenPort,
    hold() {
      holding = true;
    },
    cut() {
      for (const s of sockets) s.resetAndDestroy();
      holding = false;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((done) => server.close(() => done()));
    },
  };
}
