import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type EventStore,
  ReadForDecisionResponseSchema,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { readForDecision } from "../store/decision-read.js";
import { toProtoEvent, toProtoPosition } from "./convert.js";
import type { ApiDeps } from "./deps.js";
import { toDecisionReadRequest } from "./validate-decision.js";

/** ReadForDecision: several queries of one decision, read at one head. */
export function decisionHandler(
  deps: ApiDeps,
): Pick<ServiceImpl<typeof EventStore>, "readForDecision"> {
  return {
    async readForDecision(request, ctx) {
      const read = await readForDecision(
        deps.store,
        toDecisionReadRequest(request, deps.validation),
        { signal: ctx.signal },
      );
      return create(ReadForDecisionResponseSchema, {
        head: toProtoPosition(read.head),
        results: read.results.map((r) => ({
          events: r.events.map(toProtoEvent),
          hasMore: r.hasMore,
        })),
      });
    },
  };
}
