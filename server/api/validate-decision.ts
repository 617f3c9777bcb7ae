import type { ReadForDecisionRequest } from "../../gen/orisun/v1/eventstore_pb.js";
import type { DecisionReadRequest } from "../store/decision-read.js";
import { StoreError } from "../store/errors.js";
import { START } from "../store/types.js";
import {
  DEFAULT_COUNT,
  MAX_COUNT,
  toPosition,
  toQuery,
  type ValidationContext,
  validateBoundary,
} from "./validate.js";

/**
 * A decision read is held to GetEvents' limits twice: each query as if it were one GetEvents, and
 * all of them together (criteria and events), so one call is never worth more than one read.
 */
export function toDecisionReadRequest(
  request: ReadForDecisionRequest,
  ctx: ValidationContext,
): DecisionReadRequest {
  const boundary = validateBoundary(request.boundary, ctx);
  const { maxCriteria } = ctx.limits;
  if (request.queries.length === 0) {
    throw new StoreError("invalid", "must contain at least one query", "queries");
  }
  if (request.queries.length > maxCriteria) {
    throw new StoreError(
      "too_large",
      `must contain at most ${maxCriteria} queries (ORISUN_MAX_CRITERIA), got ${request.queries.length}`,
      "queries",
    );
  }
  let criteria = 0;
  let events = 0;
  const queries = request.queries.map((q, i) => {
    const query = toQuery(q.criteria, `queries[${i}].criteria`, ctx);
    criteria += query.length;
    const count = q.count === 0 ? DEFAULT_COUNT : Math.min(q.count, MAX_COUNT);
    events += count;
    return {
      query,
      after: toPosition(q.afterPosition, `queries[${i}].after_position`) ?? START,
      count,
    };
  });
  if (criteria > maxCriteria) {
    throw new StoreError(
      "too_large",
      `must have at most ${maxCriteria} criteria in all queries together (ORISUN_MAX_CRITERIA), got ${criteria}`,
      "queries",
    );
  }
  if (events > MAX_COUNT) {
    throw new StoreError(
      "too_large",
      `counts must add up to at most ${MAX_COUNT} events in all queries together (0 counts as ${DEFAULT_COUNT}), got ${events}`,
      "queries",
    );
  }
  return {
    boundary,
    queries,
    at: toPosition(request.at, "at"),
    maxBytes: ctx.limits.maxReadBytes,
  };
}
