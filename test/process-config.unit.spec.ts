import { availableParallelism } from "node:os";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../server/config.js";
import { configError } from "./support/config.js";

const PG = { ORISUN_PG_URL: "postgres://u@db:5432/es" };
const BOTH = { ...PG, ORISUN_NATS_URL: "nats://n:4222" };

const refused = (env: Record<string, string>) => configError(env).message;

describe("ORISUN_WORKERS", () => {
  it("defaults to one per core with PostgreSQL and NATS, else one", () => {
    expect(loadConfig(BOTH, []).workers).toBe(availableParallelism());
    expect(loadConfig(PG, []).workers).toBe(1);
    expect(loadConfig({}, []).workers).toBe(1);
    expect(loadConfig({ ...BOTH, ORISUN_WORKERS: "3" }, []).workers).toBe(3);
    expect(loadConfig({ ORISUN_WORKERS: "1" }, []).workers).toBe(1);
  });

  it("refuses more than one on PGlite or without NATS, naming the rule", () => {
    expect(refused({ ORISUN_WORKERS: "2" })).toMatch(
      /^ORISUN_WORKERS: more than 1 needs ORISUN_PG_URL .*got 2$/,
    );
    expect(refused({ ...PG, ORISUN_WORKERS: "2" })).toMatch(
      /^ORISUN_WORKERS: more than 1 needs ORISUN_NATS_URL/,
    );
    for (const bad of ["0", "-1", "two", "1.5", "257"]) {
      expect(refused({ ...BOTH, ORISUN_WORKERS: bad })).toBe(
        `ORISUN_WORKERS: must be an integer from 1 to 256, got "${bad}"`,
      );
    }
  });
});

describe("ORISUN_WORKER_STALL_TIMEOUT", () => {
  it("defaults to 30 s and takes durations from 1 s", () => {
    expect(loadConfig({}, []).workerStallMs).toBe(30_000);
    expect(loadConfig({ ORISUN_WORKER_STALL_TIMEOUT: "1s" }, []).workerStallMs).toBe(1_000);
    expect(loadConfig({ ORISUN_WORKER_STALL_TIMEOUT: "2m" }, []).workerStallMs).toBe(120_000);
  });

  it("refuses less than 1 s and what is not a duration, naming the rule", () => {
    expect(refused({ ORISUN_WORKER_STALL_TIMEOUT: "999ms" })).toBe(
      'ORISUN_WORKER_STALL_TIMEOUT: must be at least 1s, got "999ms"',
    );
    for (const bad of ["0s", "30", "soon", "-1s"]) {
      expect(refused({ ORISUN_WORKER_STALL_TIMEOUT: bad })).toBe(
        `ORISUN_WORKER_STALL_TIMEOUT: must be a positive duration like 90s, 2m or 24h, got "${bad}"`,
      );
    }
  });
});

describe("ORISUN_LOG_FORMAT and ORISUN_STARTUP_TIMEOUT", () => {
  it("default to json and 60 s", () => {
    const c = loadConfig({}, []);
    expect(c.logFormat).toBe("json");
    expect(c.startupTimeoutMs).toBe(60_000);
  });

  it("read pretty and durations", () => {
    const c = loadConfig({ ORISUN_LOG_FORMAT: "pretty", ORISUN_STARTUP_TIMEOUT: "5m" }, []);
    expect(c.logFormat).toBe("pretty");
    expect(c.startupTimeoutMs).toBe(300_000);
  });

  it("refuse anything else, naming the variable", () => {
    expect(refused({ ORISUN_LOG_FORMAT: "xml" })).toBe(
      'ORISUN_LOG_FORMAT: must be json or pretty, got "xml"',
    );
    expect(refused({ ORISUN_STARTUP_TIMEOUT: "0s" })).toMatch(/^ORISUN_STARTUP_TIMEOUT: /);
    expect(refused({ ORISUN_STARTUP_TIMEOUT: "soon" })).toMatch(/^ORISUN_STARTUP_TIMEOUT: /);
  });
});
