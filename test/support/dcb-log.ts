import { expect } from "vitest";
import type { StoreError } from "../../server/store/errors.js";
import { matches } from "../../server/store/matcher.js";
import {
  type AppendRequest,
  comparePositions,
  type Position,
  START,
  type StoredEvent,
} from "../../server/store/types.js";

const fmt = (p: Position): string => `{${p.commit},${p.prepare}}`;

/** One append as its client saw it: accepted at a position, or refused. */
export interface Attempt {
  readonly request: AppendRequest;
  result?: Position;
  error?: StoreError;
}

/**
 * Proves the log agrees with what every append was told: positions strictly increase, an
 * accepted append's events are exactly its commit, every accepted condition held at commit
 * (no matching event between its marker and its own events), and rejected appends wrote nothing.
 */
export function verifyLog(log: readonly StoredEvent[], attempts: readonly Attempt[]): void {
  for (let i = 1; i < log.length; i++) {
    const a = log[i - 1]?.position ?? START;
    const b = log[i]?.position ?? START;
    if (comparePositions(a, b) >= 0)
      throw new Error(`positions not increasing: ${fmt(a)} then ${fmt(b)}`);
  }
  const byId = new Map(log.map((e, index) => [e.id, { e, index }]));
  expect(byId.size).toBe(log.length);
  const byCommit = new Map<bigint, StoredEvent[]>();
  for (const e of log) {
    const list = byCommit.get(e.position.commit) ?? [];
    list.push(e);
    byCommit.set(e.position.commit, list);
  }

  let acceptedEvents = 0;
  const acceptedCommits = new Set<bigint>();
  for (const attempt of attempts) {
    const { request, result, error } = attempt;
    if (error) {
      for (const e of request.events) {
        if (byId.has(e.id)) throw new Error(`rejected append wrote ${e.id}`);
      }
      // A failed condition must have had a reason: an event matching it after its marker.
      const condition = request.condition;
      if (error.kind === "condition_failed" && condition) {
        const reason = log.find(
          (e) => comparePositions(e.position, condition.after) > 0 && matches(e, condition.query),
        );
        if (!reason) {
          throw new Error(
            `append with marker ${fmt(condition.after)} failed its condition with no matching event after it`,
          );
        }
      }
      continue;
    }
    if (!result) throw new Error("attempt neither accepted nor rejected");
    acceptedEvents += request.events.length;
    expect(acceptedCommits.has(result.commit)).toBe(false);
    acceptedCommits.add(result.commit);
    const commit = byCommit.get(result.commit) ?? [];
    expect(commit.map((e) => e.id)).toEqual(request.events.map((e) => e.id));
    expect(commit.at(-1)?.position).toEqual(result);
    const first = commit[0];
    const condition = request.condition;
    if (!first || !condition) continue;
    const start = byId.get(first.id)?.index ?? 0;
    for (let i = start - 1; i >= 0; i--) {
      const other = log[i];
      if (!other || comparePositions(other.position, condition.after) <= 0) break;
      if (matches(other, condition.query)) {
        throw new Error(
          `append at ${fmt(result)} with marker ${fmt(condition.after)} was accepted although ${other.id} at ${fmt(other.position)} matches its condition`,
        );
      }
    }
  }
  expect(acceptedEvents).toBe(log.length);
  expect(acceptedCommits.size).toBe(byCommit.size);
}
