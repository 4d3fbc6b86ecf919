// The passkey page in a real browser: headless Debian Chromium driven by playwright-core, with a
// CDP virtual authenticator (CTAP2, internal, resident keys, user verification) standing in for
// the device's screen lock. Run by tests/browser.rs against an in-process control plane, gateway
// and echo upstream; it can also be run by hand against `keygate dev` with the same variables.
//
//   KEYGATE_ENROLL_URL   the enrollment link, http(s)://localhost:<cp port>/#enroll=TOKEN (required)
//   KEYGATE_USER_ID      the user the link enrolls (required)
//   KEYGATE_GATEWAY_URL  a gateway URL on a route that allows sessions (required)
//   KEYGATE_SCREENSHOT   where to save the PNG of the passkey page (required)
//   KEYGATE_CP_URL       the page's origin (default: the enrollment link's origin)
//   KEYGATE_CHROMIUM     the browser (default /usr/bin/chromium)
//   KEYGATE_TRUST_CERTS  for https: the servers' certificates (PEM files, separated by `:`)
//                        that Chromium is to accept, e.g. from a test or `keygate dev --tls` CA
//
// Every URL uses `localhost`: the WebAuthn RP id is `localhost`, and the session cookie is
// host-scoped, so the gateway on another port of the same host receives it. The page and the
// gateway are both http or both https; over https the session cookie must be Secure, and is then
// named `__Host-keygate_session` (`keygate_session` over http on localhost). Chromium
// keeps verifying certificates: it accepts only the KEYGATE_TRUST_CERTS certificates, pinned by
// the SHA-256 of their public keys (--ignore-certificate-errors-spki-list), so WebAuthn sees a
// secure https origin. Exits 0 when every step passed, 1 with the failed step and what the page
// showed otherwise.
import { createHash, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const STEP_TIMEOUT_MS = 10_000;
const TOTAL_TIMEOUT_MS = 90_000;

function required(name) {
  const value = process.env[name];
  if (!value) fail(`environment variable ${name} is not set`);
  return value;
}

function fail(message) {
  console.error(`passkeys.mjs: FAILED: ${message}`);
  process.exit(1);
}

const enrollUrl = required("KEYGATE_ENROLL_URL");
const userId = required("KEYGATE_USER_ID");
const gatewayUrl = required("KEYGATE_GATEWAY_URL");
const screenshotPath = required("KEYGATE_SCREENSHOT");
const cpUrl = process.env.KEYGATE_CP_URL || new URL(enrollUrl).origin + "/";
const executablePath = process.env.KEYGATE_CHROMIUM || "/usr/bin/chromium";
for (const url of [enrollUrl, cpUrl, gatewayUrl]) {
  if (new URL(url).hostname !== "localhost") fail(`${url}: use localhost (the RP id and the cookie's host)`);
}
// "http:" or "https:", the same for the page and the gateway (a Secure cookie never goes to http).
const protocol = new URL(cpUrl).protocol;
for (const url of [enrollUrl, gatewayUrl]) {
  if (new URL(url).protocol !== protocol) fail(`${url}: use ${protocol} like ${cpUrl}`);
}
const https = protocol === "https:";
// The control plane names a Secure session cookie with the `__Host-` prefix.
const cookieName = https ? "__Host-keygate_session" : "keygate_session";

/** base64(SHA-256(SubjectPublicKeyInfo DER)) of a PEM certificate: Chromium's SPKI pin. */
function spkiPin(path) {
  let certificate;
  try {
    certificate = new X509Certificate(readFileSync(path));
  } catch (error) {
    fail(`KEYGATE_TRUST_CERTS: ${path}: ${error.message}`);
  }
  const spki = certificate.publicKey.export({ type: "spki", format: "der" });
  return createHash("sha256").update(spki).digest("base64");
}
const trustedPins = (process.env.KEYGATE_TRUST_CERTS || "").split(":").filter(Boolean).map(spkiPin);
if (https && trustedPins.length === 0) {
  fail("KEYGATE_TRUST_CERTS is not set: over https Chromium must be told which certificates to accept");
}

// A hung browser must not hang the test run.
setTimeout(() => fail(`the whole run took longer than ${TOTAL_TIMEOUT_MS} ms`), TOTAL_TIMEOUT_MS).unref();

const started = Date.now();
// What the browser said, printed when a step fails.
const browserLog = [];
let page;

/** Runs one named step; on failure prints what the page showed and exits non-zero. */
async function step(name, work) {
  const t0 = Date.now();
  try {
    await work();
  } catch (error) {
    let shown = "";
    if (page) {
      const text = async (testid) =>
        (await page.getByTestId(testid).isVisible().catch(() => false))
          ? (await page.getByTestId(testid).textContent()).trim()
          : "(hidden)";
      shown = `\n  page url: ${page.url()}\n  error box: ${await text("error")}\n  notice box: ${await text("notice")}`;
    }
    const log = browserLog.length ? "\n  browser said:\n    " + browserLog.join("\n    ") : "";
    fail(`step "${name}": ${error.message.split("\n")[0]}${shown}${log}`);
  }
  console.log(`ok  ${name} (${Date.now() - t0} ms)`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Waits for `view` to show; an error box shown first fails at once with its text. */
async function expectView(view) {
  const viewShown = page.getByTestId(view).waitFor({ state: "visible" }).then(() => null);
  const errorShown = page.getByTestId("error").waitFor({ state: "visible" }).then(async () =>
    (await page.getByTestId("error").textContent()).trim());
  const error = await Promise.race([viewShown, errorShown]);
  check(error === null, `wanted ${view}, the page shows the error: ${error}`);
}

/** Waits until the notice box shows `text` (an earlier notice may still be on screen). */
async function expectNotice(text) {
  try {
    await page.waitForFunction(
      (wanted) => {
        const notice = document.querySelector('[data-testid="notice"]');
        return !notice.hidden && notice.textContent.includes(wanted);
      },
      text,
      { timeout: STEP_TIMEOUT_MS },
    );
  } catch {
    const notice = page.getByTestId("notice");
    const shown = (await notice.isVisible()) ? (await notice.textContent()).trim() : "(hidden)";
    throw new Error(`notice says "${shown}", wanted "${text}"`);
  }
}

/** The names shown in the passkey list, once it holds `count` passkeys. */
async function expectPasskeys(count) {
  const items = page.getByTestId("passkey-list").getByTestId("passkey");
  try {
    await page.waitForFunction(
      (n) => document.querySelectorAll('[data-testid="passkey-list"] [data-testid="passkey"]').length === n,
      count,
      { timeout: STEP_TIMEOUT_MS },
    );
  } catch {
    throw new Error(`the list shows ${await items.count()} passkeys, wanted ${count}`);
  }
  return (await items.getByTestId("passkey-name").allTextContents()).map((t) => t.trim());
}

async function expectSignedInAs(user) {
  await expectView("view-account");
  const shown = (await page.getByTestId("account-user").textContent()).trim();
  check(shown === user, `account shows "${shown}", wanted "${user}"`);
}

/** The TLS version and certificate a response came with; null when it came without TLS. */
async function tlsDetails(response) {
  // Chromium gives `{}` (not null) for a response over plain http.
  const details = await response.securityDetails();
  return details && details.protocol ? details : null;
}

/** The echo upstream's description of a request the gateway let through. */
async function gatewayEcho() {
  const response = await page.goto(gatewayUrl);
  const body = await response.text();
  check(response.status() === 200, `gateway answered ${response.status()}: ${body}`);
  check(new URL(response.url()).protocol === protocol, `the gateway answered from ${response.url()}`);
  const tls = await tlsDetails(response);
  check(https === (tls !== null), `gateway TLS details ${JSON.stringify(tls)} over ${protocol}`);
  return JSON.parse(body);
}

const browser = await chromium
  .launch({
    executablePath,
    headless: true,
    // --no-sandbox: CI runs as root. The rest keep Chromium off the (closed) network, which
    // otherwise refuses its background connections at every start.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // Only these certificates are accepted despite their unknown CA; any other certificate
      // error still fails the page load. (Needs --user-data-dir, which playwright passes.)
      ...(trustedPins.length ? [`--ignore-certificate-errors-spki-list=${trustedPins.join(",")}`] : []),
    ],
  })
  .catch((error) => fail(`cannot start ${executablePath} (run tests/browser/setup.sh): ${error.message}`));

try {
  const context = await browser.newContext({ viewport: { width: 900, height: 720 }, colorScheme: "light" });
  page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on("console", (message) => {
    if (message.type() === "error" || message.type() === "warning") {
      browserLog.push(`console.${message.type()}: ${message.text()}`);
    }
  });
  page.on("pageerror", (error) => browserLog.push(`page error: ${error.message}`));
  const dialogs = [];
  page.on("dialog", async (dialog) => {
    dialogs.push(dialog.message());
    await dialog.accept();
  });

  // The laptop: a platform authenticator that holds discoverable credentials and verifies its
  // user (the screen lock) without a prompt.
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const authenticator = async (transport) =>
    (
      await cdp.send("WebAuthn.addVirtualAuthenticator", {
        options: {
          protocol: "ctap2",
          transport,
          hasResidentKey: true,
          hasUserVerification: true,
          isUserVerified: true,
          automaticPresenceSimulation: true,
        },
      })
    ).authenticatorId;
  const laptop = await authenticator("internal");
  const credentialsOn = async (authenticatorId) =>
    (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials;

  await step("enroll via the link with a device name and get signed in", async () => {
    const response = await page.goto(enrollUrl);
    // WebAuthn needs a secure context: localhost over http, or https with a certificate the
    // browser accepts.
    const served = await page.evaluate(() => ({ protocol: location.protocol, secure: window.isSecureContext }));
    check(served.protocol === protocol, `the page was served over ${served.protocol}, wanted ${protocol}`);
    check(served.secure, "the page is not a secure context");
    const tls = await tlsDetails(response);
    check(https === (tls !== null), `TLS details ${JSON.stringify(tls)} for a page served over ${protocol}`);
    console.log(
      `    page served over ${served.protocol} ${new URL(cpUrl).origin} (secure context` +
        (tls ? `, ${tls.protocol}, certificate for ${tls.subjectName} from "${tls.issuer}")` : ")"),
    );
    await expectView("view-enroll");
    await page.getByTestId("enroll-name").fill("Work laptop");
    await page.getByTestId("enroll-button").click();
    await expectSignedInAs(userId);
    await expectNotice("registered and you are signed in");
    check((await credentialsOn(laptop)).length === 1, "the laptop holds no new passkey");
  });

  await step("the list shows the one passkey", async () => {
    const names = await expectPasskeys(1);
    check(names[0].startsWith("Work laptop"), `listed ${JSON.stringify(names)}`);
  });

  // A second passkey lives on a second device: the laptop already holds one for this account
  // and (rightly) refuses another, since the server lists it in excludeCredentials. So a security
  // key is plugged in, and the laptop is left untouched while it answers.
  let securityKey;
  await step("add a second passkey on a security key, with another name", async () => {
    securityKey = await authenticator("usb");
    await cdp.send("WebAuthn.setAutomaticPresenceSimulation", { authenticatorId: laptop, enabled: false });
    await page.getByTestId("add-name").fill("Security key");
    await page.getByTestId("add-button").click();
    await expectNotice("Passkey added");
    await cdp.send("WebAuthn.setAutomaticPresenceSimulation", { authenticatorId: laptop, enabled: true });
    const names = await expectPasskeys(2);
    check(names.some((n) => n.startsWith("Security key")), `listed ${JSON.stringify(names)}`);
    check((await credentialsOn(securityKey)).length === 1, "the security key holds no passkey");
  });

  await step("remove one after confirming", async () => {
    const key = page.getByTestId("passkey").filter({ hasText: "Security key" });
    await key.getByTestId("remove-passkey").click();
    check(
      dialogs.length === 1 && dialogs[0].includes("Remove Security key"),
      `confirm said ${JSON.stringify(dialogs)}`,
    );
    await expectNotice("Passkey removed");
    const names = await expectPasskeys(1);
    check(names[0].startsWith("Work laptop"), `listed ${JSON.stringify(names)}`);
    // Its owner unplugs the key; sign-in below then has only the laptop to ask.
    await cdp.send("WebAuthn.removeVirtualAuthenticator", { authenticatorId: securityKey });
  });

  await step("removing the last passkey is refused with a clear message", async () => {
    await page.getByTestId("remove-passkey").click();
    check(dialogs.length === 2, "no confirmation was asked");
    const error = page.getByTestId("error");
    await error.waitFor({ state: "visible" });
    const message = (await error.textContent()).trim();
    check((await error.getAttribute("data-code")) === "LAST_PASSKEY", `error code ${await error.getAttribute("data-code")}: ${message}`);
    check(/only passkey/i.test(message) && /lock you out/i.test(message), `unclear refusal: "${message}"`);
    await expectPasskeys(1);
    check(await page.getByTestId("view-account").isVisible(), "the account view is gone");
  });

  await step("screenshot of the passkey page", async () => {
    await page.screenshot({ path: screenshotPath, fullPage: true });
  });

  await step("the server still holds the last passkey after a reload", async () => {
    await page.reload();
    await expectSignedInAs(userId);
    const names = await expectPasskeys(1);
    check(names[0].startsWith("Work laptop"), `listed ${JSON.stringify(names)}`);
  });

  await step("sign out", async () => {
    await page.getByTestId("signout-button").click();
    await expectView("view-signin");
    await expectNotice("signed out");
    const cookies = await context.cookies(cpUrl);
    check(!cookies.some((c) => c.name.endsWith("keygate_session")), "the session cookie is still set");
  });

  await step("signed out, the gateway refuses", async () => {
    const response = await page.goto(gatewayUrl);
    check(response.status() === 401, `gateway answered ${response.status()}: ${await response.text()}`);
  });

  await step("sign in again with the passkey (discoverable)", async () => {
    await page.goto(cpUrl);
    await expectView("view-signin");
    await page.getByTestId("signin-button").click();
    await expectSignedInAs(userId);
    await expectPasskeys(1);
    const cookie = (await context.cookies(cpUrl)).find((c) => c.name === cookieName);
    check(cookie, `no ${cookieName} cookie after sign-in`);
    check(cookie.httpOnly && cookie.sameSite === "Lax" && cookie.path === "/", `cookie is ${JSON.stringify({ ...cookie, value: "…" })}`);
    // Secure over https; over http on localhost it could not be (a Secure cookie is not sent
    // over http).
    check(cookie.secure === https, `cookie is ${JSON.stringify({ ...cookie, value: "…" })} over ${protocol}`);
  });

  await step("call the API through the gateway with the cookie", async () => {
    const echo = await gatewayEcho();
    const headers = echo.headers || {};
    check(headers["x-keygate-user-id"] === userId, `upstream saw x-keygate-user-id ${JSON.stringify(headers["x-keygate-user-id"])}`);
    check(/\S/.test(headers["x-keygate-session-id"] || ""), "upstream saw no x-keygate-session-id");
    check(!String(headers.cookie || "").includes("keygate_session"), "the session cookie reached the upstream");
    const proto = protocol.slice(0, -1);
    check(headers["x-forwarded-proto"] === proto, `upstream saw x-forwarded-proto ${JSON.stringify(headers["x-forwarded-proto"])}, wanted ${proto}`);
  });

  console.log(`passkeys.mjs: all steps passed in ${Date.now() - started} ms; screenshot ${screenshotPath}`);
} catch (error) {
  fail(error.message);
} finally {
  await browser.close().catch(() => {});
}
