/**
 * Failures of authentication and authorisation. api/errors.ts maps each kind to a Connect code;
 * messages never carry a secret, and an authentication failure never says which part was wrong.
 */
export type AuthErrorKind =
  | "unauthenticated" // missing, malformed or wrong credentials
  | "permission_denied" // valid credentials without the permission the message names
  | "failed_precondition"; // the change would leave the store without what it needs (an admin)

export class AuthError extends Error {
  override readonly name = "AuthError";
  constructor(
    readonly kind: AuthErrorKind,
    message: string,
    /** Who the caller claimed to be (a user name or key id, never a secret), for the log only. */
    readonly claimed?: string,
  ) {
    super(message);
  }
}

/** The one message for every authentication failure: nothing about which part was wrong. */
export const UNAUTHENTICATED_MESSAGE =
  "authentication required: send authorization: Basic base64(user:password) or Bearer <api key>";
