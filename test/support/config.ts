import { expect } from "vitest";
import { ConfigError, loadConfig } from "../../server/config.js";

/** The ConfigError that loadConfig throws for `env` and `argv`; fails the test if it loads. */
export function configError(env: Record<string, string>, argv: string[] = []): ConfigError {
  try {
    loadConfig(env, argv);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error("expected a ConfigError");
}
