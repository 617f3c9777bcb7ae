import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type {
  EventStore,
  SubscribeToEventStoreRequest,
} from "../../gen/orisun/v1/eventstore_pb.js";
import type { LiveFeeds } from "../broker/feed.js";
import { StoreError } from "../store/errors.js";
import type { StoredEvent } from "../store/types.js";
import {
  type NamedSubscriptions,
  type SubscriptionLimits,
  type SubscriptionObserver,
  type SubscriptionPhase,
  subscribe,
} from "../streaming/subscription.js";
import { carriers, kBatched } from "./batched-stream.js";
import { toProtoEvent } from "./convert.js";
import type { ApiDeps } from "./deps.js";
import { isBinaryCall, type LiveEncodings } from "./live-encoding.js";
import { toSubscribeRequest } from "./validate.js";

export interface SubscribeDeps extends ApiDeps {
  readonly feeds: LiveFeeds;
  readonly subscription: SubscriptionLimits;
  /** ORISUN_MAX_NAMED_SUBSCRIPTIONS of this process. */
  readonly named?: NamedSubscriptions;
  /** Live events are encoded once for all their subscribers. */
  readonly encodings: LiveEncodings;
  readonly observer?: SubscriptionObserver;
}

/** SubscribeToEvents: validate, then stream until the client cancels or the server stops. */
export function subscribeHandler(
  deps: SubscribeDeps,
): Pick<ServiceImpl<typeof EventStore>, "subscribeToEvents"> {
  return {
    async *subscribeToEvents(request: SubscribeToEventStoreRequest, ctx: HandlerContext) {
      const parsed = toSubscribeRequest(request, deps.validation);
      const signal = AbortSignal.any([ctx.signal, deps.shutdown]);
      const binary = isBinaryCall(ctx.requestHeader.get("content-type"));
      const phase: SubscriptionPhase = { live: false };
      const events = subscribe(
        {
          store: deps.store,
          feeds: deps.feeds,
          limits: deps.subscription,
          named: deps.named,
          observer: deps.observer,
        },
        parsed,
        signal,
        phase,
      );
      if (ctx.values.get(kBatched)) {
        // Envelopes written here, a run at a time (batched-stream.ts); live events from the
        // encoding every subscriber shares, history (read for this subscriber alone) directly.
        const shared = (event: StoredEvent) => deps.encodings.bytes(event);
        for await (const run of events) {
          yield* carriers(run, phase.live ? shared : undefined);
        }
      } else {
        for await (const run of events) {
          for (const event of run) {
            yield phase.live ? deps.encodings.forCall(event, binary) : toProtoEvent(event);
          }
        }
      }
      if (deps.shutdown.aborted) {
        // Not the end of the log: tell the client to resume (from its last position) elsewhere.
        throw new StoreError("unavailable", "the server is shutting down; resubscribe");
      }
    },
  };
}
