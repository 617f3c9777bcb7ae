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
  | "not_found" // the named thing (a consumer group) does not exist, or no longer
  | "failed_precondition" // the request is valid but the state refuses it (an import at or below the head)
  | "limit_reached" // a resource cap set by an ORISUN_MAX_* setting; the message names it
  | "deadline_exceeded" // the caller's deadline passed (or it went away) before the work finished
  | "out_of_space" // the disk under the database is full, or fuller than ORISUN_DATA_MIN_FREE_BYTES
  | "internal";

export interface StoreErrorOptions extends ErrorOptions {
  /** Facts a client can act on without parsing the message (e.g. the boundary). */
  readonly metadata?: Readonly<Record<string, string>>;
}

export class StoreError extends Error {
  override readonly name = "StoreError";
  readonly metadata: Readonly<Record<string, string>>;
  constructor(
    readonly kind: StoreErrorKind,
    /** The rule broken, without the field (the message is `field: rule`). */
    readonly rule: string,
    readonly field?: string,
    readonly options?: StoreErrorOptions,
  ) {
    super(field === undefined ? rule : `${field}: ${rule}`, options);
    this.metadata = options?.metadata ?? {};
  }

  /** The same error about a field one level down: `within("messages[2]")` of `events[0]` names `messages[2].events[0]`. */
  within(parent: string): StoreError {
    const field = this.field === undefined ? parent : `${parent}.${this.field}`;
    return new StoreError(this.kind, this.rule, field, this.options);
  }
}

/** The most characters of client input that an error message repeats. */
export const QUOTE_MAX_CHARS = 100;

/**
 * Client input as an error message shows it: JSON-quoted (control characters escaped) and cut
 * after QUOTE_MAX_CHARS characters, so a 1 MiB name costs a short message, not a 1 MiB one.
 */
export function quote(value: string): string {
  if (value.length <= QUOTE_MAX_CHARS) return JSON.stringify(value);
  let head = value.slice(0, QUOTE_MAX_CHARS);
  // Not half a surrogate pair: the message stays well-formed text.
  if (/[\ud800-\udbff]$/.test(head)) head = head.slice(0, -1);
  return `${JSON.stringify(head)}… (${value.length} characters)`;
}
