import { Code, ConnectError } from "@connectrpc/connect";
import { type ErrorInfo, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";

export { Code, ConnectError, type ErrorInfo, ErrorInfoSchema };

/** The google.rpc.ErrorInfo the server attaches to an append refused by its DCB condition. */
export const ERROR_DOMAIN = "orisun";
export const CONDITION_FAILED_REASON = "CONSISTENCY_CONDITION_FAILED";

/**
 * The server's explanation of a refused condition (`boundary`, `marker_commit_position`,
 * `marker_prepare_position` in its metadata), or undefined for any other error.
 */
export function conditionFailure(error: unknown): ErrorInfo | undefined {
  if (!(error instanceof ConnectError) || error.code !== Code.Aborted) return undefined;
  return error
    .findDetails(ErrorInfoSchema)
    .find((info) => info.domain === ERROR_DOMAIN && info.reason === CONDITION_FAILED_REASON);
}

/**
 * True when an append was refused because its DCB condition failed: nothing was written. The code
 * `aborted` alone does not say so: a client reports a reset connection as `aborted` too, and then
 * the append may have been written (retry it with the same event ids to find out).
 */
export function isConditionFailed(error: unknown): boolean {
  return conditionFailure(error) !== undefined;
}

/** The code as the gRPC spec spells it: `ABORTED`, `INVALID_ARGUMENT`, ... */
export function codeName(code: Code): string {
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/**
 * Whether a broken stream is worth opening again: the server or the network went away, or the
 * server shed load. Bad input, refused access and the like fail the same way every time.
 */
export function isTransient(error: ConnectError): boolean {
  switch (error.code) {
    case Code.Unavailable:
    case Code.Unknown:
    case Code.Internal:
    case Code.DeadlineExceeded:
    case Code.ResourceExhausted:
    case Code.Canceled:
      return true;
    default:
      return false;
  }
}
