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
// 57014: statement_timeout (or a cancel); 55P03: lock_timeout; 25P03: idle in transaction too long.
const TIMEOUT_SQLSTATES = new Set(["57014", "55P03", "25P03"]);
/** disk_full: PostgreSQL could not extend a file; the statement failed and its transaction with it. */
const DISK_FULL = "53100";

/** pg's messages for a socket that failed or a statement the server never answered. */
const LOST =
  /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|not queryable|Query read timeout|Connection has been discarded/i;

const codeOf = (error: unknown) => (error as { code?: unknown } | null)?.code;
const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error));

/**
 * The connection can no longer be trusted: its socket failed, or a statement got no answer in
 * time (a frozen or unreachable server), so the server may still be working on it.
 */
export function isConnectionLost(error: unknown): boolean {
  const code = codeOf(error);
  return (
    (typeof code === "string" && (NETWORK_CODES.has(code) || code.startsWith("08"))) ||
    LOST.test(messageOf(error))
  );
}

/**
 * Turns a driver error into the store's error. The SQL and the driver's message stay in `cause`
 * for the log; what reaches a client says only whether to retry.
 */
export function databaseError(error: unknown): StoreError {
  if (error instanceof StoreError) return error;
  const code = codeOf(error);
  if (code === DISK_FULL) {
    return new StoreError(
      "out_of_space",
      "the database's disk is full: nothing was written; free space on it, then retry",
      undefined,
      { cause: error },
    );
  }
  if (typeof code === "string" && TIMEOUT_SQLSTATES.has(code)) {
    return new StoreError(
      "unavailable",
      "the database did not finish in time; retry later",
      undefined,
      {
        cause: error,
      },
    );
  }
  const unreachable =
    isConnectionLost(error) || (typeof code === "string" && UNAVAILABLE_SQLSTATES.has(code));
  return unreachable
    ? new StoreError("unavailable", "the database is unavailable; retry later", undefined, {
        cause: error,
      })
    : new StoreError("internal", "the database failed to process the request", undefined, {
        cause: error,
      });
}
