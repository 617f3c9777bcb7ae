import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import type { FastifyBaseLogger } from "fastify";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { AuthError, type AuthErrorKind } from "../auth/auth-error.js";
import { isClientGone } from "../http/client-gone.js";
import { StoreError, type StoreErrorKind } from "../store/errors.js";

/** The request's logger (bound to its request id), handed over from Fastify. */
export const kRequestLog = createContextKey<FastifyBaseLogger | undefined>(undefined);
export const kRequestId = createContextKey<string>("");

/** The google.rpc.ErrorInfo on a failed DCB condition (client-web/src/errors.ts checks it). */
export const ERROR_DOMAIN = "orisun";
export const CONDITION_FAILED_REASON = "CONSISTENCY_CONDITION_FAILED";

const CODES: Record<StoreErrorKind, Code> = {
  invalid: Code.InvalidArgument,
  too_large: Code.ResourceExhausted,
  condition_failed: Code.Aborted,
  already_exists: Code.AlreadyExists,
  unavailable: Code.Unavailable,
  not_found: Code.NotFound,
  failed_precondition: Code.FailedPrecondition,
  limit_reached: Code.ResourceExhausted,
  deadline_exceeded: Code.DeadlineExceeded,
  // gRPC's own example of RESOURCE_EXHAUSTED: "the entire file system is out of space".
  out_of_space: Code.ResourceExhausted,
  internal: Code.Internal,
};

const AUTH_CODES: Record<AuthErrorKind, Code> = {
  unauthenticated: Code.Unauthenticated,
  permission_denied: Code.PermissionDenied,
  failed_precondition: Code.FailedPrecondition,
};

/**
 * The one place where errors become Connect codes. Clients get the rule that was broken, or for
 * failures of ours only a request id: driver messages and SQL stay in the log.
 */
export function toConnectError(
  error: unknown,
  log: FastifyBaseLogger | undefined,
  requestId: string,
  rpc: string,
): ConnectError {
  if (error instanceof ConnectError) return error;
  if (error instanceof AuthError) return new ConnectError(error.message, AUTH_CODES[error.kind]);
  if (error instanceof StoreError) {
    if (
      error.kind === "internal" ||
      error.kind === "unavailable" ||
      error.kind === "out_of_space"
    ) {
      const level = error.kind === "unavailable" ? "warn" : "error";
      log?.[level]({ err: error.cause ?? error, rpc }, error.message);
      return new ConnectError(`${error.message} (request ${requestId})`, CODES[error.kind]);
    }
    if (error.kind === "condition_failed") {
      // ABORTED alone is ambiguous: clients also report a reset connection as ABORTED, when the
      // append may have committed. The detail is what says "refused, nothing written".
      const info = {
        reason: CONDITION_FAILED_REASON,
        domain: ERROR_DOMAIN,
        metadata: error.metadata,
      };
      return new ConnectError(error.message, Code.Aborted, undefined, [
        { desc: ErrorInfoSchema, value: info },
      ]);
    }
    return new ConnectError(error.message, CODES[error.kind]);
  }
  log?.error({ err: error, rpc }, "unexpected error");
  return new ConnectError(`internal error (request ${requestId})`, Code.Internal);
}

export const errorInterceptor: Interceptor = (next) => async (req) => {
  const log = req.contextValues.get(kRequestLog);
  const id = req.contextValues.get(kRequestId);
  const rpc = req.method.name;
  try {
    const res = await next(req);
    if (!res.stream) return res;
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* messages;
        } catch (error) {
          // A write to a client that went away fails, and the failure is thrown in here; the
          // route logs it once, at debug (http/connect-plugin.ts).
          if (isClientGone(error)) throw new ConnectError("the client went away", Code.Canceled);
          throw toConnectError(error, log, id, rpc);
        }
      })(),
    };
  } catch (error) {
    throw toConnectError(error, log, id, rpc);
  }
};
