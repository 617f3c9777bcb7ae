import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import fastifyStatic from "@fastify/static";
import type { FastifyInstance } from "fastify";

/** `dist/console`, which `npm run build` makes with Vite from `client-web/console`. */
const CONSOLE_DIR = fileURLToPath(new URL("../../console/", import.meta.url));

export interface ConsoleSettings {
  /** The configured boundaries, offered in the console's boundary picker. */
  readonly boundaries: readonly string[] | undefined;
}

/**
 * Serves the web console at /console/ (and sends / there) from the API's own port. Vite names
 * assets by content hash, so they are cached for good; index.html is revalidated each time.
 */
export async function registerConsole(app: FastifyInstance, settings: ConsoleSettings) {
  app.get("/", (_req, reply) => reply.redirect("/console/"));
  app.get("/console", (_req, reply) => reply.redirect("/console/"));
  app.get("/console/settings.json", async () => ({ boundaries: settings.boundaries ?? null }));
  if (!existsSync(join(CONSOLE_DIR, "index.html"))) {
    app.get("/console/*", (_req, reply) =>
      reply
        .code(404)
        .type("text/plain")
        .send("The console is not built: run `npm run build` (it runs vite build).\n"),
    );
    return;
  }
  await app.register(fastifyStatic, {
    root: CONSOLE_DIR,
    prefix: "/console/",
    redirect: true,
    setHeaders(reply, path) {
      reply.header(
        "cache-control",
        path.includes(`${join("console", "assets")}`)
          ? "public, max-age=31536000, immutable"
          : "no-cache",
      );
    },
  });
}
