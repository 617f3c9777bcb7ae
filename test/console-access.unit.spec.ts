import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { mayUseBoundary, mayUseSubject, subjectCovers } from "../client-web/console/access.js";
import { GrantSchema, WhoAmIResponseSchema } from "../client-web/src/index.js";

const who = (grants: { boundary?: string; subject?: string; access: string }[], admin = false) =>
  create(WhoAmIResponseSchema, {
    user: "u",
    authEnabled: true,
    admin,
    grants: grants.map((g) => create(GrantSchema, g)),
  });

describe("the console's reading of grants", () => {
  it("matches boundary patterns: a name, a prefix ending in *, and *; access by access", () => {
    const reader = who([
      { boundary: "orders_*", access: "read" },
      { boundary: "audit", access: "append" },
    ]);
    expect(mayUseBoundary(reader, "read", "orders_eu")).toBe(true);
    expect(mayUseBoundary(reader, "read", "order")).toBe(false);
    expect(mayUseBoundary(reader, "append", "orders_eu")).toBe(false);
    expect(mayUseBoundary(reader, "append", "audit")).toBe(true);
    expect(mayUseBoundary(reader, "read", "audit")).toBe(false);
    expect(mayUseBoundary(who([{ boundary: "*", access: "read" }]), "read", "x")).toBe(true);
    expect(mayUseBoundary(who([], true), "append", "anything")).toBe(true);
    expect(mayUseBoundary(undefined, "append", "anything")).toBe(true);
  });

  it("covers a subscription only when the grant covers every subject it can match", () => {
    expect(subjectCovers("orders.>", "orders.created")).toBe(true);
    expect(subjectCovers("orders.>", "orders.*.eu")).toBe(true);
    expect(subjectCovers("orders.>", "orders")).toBe(false);
    expect(subjectCovers("orders.*", "orders.created")).toBe(true);
    expect(subjectCovers("orders.*", "orders.*")).toBe(true);
    expect(subjectCovers("orders.*", "orders.>")).toBe(false);
    expect(subjectCovers("orders.*", "orders.a.b")).toBe(false);
    expect(subjectCovers("orders.created", "orders.*")).toBe(false);
    expect(subjectCovers(">", "anything.at.all")).toBe(true);
    const pub = who([{ subject: "orders.>", access: "publish" }]);
    expect(mayUseSubject(pub, "publish", "orders.created")).toBe(true);
    expect(mayUseSubject(pub, "subscribe", "orders.created")).toBe(false);
  });
});
