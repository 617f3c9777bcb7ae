/**
 * The one domain error of the store and the broker. api/errors.ts maps each kind to a
 * Connect code; nothing below api/ knows about Connect.
 */
export type StoreErrorKind =
  | "invalid" // the request breaks a rule; `field` names the offending field
  | "too_large" // a size limit; `field` names what is too large
  | "condition_failed" // a DCB condition found a matching event after its marker
  | "already_exists" // event ids already stored by another request, or a taken name
  | "unavailable" // a dependency (PostgreSQL, NATS) cannot be reached right now
  | "deadline_exceeded" // the caller's deadline passed (or it went away) before the work finished
  | "internal";

export class StoreError extends Error {
  override readonly name = "StoreError";
  constructor(
    readonly kind: StoreErrorKind,
    message: string,
    readonly field?: string,
    options?: ErrorOptions,
  ) {
    super(field === undefined ? message : `${field}: ${message}`, options);
  }
}
