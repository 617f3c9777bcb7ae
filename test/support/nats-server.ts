import { type ChildProcess, spawn } from "node:child_process";
import { connect as netConnect } from "node:net";
import { freePort } from "./spawn-server.js";
import { tempDir } from "./temp.js";

/**
 * A nats-server of the test's own, on a free port with its own JetStream folder, so that a test
 * may stop and restart it without touching the one other tests use.
 */
export interface OwnNatsServer {
  readonly url: string;
  stop(): Promise<void>;
  start(): Promise<void>;
}

/** Every nats-server this test process started; none may outlive it. */
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export async function startOwnNatsServer(): Promise<OwnNatsServer> {
  const port = await freePort();
  const dir = tempDir("orisun-nats-");
  let child: ChildProcess | undefined;
  const server: OwnNatsServer = {
    url: `nats://127.0.0.1:${port}`,
    async start() {
      child = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir], {
        stdio: "ignore",
      });
      const started = child;
      running.add(started);
      started.once("exit", () => running.delete(started));
      const deadline = Date.now() + 10_000;
      while (!(await listening(port))) {
        if (Date.now() > deadline) throw new Error("nats-server did not start");
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async stop() {
      const running = child;
      child = undefined;
      if (!running || running.exitCode !== null) return;
      const exited = new Promise((r) => running.once("exit", r));
      running.kill("SIGKILL");
      await exited;
    },
  };
  await server.start();
  return server;
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}
