import { afterEach, describe, expect, it } from "vitest";
import { type Dependency, HealthMonitor } from "../server/health/monitor.js";

const TIMING = { intervalMs: 50, timeoutMs: 100 };

type Mode = "up" | "down" | "hung";

/** A dependency the test switches between up, down (throws) and hung (never answers). */
function dependency(name: string) {
  let mode: Mode = "up";
  let calls = 0;
  const d: Dependency & { mode: Mode; readonly calls: number } = {
    name,
    get mode() {
      return mode;
    },
    set mode(m) {
      mode = m;
    },
    get calls() {
      return calls;
    },
    probe() {
      calls++;
      if (mode === "down") return Promise.reject(new Error(`${name} refused`));
      if (mode === "hung") return new Promise<void>(() => {});
      return Promise.resolve();
    },
  };
  return d;
}

function recordingLog() {
  const lines: { level: string; obj: object; msg: string }[] = [];
  return {
    lines,
    info: (obj: object, msg: string) => lines.push({ level: "info", obj, msg }),
    warn: (obj: object, msg: string) => lines.push({ level: "warn", obj, msg }),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(condition: () => boolean, ms = 2_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(10);
  }
}

describe("HealthMonitor", () => {
  const monitors: HealthMonitor[] = [];
  const make = (deps: Dependency[], log = recordingLog()) => {
    const m = new HealthMonitor(deps, TIMING, log);
    monitors.push(m);
    return m;
  };
  afterEach(() => {
    for (const m of monitors.splice(0)) m.stop();
  });

  it("knows the state once start() resolves: the first round runs before", async () => {
    const db = dependency("database");
    const m = make([db]);
    expect(m.state.serving).toBe(false);
    await m.start();
    expect(m.state).toEqual({ serving: true, failing: [] });
    expect(db.calls).toBe(1);
  });

  it("flips on a failing dependency and back, telling listeners once per change", async () => {
    const db = dependency("database");
    const nats = dependency("nats");
    const log = recordingLog();
    const m = make([db, nats], log);
    await m.start();
    let changes = 0;
    m.onChange(() => changes++);

    nats.mode = "down";
    await until(() => !m.state.serving);
    expect(m.state.failing).toEqual(["nats"]);
    const callsWhenDown = nats.calls;
    // Several rounds while down: one change, one warning.
    await until(() => nats.calls >= callsWhenDown + 3);
    expect(changes).toBe(1);
    expect(log.lines.filter((l) => l.level === "warn")).toHaveLength(1);
    expect(log.lines.at(-1)?.obj).toEqual({
      failing: [{ dependency: "nats", error: "nats refused" }],
    });

    db.mode = "down";
    await until(() => m.state.failing.length === 2);
    expect(m.state.failing).toEqual(["database", "nats"]);
    expect(changes).toBe(1);
    expect(log.lines.filter((l) => l.level === "warn")).toHaveLength(2);

    db.mode = "up";
    nats.mode = "up";
    await until(() => m.state.serving);
    expect(changes).toBe(2);
    expect(log.lines.at(-1)?.msg).toBe("health: SERVING");
  });

  it("a probe that never answers fails after the timeout and is not started again while it hangs", async () => {
    const db = dependency("database");
    const m = make([db]);
    await m.start();
    db.mode = "hung";
    const t0 = Date.now();
    await until(() => !m.state.serving);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(TIMING.timeoutMs - 10);
    const calls = db.calls;
    await sleep(TIMING.intervalMs * 6);
    // Rounds went on (still failing), but the hung probe was awaited, not repeated.
    expect(db.calls).toBe(calls);
    expect(m.state.failing).toEqual(["database"]);
  });

  it("stop() is NOT_SERVING for good, heard by listeners, and probes no more", async () => {
    const db = dependency("database");
    const m = make([db]);
    await m.start();
    let heard = false;
    m.onChange(() => {
      heard = !m.state.serving;
    });
    m.stop();
    expect(m.state).toEqual({ serving: false, failing: ["shutting down"] });
    expect(heard).toBe(true);
    const calls = db.calls;
    await sleep(TIMING.intervalMs * 4);
    expect(db.calls).toBe(calls);
    expect(m.state.serving).toBe(false);
  });
});
