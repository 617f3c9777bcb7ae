import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../server/config.js";

describe("health and reflection settings", () => {
  it("default to a probe a second, answered within 3 s, and 1,000 requests per reflection stream", () => {
    const c = loadConfig({}, []);
    expect(c.health).toEqual({ intervalMs: 1_000, timeoutMs: 3_000 });
    expect(c.reflectionMaxRequests).toBe(1_000);
  });

  it("reads each variable", () => {
    const c = loadConfig(
      {
        ORISUN_HEALTH_INTERVAL: "500ms",
        ORISUN_HEALTH_TIMEOUT: "5s",
        ORISUN_REFLECTION_MAX_REQUESTS: "50",
      },
      [],
    );
    expect(c.health).toEqual({ intervalMs: 500, timeoutMs: 5_000 });
    expect(c.reflectionMaxRequests).toBe(50);
  });

  // Interval and timeout of at most 5 s each keep a change visible within 10 s.
  it.each([
    ["ORISUN_HEALTH_INTERVAL", "6s", "from 100ms to 5s"],
    ["ORISUN_HEALTH_INTERVAL", "50ms", "from 100ms to 5s"],
    ["ORISUN_HEALTH_INTERVAL", "1", "positive duration"],
    ["ORISUN_HEALTH_TIMEOUT", "1m", "from 100ms to 5s"],
    ["ORISUN_HEALTH_TIMEOUT", "0s", "positive duration"],
    ["ORISUN_REFLECTION_MAX_REQUESTS", "0", "integer from 1"],
    ["ORISUN_REFLECTION_MAX_REQUESTS", "lots", "integer from 1"],
  ])("refuses %s=%s, naming it and the rule", (name, value, rule) => {
    let error: unknown;
    try {
      loadConfig({ [name]: value }, []);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).message).toContain(name);
    expect((error as ConfigError).message).toContain(rule);
  });
});
