import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type {
  EventStore,
  SubscribeToEventStoreRequest,
} from "../../gen/orisun/v1/eventstore_pb.js";
import type { LiveFeeds } from "../broker/feed.js";
import { StoreError } from "../store/errors.js";
import {
  type SubscriptionLimits,
  type SubscriptionObserver,
  subscribe,
} from "../streaming/subscription.js";
import { toProtoEvent } from "./convert.js";
import type { ApiDeps } from "./deps.js";
import { toSubscribeRequest } from "./validate.js";

export interface SubscribeDeps extends ApiDeps {
  readonly feeds: LiveFeeds;
  readonly subscription: SubscriptionLimits;
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
      const events = subscribe(
        {
          store: deps.store,
          feeds: deps.feeds,
          limits: deps.subscription,
          observer: deps.observer,
        },
        parsed,
        signal,
      );
      for await (const event of events) yield toProtoEvent(event);
      if (deps.shutdown.aborted) {
        // Not the end of the log: tell the client to resume (from its last position) elsewhere.
        throw new StoreError("unavailable", "the server is shutting down; resubscribe");
      }
    },
  };
}
