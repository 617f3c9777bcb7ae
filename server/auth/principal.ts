import { type Grant, grantsAllow, type Need, uncovered } from "./grants.js";

/**
 * Who is calling and what they may do. A key's permissions are its grants limited by its user's
 * current ones (checked at every use); a key with no grants of its own has all of its user's.
 */
export interface Principal {
  /** The user's name; "" for the anonymous caller when authentication is off. */
  readonly user: string;
  /** Set when the caller used an API key. */
  readonly keyId?: string;
  readonly userAdmin: boolean;
  readonly userGrants: readonly Grant[];
  /** The key's own grants; undefined or empty: all of its user's. */
  readonly keyGrants?: readonly Grant[];
  readonly authEnabled: boolean;
}

/** Authentication off: everything is allowed. */
export const ANONYMOUS_ADMIN: Principal = {
  user: "",
  userAdmin: true,
  userGrants: [],
  authEnabled: false,
};

function keyLimited(p: Principal): boolean {
  return p.keyGrants !== undefined && p.keyGrants.length > 0;
}

export function allows(p: Principal, need: Need): boolean {
  if (need.access === "admin") return p.userAdmin && !keyLimited(p);
  const byUser = p.userAdmin || grantsAllow(p.userGrants, need);
  return byUser && (!keyLimited(p) || grantsAllow(p.keyGrants ?? [], need));
}

/** What the principal may do, as shown by WhoAmI: a key's grants that its user still covers. */
export function effectivePermissions(p: Principal): { admin: boolean; grants: readonly Grant[] } {
  if (!keyLimited(p)) return { admin: p.userAdmin, grants: p.userGrants };
  const keyGrants = p.keyGrants ?? [];
  return {
    admin: false,
    grants: p.userAdmin ? keyGrants : keyGrants.filter((g) => !uncovered(p.userGrants, [g])),
  };
}

/** For logs and messages: `alice`, or `alice (key 0123456789abcdef)`. */
export function describePrincipal(p: Principal): string {
  if (!p.authEnabled) return "anonymous";
  return p.keyId === undefined ? p.user : `${p.user} (key ${p.keyId})`;
}
