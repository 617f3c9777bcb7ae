// What the signed-in principal may do, from Admin.WhoAmI, to grey out what it may not. The
// server decides every call; this only spares a person a request that will be refused.
import type { WhoAmIResponse } from "../src/index.js";

export type BoundaryAccess = "read" | "append";
export type SubjectAccess = "publish" | "subscribe";

/** A boundary pattern: a name, `*`, or a prefix ending in `*`. */
function boundaryMatches(pattern: string, boundary: string): boolean {
  if (pattern === "*") return true;
  if (pattern.endsWith("*")) return boundary.startsWith(pattern.slice(0, -1));
  return pattern === boundary;
}

/**
 * Whether a NATS subject pattern covers every subject `subject` can match: `>` covers the rest,
 * `*` one token (a literal or `*`), a literal only itself.
 */
export function subjectCovers(pattern: string, subject: string): boolean {
  const grant = pattern.split(".");
  const wanted = subject.split(".");
  for (let i = 0; i < grant.length; i++) {
    const g = grant[i];
    const w = wanted[i];
    if (g === ">") return w !== undefined;
    if (w === undefined) return false;
    if (g === "*") {
      if (w === ">") return false;
      continue;
    }
    if (g !== w) return false;
  }
  return grant.length === wanted.length;
}

/** Unknown (not yet asked) or auth off: allowed; the server has the last word anyway. */
export function mayUseBoundary(
  who: WhoAmIResponse | undefined,
  access: BoundaryAccess,
  boundary: string,
): boolean {
  if (!who?.authEnabled || who.admin) return true;
  return who.grants.some(
    (g) => g.access === access && g.boundary !== "" && boundaryMatches(g.boundary, boundary),
  );
}

export function mayUseSubject(
  who: WhoAmIResponse | undefined,
  access: SubjectAccess,
  subject: string,
): boolean {
  if (!who?.authEnabled || who.admin) return true;
  return who.grants.some(
    (g) => g.access === access && g.subject !== "" && subjectCovers(g.subject, subject),
  );
}

/** "admin", or the grants as `read orders_*, append orders_*`. */
export function describeAccess(who: WhoAmIResponse): string {
  if (who.admin) return "admin: everything";
  if (who.grants.length === 0) return "no permissions";
  return who.grants.map((g) => `${g.access} ${g.boundary || g.subject}`).join(", ");
}
