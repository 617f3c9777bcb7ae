/** One dependency the server needs to serve: the store, or NATS. Throws (or rejects) when down. */
export interface Dependency {
  readonly name: string;
  probe(): Promise<void>;
}

export interface HealthTiming {
  /** ORISUN_HEALTH_INTERVAL: how often every dependency is probed. */
  readonly intervalMs: number;
  /** ORISUN_HEALTH_TIMEOUT: a probe not answered by then counts as failed. */
  readonly timeoutMs: number;
}

export interface HealthLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** What a round of probes found. */
export interface HealthState {
  readonly serving: boolean;
  /** The dependencies whose last probe failed (or "shutting down"); empty while serving. */
  readonly failing: readonly string[];
}

/**
 * Probes the server's dependencies on a timer and keeps the answer, so that health checks and
 * /readyz read a cached state: a storm of checks never reaches the database, it costs one probe
 * per dependency per interval whoever asks. A change is known within interval + timeout.
 *
 * A probe still unanswered at the next round is not started again (a frozen database would
 * otherwise collect one hung probe per interval): the dependency stays failed until it answers.
 */
export class HealthMonitor {
  private current: HealthState = { serving: false, failing: ["not probed yet"] };
  private readonly listeners = new Set<() => void>();
  private readonly pending = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** The failing dependencies last logged; starts as none known, so the first round logs. */
  private logged: string | undefined;

  constructor(
    private readonly dependencies: readonly Dependency[],
    private readonly timing: HealthTiming,
    private readonly log: HealthLog,
  ) {}

  get state(): HealthState {
    return this.current;
  }

  /** Runs the first round (so that the state is known before the server listens), then the timer. */
  async start(): Promise<void> {
    await this.round();
    this.schedule();
  }

  /** Called after each change of state; the function returned unsubscribes. */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** From now on NOT_SERVING, for good: the server is draining. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.timer);
    this.set({ serving: false, failing: ["shutting down"] });
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.round().finally(() => this.schedule());
    }, this.timing.intervalMs);
    // Health never keeps the process alive on its own.
    this.timer.unref();
  }

  private async round(): Promise<void> {
    const results = await Promise.all(
      this.dependencies.map(async (dependency) => ({
        name: dependency.name,
        error: await this.probe(dependency),
      })),
    );
    if (this.stopped) return;
    const failed = results.filter((r) => r.error !== undefined);
    const key = failed.map((r) => r.name).join(",");
    // One line per change of what fails, not one per round while it stays down.
    if (key !== this.logged) {
      if (failed.length > 0) {
        const failing = failed.map((r) => ({ dependency: r.name, error: r.error }));
        this.log.warn({ failing }, "health: NOT_SERVING");
      } else {
        this.log.info({}, "health: SERVING");
      }
      this.logged = key;
    }
    this.set({ serving: failed.length === 0, failing: failed.map((r) => r.name) });
  }

  /** The failure's message, or undefined when the dependency answered in time. */
  private async probe(dependency: Dependency): Promise<string | undefined> {
    let running = this.pending.get(dependency.name);
    if (running === undefined) {
      // A probe that throws instead of rejecting fails the same way.
      running = Promise.resolve().then(() => dependency.probe());
      this.pending.set(dependency.name, running);
      const started = running;
      const done = () => {
        if (this.pending.get(dependency.name) === started) this.pending.delete(dependency.name);
      };
      started.then(done, done);
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<string>((resolve) => {
      timer = setTimeout(
        () => resolve(`no answer within ${this.timing.timeoutMs} ms`),
        this.timing.timeoutMs,
      );
    });
    try {
      return await Promise.race([
        running.then(
          () => undefined,
          (error: unknown) => (error instanceof Error ? error.message : String(error)),
        ),
        timedOut,
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  private set(next: HealthState): void {
    const before = this.current;
    this.current = next;
    if (before.serving === next.serving) return;
    for (const listener of this.listeners) listener();
  }
}
