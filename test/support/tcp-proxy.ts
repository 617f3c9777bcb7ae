import { connect, createServer, type Server, type Socket } from "node:net";
import { freePort } from "./spawn-server.js";

/**
 * A TCP proxy the test can cut, standing in for a database or broker that restarts: `cut()`
 * drops every connection and refuses new ones until `restore()`. Restarting the machine's own
 * PostgreSQL would disturb every other test running in parallel.
 */
export interface TcpProxy {
  readonly port: number;
  cut(): void;
  restore(): void;
  /**
   * Stops forwarding in both directions but keeps every socket open and accepts new ones, as a
   * SIGSTOPped server does (its kernel still accepts and acknowledges); `thaw()` delivers what
   * was held, in order.
   */
  freeze(): void;
  thaw(): void;
  close(): Promise<void>;
}

export interface TcpProxyOptions {
  /** Sees every chunk a client sends upstream, e.g. to count the queries that reach a database. */
  readonly onClientData?: (chunk: Buffer) => void;
}

export async function startTcpProxy(
  targetHost: string,
  targetPort: number,
  options: TcpProxyOptions = {},
): Promise<TcpProxy> {
  const port = await freePort();
  const sockets = new Set<Socket>();
  let open = true;
  let frozen = false;
  const held: (() => void)[] = [];
  const whenThawed = (action: () => void) => (frozen ? held.push(action) : action());
  const forward = (from: Socket, to: Socket) => {
    from.on("data", (chunk: Buffer) => whenThawed(() => to.write(chunk)));
    from.on("end", () => whenThawed(() => to.end()));
  };
  const server: Server = createServer((client) => {
    if (!open) {
      client.destroy();
      return;
    }
    const upstream = connect(targetPort, targetHost);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    if (options.onClientData) client.on("data", options.onClientData);
    forward(client, upstream);
    forward(upstream, client);
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    port,
    cut() {
      open = false;
      for (const s of sockets) s.destroy();
    },
    restore() {
      open = true;
    },
    freeze() {
      frozen = true;
    },
    thaw() {
      frozen = false;
      for (const write of held.splice(0)) write();
    },
    async close() {
      open = false;
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
