import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import { resolve } from "node:path";

export interface SpawnedServer {
  readonly url: string;
  readonly port: number;
  readonly process: ChildProcess;
  /** Everything the server logged so far. */
  output(): string;
  /** SIGTERM and wait for exit; resolves to the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => done(port));
    });
  });
}

/** Generous: PGlite's start alone takes seconds of CPU, and the machine may be busy. */
const START_TIMEOUT_MS = 60_000;

/** Every server this test process started and has not seen exit. */
const running = new Set<ChildProcess>();
// A test that fails, times out or forgets its stop() must not leave a server listening after
// the test process ends.
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * Starts dist/server/main.js (built by the global setup) and waits until it listens.
 * `startTimeoutMs`: a first start on a new PGlite folder runs initdb, which a busy machine slows.
 */
export async function spawnServer(
  env: Record<string, string>,
  args: string[] = [],
  startTimeoutMs = START_TIMEOUT_MS,
): Promise<SpawnedServer> {
  const port = env.ORISUN_PORT ? Number(env.ORISUN_PORT) : await freePort();
  const child = spawn(process.execPath, [resolve("dist/server/main.js"), ...args], {
    env: {
      PATH: process.env.PATH ?? "",
      ORISUN_LOG_LEVEL: "info",
      // One process, whose pid is the server's, unless a test asks for workers (the default with
      // PostgreSQL and NATS is one per core).
      ORISUN_WORKERS: "1",
      ...env,
      ORISUN_PORT: String(port),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  child.once("exit", () => running.delete(child));
  let log = "";
  child.stdout?.on("data", (d: Buffer) => {
    log += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    log += d.toString();
  });
  const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
  await new Promise<void>((ready, fail) => {
    const timer = setTimeout(() => {
      // It may still come up later and keep the port: end it now.
      child.kill("SIGKILL");
      fail(new Error(`server did not start in ${startTimeoutMs / 1000} s:\n${log}`));
    }, startTimeoutMs);
    const check = () => {
      if (log.includes("Orisun listening")) {
        clearTimeout(timer);
        ready();
      }
    };
    child.stdout?.on("data", check);
    void exited.then((code) => {
      clearTimeout(timer);
      fail(new Error(`server exited with ${code} before listening:\n${log}`));
    });
  });
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    process: child,
    output: () => log,
    async stop(signal = "SIGTERM") {
      if (child.exitCode !== null) return child.exitCode;
      child.kill(signal);
      return exited;
    },
  };
}
