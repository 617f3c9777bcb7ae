import { isConnectionLost } from "../store/database-errors.js";

export interface StartupLog {
  warn(obj: object, msg: string): void;
}

export interface RetryOptions {
  /** After this long since the first attempt, the last error is thrown. */
  readonly timeoutMs: number;
  readonly log: StartupLog;
  /** First wait; each next one doubles up to `maxDelayMs`. */
  readonly firstDelayMs?: number;
  readonly maxDelayMs?: number;
}

// 57P03: the database is starting up; 53300: too many connections (a restart's backlog).
const NOT_YET_SQLSTATES = new Set(["57P03", "53300"]);

/**
 * An error that says "not there yet" (refused, unresolvable, reset, still starting), as when
 * PostgreSQL or NATS start after Orisun in a compose file, rather than "wrong" (credentials, a
 * missing database, a schema from a newer version), which no amount of waiting fixes.
 */
export function isNotReachableYet(error: unknown): boolean {
  for (let e: unknown = error; e instanceof Error || isObject(e); e = (e as Error).cause) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && NOT_YET_SQLSTATES.has(code)) return true;
    if (isConnectionLost(e)) return true;
    // nats.js: nothing listening, or the server went away during the handshake.
    if (
      /CONNECTION_REFUSED|ECONNREFUSED|connection refused|ENOTFOUND|EAI_AGAIN|timeout/i.test(
        String((e as Error).message),
      )
    )
      return true;
  }
  return false;
}

function isObject(value: unknown): value is object {
  return typeof value === "object" && value !== null;
}

/**
 * Runs `attempt` until it succeeds, retrying with exponential backoff while its error says the
 * service is not reachable yet, with one warning per failed attempt, for at most `timeoutMs`.
 */
export async function retryWhileUnreachable<T>(
  what: string,
  attempt: () => Promise<T>,
  options: RetryOptions,
): Promise<T> {
  const started = Date.now();
  let delay = options.firstDelayMs ?? 250;
  const maxDelay = options.maxDelayMs ?? 5_000;
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (error) {
      const elapsed = Date.now() - started;
      if (!isNotReachableYet(error) || elapsed + delay > options.timeoutMs) throw error;
      options.log.warn(
        {
          attempt: n,
          retryInMs: delay,
          givesUpInMs: options.timeoutMs - elapsed,
          reason: error instanceof Error ? error.message : String(error),
        },
        `${what} is not reachable yet; retrying`,
      );
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, maxDelay);
    }
  }
}
