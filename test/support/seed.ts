import type { Client } from "@connectrpc/connect";
import type { EventStore } from "../../gen/orisun/v1/eventstore_pb.js";

/**
 * Appends `count` events to `boundary` in requests of `perRequest` (so commits of many events),
 * with the awkward parts a backup must carry: tags with quotes and non-ASCII, empty tag values,
 * data with escapes, metadata present or absent.
 */
export async function seedEvents(
  client: Client<typeof EventStore>,
  boundary: string,
  count: number,
  perRequest = 1_000,
): Promise<void> {
  for (let i = 0; i < count; i += perRequest) {
    await client.saveEvents({
      boundary,
      events: Array.from({ length: Math.min(perRequest, count - i) }, (_, j) => {
        const n = i + j;
        return {
          eventType: n % 3 === 0 ? "OrderShipped" : "OrderPlaced",
          tags:
            n % 5 === 0
              ? []
              : [
                  { key: "order", value: String(n % 977) },
                  { key: 'ü"k', value: "" },
                ],
          data: JSON.stringify({ n, text: 'héllo "world"\n\u0001', list: [1, { x: null }] }),
          metadata: n % 2 === 0 ? "" : JSON.stringify({ by: "seed", n }),
        };
      }),
    });
  }
}
