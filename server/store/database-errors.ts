import { StoreError } from "./errors.js";

const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "ENOTFOUND",
  "EPIPE",
  "EAI_AGAIN",
]);
// 57P01-57P03: shutdown / restart in progress; 53300: too many connections.
const UNAVAILABLE_SQLSTATES = new Set(["57P01", "57P02", "57P03", "53300"]);

/**
 * Turns a driver error into the store's error. The SQL and the driver's message stay in `cause`
 * for the log; what reaches a client says only whether to retry.
 */
export function databaseError(error: unknown): StoreError {
  if (error instanceof StoreError) return error;
  const code = (error as { code?: unknown } | null)?.code;
  const message = error instanceof Error ? error.message : String(error);
  const unreachable =
    (typeof code === "string" &&
      (NETWORK_CODES.has(code) || UNAVAILABLE_SQLSTATES.has(code) || code.startsWith("08"))) ||
    /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|not queryable/i.test(
      message,
    );
  return unreachable
    ? new StoreError("unavailable", "the database is unavailable; retry later", undefined, {
        cause: error,
      })
    : new StoreError("internal", "the database failed to process the request", undefined, {
        cause: error,
      });
}
