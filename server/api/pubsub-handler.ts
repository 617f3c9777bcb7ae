import { create } from "@bufbuild/protobuf";
import { EmptySchema } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { v7 as uuidv7 } from "uuid";
import {
  type EventStore,
  MessageSchema,
  type PublishRequest,
  type SubscribeRequest,
  SubscribeResponseSchema,
} from "../../gen/orisun/v1/eventstore_pb.js";
import {
  type PubSub,
  validateConsumerName,
  validateMessageId,
  validatePublishSubject,
  validateSubscribeSubject,
} from "../broker/pubsub.js";
import { StoreError } from "../store/errors.js";
import type { ApiDeps } from "./deps.js";

export interface PubSubDeps extends ApiDeps {
  readonly pubsub: PubSub;
  /** Limit on a published message's data, in bytes. */
  readonly maxMessageBytes: number;
  /** Pub/sub metrics (server/observability); none: nothing is measured. */
  readonly observer?: PubSubObserver;
}

export interface PubSubObserver {
  published(): void;
  /** A message was written to a member's stream. */
  delivered(redelivered: boolean): void;
}

/** PublishToPubSub and SubscribeToPubSub: validate, then hand over to the broker. */
export function pubsubHandler(
  deps: PubSubDeps,
): Pick<ServiceImpl<typeof EventStore>, "publishToPubSub" | "subscribeToPubSub"> {
  return {
    async publishToPubSub(request: PublishRequest) {
      if (request.data.length > deps.maxMessageBytes) {
        throw new StoreError(
          "too_large",
          `must be at most ${deps.maxMessageBytes} bytes, got ${request.data.length}`,
          "data",
        );
      }
      const subject = validatePublishSubject(request.subject);
      const id = request.id === "" ? uuidv7() : validateMessageId(request.id);
      await deps.pubsub.publish({ id, subject, data: request.data });
      deps.observer?.published();
      return create(EmptySchema);
    },

    async *subscribeToPubSub(request: SubscribeRequest, ctx: HandlerContext) {
      const subject = validateSubscribeSubject(request.subject);
      const consumerName = validateConsumerName(request.consumerName);
      const signal = AbortSignal.any([ctx.signal, deps.shutdown]);
      const subscription = await deps.pubsub.subscribe(subject, consumerName, signal);
      // The broker acknowledges a message when the loop asks for the next one, that is after
      // this yield resumed: once Connect has written the message.
      for await (const { id, subject, data, redelivered } of subscription) {
        yield create(SubscribeResponseSchema, {
          message: create(MessageSchema, { id, subject, data }),
        });
        deps.observer?.delivered(redelivered === true);
      }
      if (deps.shutdown.aborted) {
        // Unacknowledged messages went back to the group: another server delivers them.
        throw new StoreError("unavailable", "the server is shutting down; subscribe again");
      }
    },
  };
}
