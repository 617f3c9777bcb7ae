import { startApp } from "./app.js";
import { ConfigError, loadConfig } from "./config.js";

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`orisun: configuration error: ${error.message}`);
      process.exit(2);
    }
    throw error;
  }
  const app = await startApp(config);
  app.log.info(
    {
      url: app.url,
      storage: app.store.embedded ? `embedded PGlite in ${config.dataDir}` : "PostgreSQL",
    },
    `Orisun listening on ${app.url}`,
  );
  app.log.info(`Orisun console: open ${app.url}/console/ in a browser`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    app.log.info({ signal }, "shutting down");
    app.close().then(
      () => process.exit(0),
      (err) => {
        app.log.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

main().catch((error: unknown) => {
  console.error("orisun: failed to start:", error instanceof Error ? error.message : error);
  process.exit(1);
});
