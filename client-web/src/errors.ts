import { Code, ConnectError } from "@connectrpc/connect";

export { Code, ConnectError };

/** True when an append was refused because its DCB condition failed (Connect code `aborted`). */
export function isConditionFailed(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.Aborted;
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
