import { validateSubscribeSubject } from "../broker/pubsub.js";
import { StoreError } from "../store/errors.js";

export type BoundaryAccess = "read" | "append";
export type SubjectAccess = "publish" | "subscribe";

/** One permission: a boundary pattern with read or append, or a subject pattern with publish or subscribe. */
export type Grant =
  | { readonly boundary: string; readonly access: BoundaryAccess }
  | { readonly subject: string; readonly access: SubjectAccess };

/** What one call needs: a grant covering it, or the admin role. */
export type Need =
  | { readonly access: BoundaryAccess; readonly boundary: string }
  | { readonly access: SubjectAccess; readonly subject: string }
  | { readonly access: "admin" };

/** More than any sensible role needs; bounds what one principal costs to check. */
export const MAX_GRANTS = 256;

const BOUNDARY_PATTERN = /^(\*|[a-z][a-z0-9_]{0,62}|[a-z][a-z0-9_]{0,61}\*)$/;

/** Validates grants as a client sent them (proto Grant: boundary, subject, access); `field` names the list. */
export function validateGrants(
  grants: readonly { boundary: string; subject: string; access: string }[],
  field = "grants",
): Grant[] {
  if (grants.length > MAX_GRANTS) {
    throw new StoreError("invalid", `at most ${MAX_GRANTS} grants, got ${grants.length}`, field);
  }
  return grants.map((g, i) => {
    const at = `${field}[${i}]`;
    if ((g.boundary === "") === (g.subject === "")) {
      throw new StoreError("invalid", "set exactly one of boundary and subject", at);
    }
    if (g.boundary !== "") {
      if (!BOUNDARY_PATTERN.test(g.boundary)) {
        throw new StoreError(
          "invalid",
          `must be a boundary name, "*", or a boundary name prefix ending in "*", got ${JSON.stringify(g.boundary.slice(0, 80))}`,
          `${at}.boundary`,
        );
      }
      if (g.access !== "read" && g.access !== "append") {
        throw new StoreError(
          "invalid",
          `must be read or append with a boundary, got ${JSON.stringify(g.access.slice(0, 20))}`,
          `${at}.access`,
        );
      }
      return { boundary: g.boundary, access: g.access };
    }
    validateSubscribeSubject(g.subject, `${at}.subject`);
    if (g.access !== "publish" && g.access !== "subscribe") {
      throw new StoreError(
        "invalid",
        `must be publish or subscribe with a subject, got ${JSON.stringify(g.access.slice(0, 20))}`,
        `${at}.access`,
      );
    }
    return { subject: g.subject, access: g.access };
  });
}

export function boundaryMatches(pattern: string, boundary: string): boolean {
  if (pattern === "*") return true;
  if (pattern.endsWith("*")) return boundary.startsWith(pattern.slice(0, -1));
  return pattern === boundary;
}

/** Every boundary `inner` matches, `outer` matches too. */
export function boundaryCovers(outer: string, inner: string): boolean {
  if (outer === "*") return true;
  if (inner === "*") return false;
  if (outer.endsWith("*")) return inner.startsWith(outer.slice(0, -1));
  return outer === inner;
}

/**
 * Every subject `inner` can match, `outer` matches too (NATS syntax: `*` one token, a final `>`
 * one or more). A literal subject is the pattern that matches only itself, so this also answers
 * "does `outer` match the subject `inner`" for publishing.
 */
export function subjectCovers(outer: string, inner: string): boolean {
  const o = outer.split(".");
  const i = inner.split(".");
  for (let n = 0; n < o.length; n++) {
    const ot = o[n];
    const it = i[n];
    if (it === undefined) return false; // inner is shorter: outer needs tokens inner lacks
    if (ot === ">") return true; // one or more tokens: inner has at least one here
    if (it === ">") return false; // inner reaches any depth, outer does not
    if (ot === "*") continue; // any single token, including inner's own `*`
    if (ot !== it) return false;
  }
  return o.length === i.length;
}

/** Does some grant of `grants` cover `need`? The admin role is not a grant: see Principal. */
export function grantsAllow(grants: readonly Grant[], need: Need): boolean {
  if (need.access === "admin") return false;
  return grants.some((g) => grantCovers(g, need));
}

function grantCovers(g: Grant, need: Exclude<Need, { access: "admin" }>): boolean {
  if (g.access !== need.access) return false;
  if ("boundary" in g && "boundary" in need) return boundaryMatches(g.boundary, need.boundary);
  if ("subject" in g && "subject" in need) return subjectCovers(g.subject, need.subject);
  return false;
}

/** The first grant of `wanted` that none of `held` covers (nothing: all covered). */
export function uncovered(held: readonly Grant[], wanted: readonly Grant[]): Grant | undefined {
  return wanted.find(
    (w) =>
      !held.some((h) => {
        if (h.access !== w.access) return false;
        if ("boundary" in h && "boundary" in w) return boundaryCovers(h.boundary, w.boundary);
        if ("subject" in h && "subject" in w) return subjectCovers(h.subject, w.subject);
        return false;
      }),
  );
}

/** The grant as one line for messages and logs, e.g. `read on boundary orders_*`. */
export function describeNeed(need: Need | Grant): string {
  if (need.access === "admin") return "admin";
  return "boundary" in need
    ? `${need.access} on boundary ${JSON.stringify(need.boundary.slice(0, 80))}`
    : `${need.access} on subject ${JSON.stringify(need.subject.slice(0, 160))}`;
}
