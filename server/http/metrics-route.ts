import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";

export interface MetricsRouteOptions {
  /** The exposition text: this process's registry, or in a cluster the aggregate of all workers. */
  readonly scrape: () => Promise<string>;
  readonly contentType: string;
  /**
   * Decides whether the caller may read the metrics (with auth on: an admin's credentials). It
   * answers a refused caller itself (401/403) and returns false; the route then sends nothing.
   */
  readonly authorize: (request: FastifyRequest, reply: FastifyReply) => Promise<boolean>;
}

/** GET /metrics in the Prometheus text format. */
export async function registerMetricsRoute(
  app: FastifyInstance,
  options: MetricsRouteOptions,
): Promise<void> {
  app.get("/metrics", async (request, reply) => {
    if (!(await options.authorize(request, reply))) return reply;
    let text: string;
    try {
      text = await options.scrape();
    } catch (error) {
      request.log.warn({ err: error }, "metrics scrape failed");
      return reply
        .code(503)
        .type("text/plain; charset=utf-8")
        .send(`metrics unavailable: ${(error as Error).message}\n`);
    }
    return reply.header("cache-control", "no-store").type(options.contentType).send(text);
  });
}
