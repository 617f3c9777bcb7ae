import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { leanSaveEvents } from "../bench/lean-grpc.js";
import type { RunningApp } from "../server/app.js";
import { basic } from "./support/auth.js";
import { startEmbeddedApp } from "./support/embedded-app.js";

/** The bench's own SaveEvents client (bench/lean-grpc.ts) must be a correct gRPC client. */
const PASSWORD = "bench-client-Admin-pw";
let app: RunningApp;

beforeAll(async () => {
  app = await startEmbeddedApp({ ORISUN_AUTH: "on", ORISUN_ADMIN_PASSWORD: PASSWORD });
}, 60_000);

afterAll(() => app?.close());

const deposit = (id: string) => ({
  event_id: id,
  event_type: "Deposited",
  tags: [{ key: "account", value: "a" }],
  data: '{"amount":1}',
});
const onAccount = { criteria: [{ tags: [{ key: "account", value: "a" }] }] };

describe("the bench's lean gRPC client", () => {
  it("appends, answers the position, and refuses a stale condition with its status", async () => {
    const save = leanSaveEvents(app.url, basic("admin", PASSWORD));
    const start = { commit_position: "0", prepare_position: "0" };
    const first = await save({
      boundary: "bench_client",
      events: [deposit("11111111-1111-4111-8111-111111111111")],
      consistency_condition: { consistency_marker: start, criteria: onAccount },
    });
    expect(first.log_position).not.toBeNull();
    expect(BigInt(first.log_position?.commit_position ?? 0)).toBeGreaterThan(0n);
    const second = await save({
      boundary: "bench_client",
      events: [deposit("22222222-2222-4222-8222-222222222222")],
      consistency_condition: {
        consistency_marker: first.log_position ?? start,
        criteria: onAccount,
      },
    });
    expect(BigInt(second.log_position?.commit_position ?? 0)).toBeGreaterThan(
      BigInt(first.log_position?.commit_position ?? 0),
    );
    // Code.Aborted is 10.
    await expect(
      save({
        boundary: "bench_client",
        events: [deposit("33333333-3333-4333-8333-333333333333")],
        consistency_condition: { consistency_marker: start, criteria: onAccount },
      }),
    ).rejects.toThrow(/grpc-status 10: .*condition/);
  });

  it("reports a refused credential as the server's status", async () => {
    const save = leanSaveEvents(app.url, basic("admin", "wrong-password"));
    // Code.Unauthenticated is 16.
    await expect(
      save({ boundary: "bench_client", events: [deposit("44444444-4444-4444-8444-444444444444")] }),
    ).rejects.toThrow(/grpc-status 16/);
  });
});
