import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { basicAuth, createOrisunClient, type OrisunClient } from "../../client-web/src/index.js";
import { artifact, launchChromium, pageErrors } from "../support/browser.js";
import { dropSchema, freshSchema, PG_URL } from "../support/databases.js";
import { NATS_URL } from "../support/live.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const schema = freshSchema("console_auth");
const ADMIN_PASSWORD = "console-admin-pass-1";
const READER_PASSWORD = "rita-reads-orders-1";

// A person signing in to the console of a server with authentication on: what they see, what is
// greyed out, and what the server refuses, in headless Chromium.
describe("the web console with authentication on", () => {
  let server: SpawnedServer;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  let errors: string[];
  let admin: OrisunClient;

  beforeAll(async () => {
    server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_NATS_URL: NATS_URL,
      ORISUN_AUTH: "on",
      ORISUN_ADMIN_PASSWORD: ADMIN_PASSWORD,
    });
    admin = createOrisunClient({
      baseUrl: server.url,
      credentials: basicAuth("admin", ADMIN_PASSWORD),
    });
    await admin.admin.createUser({
      name: "rita",
      password: READER_PASSWORD,
      grants: [{ boundary: "orders_*", access: "read" }],
    });
    for (const boundary of ["orders_eu", "orders_us", "billing"]) {
      await admin.save([{ type: "Seeded", tags: { region: boundary }, data: { boundary } }], {
        boundary,
      });
    }
    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    page = await context.newPage();
    errors = pageErrors(page);
    await page.goto(`${server.url}/console/`);
  });

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
    await dropSchema(schema);
  });

  it("asks for credentials and shows nothing else until they are valid", async () => {
    await page.waitForSelector("#signin-panel:not([hidden])");
    expect(await page.isHidden("#layout")).toBe(true);
    expect(await page.isHidden("#overview-panel")).toBe(true);
    await page.fill("#s-user", "rita");
    await page.fill("#s-password", "not-her-password");
    await page.click("#signin-submit");
    await expect
      .poll(() => page.textContent("#signin-error"))
      .toMatch(/^Sign-in failed: the user name and password, or the API key, are not valid\./);
    expect(await page.isHidden("#layout")).toBe(true);
  });

  it("signs in, says who and what they may do, and reads a boundary the grants allow", async () => {
    await page.fill("#s-password", READER_PASSWORD);
    await page.click("#signin-submit");
    await page.waitForSelector("#layout:not([hidden])");
    expect(await page.textContent("#who-label")).toBe("Signed in as rita · read orders_*");
    expect(await page.textContent("#overview-note")).toMatch(
      /needs the admin role\. You may: read orders_\*/,
    );
    await page.fill("#boundary", "orders_eu");
    await page.dispatchEvent("#boundary", "change");
    await page.click("#run-query");
    await page.waitForSelector("#events li[data-type=Seeded]");
    expect(await page.getAttribute("#run-query", "aria-disabled")).toBeNull();
  });

  it("greys out appending where the grants do not allow it, and shows the server's refusal", async () => {
    expect(await page.getAttribute("#append-submit", "aria-disabled")).toBe("true");
    expect(await page.textContent("#append-access")).toBe(
      "Your permissions (read orders_*) do not include append on boundary orders_eu.",
    );
    await page.fill("#a-type", "Sneaky");
    await page.fill("#a-data", '{"try": 1}');
    // A person can click a greyed-out button (Playwright counts aria-disabled as disabled).
    await page.click("#append-submit", { force: true });
    await expect.poll(() => page.textContent("#append-error")).toMatch(/^Not allowed: .*append/);
    expect(await page.textContent("#append-result")).toBe("");
    const events = await admin.read({ boundary: "orders_eu", count: 100 });
    expect(events.map((e) => e.eventType)).toEqual(["Seeded"]);
    // Outside the grants, reading is greyed out too.
    await page.fill("#boundary", "billing");
    await page.dispatchEvent("#boundary", "input");
    expect(await page.getAttribute("#run-query", "aria-disabled")).toBe("true");
    await page.screenshot({ path: artifact("console-auth-reader.png"), fullPage: true });
  });

  it("keeps the sign-in for this tab only, and forgets it on sign-out", async () => {
    const stored = await page.evaluate(() => ({
      session: sessionStorage.getItem("orisun.credentials"),
      local: JSON.stringify(localStorage),
    }));
    expect(stored.session).toMatch(/^Basic /);
    expect(stored.local).not.toContain(READER_PASSWORD);
    expect(stored.local).not.toContain(stored.session);
    const otherTab = await context.newPage();
    await otherTab.goto(`${server.url}/console/`);
    await otherTab.waitForSelector("#signin-panel:not([hidden])");
    await otherTab.close();
    await page.click("#sign-out");
    await page.waitForSelector("#signin-panel:not([hidden])");
    expect(await page.evaluate(() => sessionStorage.getItem("orisun.credentials"))).toBeNull();
  });

  it("signs in with an API key, named in the header", async () => {
    const made = await admin.admin.createApiKey({ user: "rita", name: "console test" });
    await page.check("#s-method-key");
    await page.fill("#s-key", made.secret);
    await page.click("#signin-submit");
    await page.waitForSelector("#layout:not([hidden])");
    expect(await page.textContent("#who-label")).toBe(
      `Signed in as rita (API key ${made.key?.id}) · read orders_*`,
    );
    await page.click("#sign-out");
    await page.waitForSelector("#signin-panel:not([hidden])");
  });

  it("shows an admin the overview: server, boundaries with counts and heads, groups", async () => {
    await page.check("#s-method-password");
    await page.fill("#s-user", "admin");
    await page.fill("#s-password", ADMIN_PASSWORD);
    await page.click("#signin-submit");
    await page.waitForSelector("#overview-tables:not([hidden])");
    expect(await page.textContent("#who-label")).toBe("Signed in as admin · admin: everything");
    expect(await page.textContent("#server-info")).toMatch(
      /^Orisun \S+ · PostgreSQL · NATS JetStream · authentication on$/,
    );
    const rows = await page.$$eval("#boundaries-body tr", (trs) =>
      trs.map((tr) => Array.from(tr.querySelectorAll("td"), (td) => td.textContent)),
    );
    expect(rows.map((r) => r.slice(0, 3))).toEqual([
      ["billing", "1", "1:1"],
      ["orders_eu", "1", "1:1"],
      ["orders_us", "1", "1:1"],
    ]);
    expect(await page.getAttribute("#append-submit", "aria-disabled")).toBeNull();
    await page.click("#boundaries-body tr[data-boundary=orders_us] button");
    await expect.poll(() => page.inputValue("#boundary")).toBe("orders_us");
    await page.waitForSelector("#events li[data-type=Seeded]");
    await page.screenshot({ path: artifact("console-auth-admin.png"), fullPage: true });
  });

  it("logged no errors in the browser console", () => {
    expect(errors).toEqual([]);
  });
});
