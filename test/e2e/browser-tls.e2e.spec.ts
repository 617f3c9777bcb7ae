import { execFileSync } from "node:child_process";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { launchChromium, pageErrors } from "../support/browser.js";
import { dropSchema, freshSchema, PG_URL } from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { tempDir } from "../support/temp.js";

// With TLS configured, the same port speaks HTTP/2 to browsers (ALPN), console and API alike.
describe("the console over TLS in Chromium", () => {
  const schema = freshSchema("tls");
  const dir = tempDir("orisun-tls-");
  let server: SpawnedServer;
  let browser: Browser;
  let page: Page;
  let errors: string[];
  const wire: string[] = [];
  let origin: string;

  beforeAll(async () => {
    const key = join(dir, "key.pem");
    const cert = join(dir, "cert.pem");
    const subject = "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1";
    const args = `req -x509 -newkey rsa:2048 -nodes -days 1 ${subject}`.split(" ");
    execFileSync("openssl", [...args, "-keyout", key, "-out", cert], { stdio: "ignore" });
    server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_TLS_CERT: cert,
      ORISUN_TLS_KEY: key,
    });
    origin = `https://127.0.0.1:${server.port}`;
    // The certificate is self-signed for this test; the browser is told to accept it.
    browser = await launchChromium(["--ignore-certificate-errors"]);
    page = await browser.newPage();
    errors = pageErrors(page);
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("Network.enable");
    cdp.on("Network.responseReceived", ({ response }) => {
      if (response.url.startsWith(origin)) wire.push(response.protocol ?? "?");
    });
    await page.goto(`${origin}/console/?boundary=over_tls`);
  });

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
    await dropSchema(schema);
  });

  it("serves the console and the API over HTTP/2, streaming included", async () => {
    await page.click("#run-query");
    await page.click("#follow");
    await page.waitForSelector("#live-status:text('Live')");
    await page.fill("#a-type", "Secured");
    await page.fill("#a-data", '{"over": "h2"}');
    await page.click("#append-form button[type=submit]");
    await page.waitForSelector("#append-result:text('Appended Secured')");
    await page.waitForSelector("#events li[data-type='Secured']");
    expect(wire.length).toBeGreaterThan(3);
    expect(new Set(wire)).toEqual(new Set(["h2"]));
    expect(errors).toEqual([]);
  });
});
