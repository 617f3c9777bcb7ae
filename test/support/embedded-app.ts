import { type AppOptions, type RunningApp, startApp } from "../../server/app.js";
import { loadConfig } from "../../server/config.js";
import { freshDataDir } from "./databases.js";

/** The server in this process on the embedded store, on a free loopback port, logging nothing. */
export function startEmbeddedApp(
  env: Record<string, string> = {},
  options: AppOptions = {},
): Promise<RunningApp> {
  return startApp(
    loadConfig(
      {
        ORISUN_PORT: "0",
        ORISUN_HOST: "127.0.0.1",
        ORISUN_DATA_DIR: freshDataDir(),
        ORISUN_LOG_LEVEL: "silent",
        ...env,
      },
      [],
    ),
    options,
  );
}
