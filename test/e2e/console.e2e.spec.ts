import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createOrisunClient, type OrisunClient } from "../../client-web/src/index.js";
import { artifact, launchChromium, pageErrors } from "../support/browser.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { NATS_URL } from "../support/live.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const schema = freshSchema("console");
/** As `npm start` runs it (embedded PGlite, in-process broker), and on PostgreSQL with NATS. */
const setups: { name: string; env: Record<string, string>; shots: string }[] = [
  { name: "the embedded default", env: { ORISUN_DATA_DIR: freshDataDir() }, shots: "embedded" },
  {
    name: "PostgreSQL and NATS",
    env: { ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: schema, ORISUN_NATS_URL: NATS_URL },
    shots: "postgres",
  },
];

// The console as a person uses it: served by the server itself, driven in headless Chromium,
// with a second client (the library, in Node) writing at the same time.
describe.each(setups)("the web console in Chromium, on $name", (setup) => {
  const boundary = "console_e2e";
  let server: SpawnedServer;
  let browser: Browser;
  let page: Page;
  let errors: string[];
  let other: OrisunClient;

  beforeAll(async () => {
    server = await spawnServer({ ...setup.env, ORISUN_BOUNDARIES: `${boundary},other_boundary` });
    other = createOrisunClient({ baseUrl: server.url, boundary });
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    errors = pageErrors(page);
    await page.goto(`${server.url}/`);
  });

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
    if ("ORISUN_PG_SCHEMA" in setup.env) await dropSchema(schema);
  });

  it("is served at /console/ with the configured boundaries to pick from", async () => {
    expect(new URL(page.url()).pathname).toBe("/console/");
    await expect.poll(() => page.inputValue("#boundary")).toBe(boundary);
    const options = await page.$$eval("#boundaries option", (os) =>
      os.map((o) => (o as HTMLOptionElement).value),
    );
    expect(options).toEqual([boundary, "other_boundary"]);
    expect(await page.textContent("#server-url")).toBe(server.url);
    expect(server.output()).toContain(`Orisun console: open ${server.url}/console/ in a browser`);
  });

  it("appends through the form, and refuses JSON that does not parse", async () => {
    await page.fill("#a-type", "UserRegistered");
    await page.fill("#a-tags", "user_id=u-1\ntenant=acme");
    await page.fill("#a-data", '{"name": "Ada"');
    expect(await page.textContent("#a-data-error")).toMatch(/^Data: not valid JSON/);
    expect(await page.getAttribute("#a-data", "aria-invalid")).toBe("true");
    await page.click("#append-form button[type=submit]");
    expect(await page.textContent("#append-error")).toBe("Fix the JSON above first");
    expect(await other.read({ query: { types: ["UserRegistered"] } })).toEqual([]);

    await page.fill("#a-data", '{"name": "Ada", "langs": ["en", "fr"]}');
    await page.click("#append-form button[type=submit]");
    await page.waitForSelector("#append-result:text('Appended UserRegistered at position')");
    const [stored] = await other.read({ query: { types: ["UserRegistered"] } });
    expect(JSON.parse(stored?.data ?? "")).toEqual({ name: "Ada", langs: ["en", "fr"] });
    expect(stored?.tags.map((t) => `${t.key}=${t.value}`)).toEqual(["user_id=u-1", "tenant=acme"]);
  });

  it("shows the appended event in the query view with its type, tags, position, time and JSON", async () => {
    await page.fill("#q-types", "UserRegistered");
    await page.fill("#q-tags", "user_id=u-1");
    await page.click("#run-query");
    const item = page.locator("#events li.event").first();
    await item.waitFor();
    expect(await page.locator("#events li.event").count()).toBe(1);
    expect(await item.getAttribute("data-type")).toBe("UserRegistered");
    expect(await item.locator(".pos").textContent()).toMatch(/^\d+:\d+$/);
    expect(await item.locator(".tag").allTextContents()).toEqual(["user_id=u-1", "tenant=acme"]);
    expect(await item.locator("time").getAttribute("datetime")).toMatch(/^\d{4}-\d\d-\d\dT/);
    // Keyboard: focus the row and open it with Enter.
    await item.locator("summary").focus();
    await page.keyboard.press("Enter");
    expect(await item.locator("pre.json").first().textContent()).toBe(
      JSON.stringify({ name: "Ada", langs: ["en", "fr"] }, null, 2),
    );
  });

  it("follows the query live: an event appended by another client appears within a second", async () => {
    await page.click("#follow");
    await page.waitForSelector("#live-status:text('Live')");
    expect(await page.getAttribute("#live-dot", "data-state")).toBe("live");
    const started = Date.now();
    const position = await other.save([
      { type: "UserRegistered", tags: { user_id: "u-1" }, data: { name: "Grace" } },
    ]);
    const key = `${position.commitPosition}:${position.preparePosition}`;
    await page.waitForSelector(`#events li[data-position="${key}"]`, { timeout: 5_000 });
    expect(Date.now() - started).toBeLessThan(1_000);
    // Events that do not match the query stay out.
    await other.save([{ type: "UserRegistered", tags: { user_id: "u-2" }, data: {} }]);
    await other.save([{ type: "UserRegistered", tags: { user_id: "u-1" }, data: { n: 3 } }]);
    await expect.poll(() => page.locator("#events li.event").count()).toBe(3);
    await page.click("#follow");
    await page.waitForSelector("#live-status:text('Not following')");
  });

  it("shows the conflict when the DCB condition fails, and appends when it holds", async () => {
    await page.click("#run-query");
    await expect.poll(() => page.locator("#events li.event").count()).toBe(3);
    await page.check("#a-condition");
    const head = await page.textContent("#head-position");
    expect(head).toMatch(/^\d+:\d+$/);
    expect(await page.textContent("#a-after")).toBe(`head ${head}, where the query read`);
    // Someone else decides first.
    await other.save([{ type: "UserRegistered", tags: { user_id: "u-1" }, data: { by: "other" } }]);
    await page.fill("#a-type", "UserRenamed");
    await page.fill("#a-tags", "user_id=u-1");
    await page.fill("#a-data", '{"name": "Ada L."}');
    await page.click("#append-form button[type=submit]");
    const conflict = await page.waitForSelector("#append-error:text('Conflict')");
    expect(await conflict.textContent()).toContain(`appended after head ${head}`);
    expect(await conflict.textContent()).toContain("ABORTED");
    expect(await other.read({ query: { types: ["UserRenamed"] } })).toEqual([]);
    // Read again, decide again.
    await page.click("#run-query");
    await expect.poll(() => page.locator("#events li.event").count()).toBe(4);
    await page.click("#append-form button[type=submit]");
    await page.waitForSelector("#append-result:text('Appended UserRenamed')");
    expect(await other.read({ query: { types: ["UserRenamed"] } })).toHaveLength(1);
    await page.uncheck("#a-condition");
  });

  it("shows the head a query read at, matched or not, and appends only if nothing matching changed since", async () => {
    // Something else moves the boundary's head: a query matching nothing still reads at it.
    const head = await other.save([{ type: "Unrelated", tags: { user_id: "u-9" }, data: {} }]);
    const key = `${head.commitPosition}:${head.preparePosition}`;
    await page.fill("#q-types", "SeatReserved");
    await page.fill("#q-tags", "seat=12A");
    await page.click("#run-query");
    await expect.poll(() => page.textContent("#head-position")).toBe(key);
    expect(await page.isVisible("#query-head")).toBe(true);
    expect(await page.textContent("#events-empty")).toBe("No events match.");
    await page.check("#a-condition");
    expect(await page.textContent("#a-after")).toBe(`head ${key}, where the query read`);
    await page.fill("#a-type", "SeatReserved");
    await page.fill("#a-tags", "seat=12A");
    await page.fill("#a-data", '{"by": "console"}');
    await page.screenshot({ path: artifact(`console-head-${setup.shots}.png`), fullPage: true });
    // Nothing matching since the read: the append goes through, though unrelated events came.
    await other.save([{ type: "Unrelated", tags: { seat: "12A" }, data: {} }]);
    await page.click("#append-form button[type=submit]");
    await page.waitForSelector("#append-result:text('Appended SeatReserved')");
    // Now that the seat is taken, the same condition against the same head is refused.
    await page.fill("#a-data", '{"by": "console again"}');
    await page.click("#append-form button[type=submit]");
    const conflict = await page.waitForSelector("#append-error:text('Conflict')");
    expect(await conflict.textContent()).toContain(
      `appended after head ${key}, where the query read`,
    );
    expect(await other.read({ query: { types: ["SeatReserved"] } })).toHaveLength(1);
    await page.uncheck("#a-condition");
  });

  it("pages through a large result, forward and backward", async () => {
    const events = Array.from({ length: 120 }, (_, i) => ({
      type: "Counted",
      tags: { batch: "b1" },
      data: { i },
    }));
    await other.save(events);
    await page.fill("#q-types", "Counted");
    await page.fill("#q-tags", "");
    await page.fill("#q-count", "50");
    await page.click("#run-query");
    await expect.poll(() => page.locator("#events li.event").count()).toBe(50);
    await page.click("#more");
    await expect.poll(() => page.locator("#events li.event").count()).toBe(100);
    await page.click("#more");
    await expect.poll(() => page.locator("#events li.event").count()).toBe(120);
    expect(await page.isHidden("#more")).toBe(true);
    const firstData = async () =>
      JSON.parse((await page.locator("#events li.event pre.json").first().textContent()) ?? "");
    expect(await firstData()).toEqual({ i: 0 });

    await page.selectOption("#q-direction", "backward");
    await page.click("#run-query");
    await expect.poll(() => page.locator("#events li.event").count()).toBe(50);
    expect(await firstData()).toEqual({ i: 119 });
    await page.selectOption("#q-direction", "forward");
  });

  it("names the field and the rule for bad input, client-side and server-side", async () => {
    await page.fill("#q-count", "0");
    await page.click("#run-query");
    expect(await page.textContent("#query-error")).toBe(
      "Page size: must be a whole number from 1 to 10,000",
    );
    await page.fill("#q-count", "50");
    await page.fill("#q-tags", "no-equals-sign");
    await page.click("#run-query");
    expect(await page.textContent("#query-error")).toBe('Tags: "no-equals-sign" must be key=value');
    await page.fill("#q-tags", "");
    // A boundary the server's configuration does not allow: the server's message reaches the page.
    await page.fill("#boundary", "not_configured");
    await page.click("#run-query");
    await expect
      .poll(() => page.textContent("#query-error"))
      .toMatch(/^INVALID_ARGUMENT: boundary: "not_configured" is not one of the configured/);
    await page.fill("#boundary", boundary);
  });

  it("publishes to a subject and shows what a watcher receives", async () => {
    await page.fill("#w-subject", "orders.>");
    await page.click("#watch");
    await page.waitForSelector("#watch-status:text('Live')");
    await page.fill("#p-subject", "orders.created");
    // A new private subscription receives what is published once its consumer exists; the page
    // cannot see that moment, so publish until the first message shows (the API's contract).
    for (let i = 0; i < 50; i++) {
      await page.fill("#p-message", JSON.stringify({ order: i }));
      await page.click("#publish-form button[type=submit]");
      await page.waitForSelector("#publish-result:text('Published to orders.created')");
      if ((await page.locator("#messages li").count()) > 0) break;
      await page.waitForTimeout(200);
    }
    await page.waitForSelector("#messages li[data-subject='orders.created']");
    await page.fill("#p-message", '{"order": "last"}');
    await page.click("#publish-form button[type=submit]");
    await expect
      .poll(() => page.locator("#messages li pre").first().textContent())
      .toBe(JSON.stringify({ order: "last" }, null, 2));
    await page.click("#watch");
    await page.waitForSelector("#watch-status:text('Not watching')");
  });

  it("looks right at desktop and phone widths (screenshots saved), without horizontal scrolling", async () => {
    await page.fill("#q-types", "");
    await page.fill("#q-count", "20");
    await page.selectOption("#q-direction", "backward");
    await page.click("#run-query");
    await expect.poll(() => page.locator("#events li.event").count()).toBe(20);
    // The list shows the new query only; the error of the refused one is gone.
    expect(await page.textContent("#query-error")).toBe("");
    await page.locator("#events li.event summary").nth(1).click();
    await page.screenshot({ path: artifact(`console-desktop-${setup.shots}.png`), fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = await page.evaluate(
      () => document.documentElement.scrollWidth - window.innerWidth,
    );
    expect(overflow).toBeLessThanOrEqual(0);
    await page.screenshot({ path: artifact(`console-narrow-${setup.shots}.png`), fullPage: true });
    await page.setViewportSize({ width: 1400, height: 900 });
  });

  it("logged no errors in the browser console", () => {
    expect(errors).toEqual([]);
  });
});
