import type { Criterion, Query, Tag } from "./types.js";

interface Matchable {
  readonly type: string;
  readonly tags: readonly Tag[];
}

function matchesCriterion(event: Matchable, criterion: Criterion): boolean {
  if (criterion.types.length > 0 && !criterion.types.includes(event.type)) return false;
  return criterion.tags.every((want) =>
    event.tags.some((have) => have.key === want.key && have.value === want.value),
  );
}

/** The in-memory twin of query-sql.ts: the same rules, for events not (yet) in the database. */
export function matches(event: Matchable, query: Query): boolean {
  return query.length === 0 || query.some((criterion) => matchesCriterion(event, criterion));
}
