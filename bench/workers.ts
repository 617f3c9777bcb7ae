/**
 * The load generator: a few forked worker processes (worker.ts), each with its own gRPC channels,
 * and the CPU time they spend, so that the table can show the generator was not the limit.
 */
import { type ChildProcess, fork } from "node:child_process";
import type { Job, JobResult, Reply, Request } from "./worker.js";

export interface Running {
  readonly id: number;
  readonly worker: number;
  readonly done: Promise<JobResult>;
}

export class Workers {
  private nextId = 1;
  private readonly pending = new Map<number, (reply: Reply) => void>();
  private readonly cpu: number[];

  private constructor(private readonly children: ChildProcess[]) {
    this.cpu = children.map(() => 0);
    children.forEach((child, w) => {
      child.on("message", (reply: Reply) => {
        this.cpu[w] = reply.cpuMicros;
        this.pending.get(reply.id)?.(reply);
        this.pending.delete(reply.id);
      });
    });
  }

  static start(count: number): Workers {
    const script = new URL("./worker.js", import.meta.url);
    return new Workers(
      Array.from({ length: count }, () =>
        fork(script, { stdio: ["ignore", "inherit", "inherit", "ipc"] }),
      ),
    );
  }

  get count(): number {
    return this.children.length;
  }

  run(worker: number, job: Job): Running {
    const id = this.nextId++;
    const child = this.children[worker % this.children.length] as ChildProcess;
    const done = new Promise<JobResult>((resolve, reject) => {
      this.pending.set(id, (reply) => {
        if ("error" in reply) reject(new Error(`worker ${worker}: ${reply.error}`));
        else resolve(reply.result);
      });
    });
    child.send({ id, job } satisfies Request);
    return { id, worker, done };
  }

  /** Ends a subscribe or members job, once it has received `expect` items if given. */
  stop(running: Running, expect?: number): void {
    const child = this.children[running.worker % this.children.length] as ChildProcess;
    child.send({ id: running.id, stop: true, expect } satisfies Request);
  }

  /** CPU seconds the workers and this process have used so far. */
  async cpuSeconds(): Promise<number> {
    await Promise.all(this.children.map((_, w) => this.run(w, { kind: "cpu" }).done));
    const own = process.cpuUsage();
    return (this.cpu.reduce((a, b) => a + b, 0) + own.user + own.system) / 1e6;
  }

  async close(): Promise<void> {
    await Promise.all(
      this.children.map((child) => {
        const exited = new Promise((r) => child.once("exit", r));
        child.disconnect();
        return exited;
      }),
    );
  }
}
