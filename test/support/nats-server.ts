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
  /** Its JetStream folder, for the test to remove when done. */
  readonly dir: string;
  stop(): Promise<void>;
  start(): Promise<void>;
}

/** Every nats-server this test process started; none may outlive it. */
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** `args` go to nats-server after the defaults, e.g. `["--user", "u", "--pass", "p"]`. */
export async function startOwnNatsServer(args: readonly string[] = []): Promise<OwnNatsServer> {
  const port = await freePort();
  const dir = tempDir("orisun-nats-");
  let child: ChildProcess | undefined;
  const server: OwnNatsServer = {
    url: `nats://127.0.0.1:${port}`,
    dir,
    async start() {
      const defaults = ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir];
      child = spawn("nats-server", [...defaults, ...args], { stdio: "ignore" });
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
