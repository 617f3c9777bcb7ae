import { describe, expect, it } from "vitest";
import { basicAuth, bearer, createOrisunClient } from "../client-web/src/index.js";

/** A fetch that records the authorization header of each call and answers UNAUTHENTICATED. */
function recordingFetch() {
  const seen: (string | null)[] = [];
  const fetch: typeof globalThis.fetch = async (_input, init) => {
    seen.push(new Headers(init?.headers).get("authorization"));
    return new Response(JSON.stringify({ code: "unauthenticated", message: "no" }), {
      status: 401,
      headers: { "content-type": "application/json" },
    });
  };
  return { seen, fetch };
}

describe("client credentials", () => {
  it("encodes Basic as base64 of UTF-8 user:password, and Bearer as given", () => {
    expect(basicAuth("admin", "s3cret pass")).toBe(
      `Basic ${Buffer.from("admin:s3cret pass").toString("base64")}`,
    );
    expect(basicAuth("zoë", "pässwörd")).toBe(
      `Basic ${Buffer.from("zoë:pässwörd", "utf8").toString("base64")}`,
    );
    expect(bearer("osk_abc")).toBe("Bearer osk_abc");
  });

  it("sends a fixed value on every service, and asks a function before each call", async () => {
    const fixed = recordingFetch();
    const a = createOrisunClient({
      baseUrl: "http://orisun.invalid",
      credentials: bearer("k1"),
      fetch: fixed.fetch,
    });
    await expect(a.read({ boundary: "b" })).rejects.toThrow();
    await expect(a.admin.whoAmI({})).rejects.toThrow();
    expect(fixed.seen).toEqual(["Bearer k1", "Bearer k1"]);

    const asked = recordingFetch();
    let current: string | undefined;
    const b = createOrisunClient({
      baseUrl: "http://orisun.invalid",
      protocol: "grpc-web",
      credentials: async () => current,
      fetch: asked.fetch,
    });
    await expect(b.read({ boundary: "b" })).rejects.toThrow();
    current = basicAuth("u", "password1");
    await expect(b.read({ boundary: "b" })).rejects.toThrow();
    expect(asked.seen).toEqual([null, basicAuth("u", "password1")]);
  });
});
