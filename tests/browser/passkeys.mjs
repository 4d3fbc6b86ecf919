// The passkey page in a real browser: headless Debian Chromium driven by playwright-core, with a
// CDP virtual authenticator (CTAP2, internal, resident keys, user verification) standing in for
// the device's screen lock. Run by tests/browser.rs against an in-process control plane, gateway
// and echo upstream; it can also be run by hand against `keygate dev` with the same variables.
//
// Besides enrolling, listing, adding, removing, signing out and in, it renames a passkey, checks
// the provider shown beside each one, signs in from the username field's autofill (conditional
// mediation) where Chromium offers it and with the button otherwise, and watches the WebAuthn
// Signal API calls the page makes: a spy wraps PublicKeyCredential.signal* before any page
// script runs (defining them where the browser lacks them; the virtual authenticator does not
// act on them anyway) and records their arguments.
//
//   KEYGATE_ENROLL_URL   the enrollment link, http(s)://localhost:<cp port>/#enroll=TOKEN (required)
//   KEYGATE_USER_ID      the user the link enrolls (required)
//   KEYGATE_GATEWAY_URL  a gateway URL on a route that allows sessions (required)
//   KEYGATE_SCREENSHOT   where to save the PNG of the passkey page (required)
//   KEYGATE_PROVIDER     the provider name the control plane gives the AAGUID of Chromium's
//                        virtual platform authenticator (default "Unknown authenticator"); its
//                        virtual security key reports the all-zero AAGUID, which is always
//                        "Unknown authenticator"
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
const UNKNOWN_PROVIDER = "Unknown authenticator";
const laptopProvider = process.env.KEYGATE_PROVIDER || UNKNOWN_PROVIDER;
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

/** Waits for the error box to show a refusal with `code`; returns the message shown. */
async function expectError(code) {
  const error = page.getByTestId("error");
  try {
    await page.waitForFunction(
      (wanted) => {
        const box = document.querySelector('[data-testid="error"]');
        return !box.hidden && box.dataset.code === wanted;
      },
      code,
      { timeout: STEP_TIMEOUT_MS },
    );
  } catch {
    const shown = (await error.isVisible())
      ? `${await error.getAttribute("data-code")}: ${(await error.textContent()).trim()}`
      : "(hidden)";
    throw new Error(`the error box shows ${shown}, wanted code ${code}`);
  }
  return (await error.textContent()).trim();
}

/** `value` as JSON with object keys sorted, to compare what the page sent with what is wanted. */
function canonical(value) {
  return JSON.stringify(value, (_, v) =>
    v && typeof v === "object" && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort()) : v,
  );
}

/** The Signal API calls of `method` the page made since it loaded, as the spy recorded them. */
async function signalCalls(method) {
  const calls = await page.evaluate(() => window.__keygateSignals || []);
  return calls.filter((call) => call.method === method).map((call) => call.options);
}

/** Waits until the page has called `PublicKeyCredential[method](wanted)` since it loaded. */
async function expectSignal(method, wanted) {
  try {
    await page.waitForFunction(
      ([method, wanted]) =>
        (window.__keygateSignals || []).some((call) => call.method === method && call.canonical === wanted),
      [method, canonical(wanted)],
      { timeout: STEP_TIMEOUT_MS },
    );
  } catch {
    throw new Error(
      `the page did not call ${method}(${canonical(wanted)}); it called it with ` +
        JSON.stringify(await signalCalls(method)),
    );
  }
}

/** CDP gives binary fields in base64; WebAuthn's JSON and keygate's API use base64url. */
const base64url = (base64) => Buffer.from(base64, "base64").toString("base64url");

/**
 * The provider shown beside each listed passkey (name, and whether its icon loaded), checked
 * against what `GET /v1/me/passkeys` says, and against `wanted`: the provider of each passkey
 * by a prefix of its name.
 */
async function expectProviders(wanted) {
  const me = await page.evaluate(async () => (await fetch("/v1/me/passkeys", { credentials: "same-origin" })).json());
  check(Array.isArray(me.passkeys), `GET /v1/me/passkeys answered ${JSON.stringify(me)}`);
  // Icons are data: URIs the page's CSP must allow; wait until each has loaded or failed.
  await page.waitForFunction(() =>
    [...document.querySelectorAll('[data-testid="passkey-provider-icon"]')].every((icon) => icon.complete),
  );
  const shown = await page.evaluate(() =>
    [...document.querySelectorAll('[data-testid="passkey-list"] [data-testid="passkey"]')].map((item) => {
      const icon = item.querySelector('[data-testid="passkey-provider-icon"]');
      return {
        name: item.querySelector('[data-testid="passkey-provider-name"]')?.textContent.trim() ?? null,
        icon: icon ? icon.naturalWidth > 0 : null,
      };
    }),
  );
  const said = me.passkeys.map((passkey) => ({
    name: passkey.provider,
    icon: typeof passkey.providerIcon === "string" ? true : null,
  }));
  check(canonical(shown) === canonical(said), `the page shows providers ${JSON.stringify(shown)}, the API says ${JSON.stringify(said)} (true: an icon that loaded)`);
  for (const passkey of me.passkeys) {
    const provider = Object.entries(wanted).find(([prefix]) => passkey.name.startsWith(prefix))?.[1];
    check(passkey.provider === provider, `passkey "${passkey.name}" has provider "${passkey.provider}", wanted "${provider}"`);
  }
  return me;
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
  // The spy on the Signal API, installed before any script of each page load runs.
  await context.addInitScript(() => {
    const calls = [];
    Object.defineProperty(window, "__keygateSignals", { value: calls });
    const credentials = window.PublicKeyCredential;
    if (!credentials) return;
    const canonical = (value) =>
      JSON.stringify(value, (_, v) =>
        v && typeof v === "object" && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort()) : v,
      );
    for (const method of ["signalAllAcceptedCredentials", "signalUnknownCredential", "signalCurrentUserDetails"]) {
      const original = credentials[method];
      credentials[method] = function (options) {
        calls.push({ method, options: JSON.parse(JSON.stringify(options)), canonical: canonical(options) });
        return typeof original === "function" ? original.call(credentials, options) : Promise.resolve();
      };
    }
  });
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

  const rpId = new URL(cpUrl).hostname;
  // The user handle the authenticators keep with each of this user's passkeys (the WebAuthn
  // user.id), as the Signal API wants it.
  let userHandle;
  let laptopCredential;

  await step("the list shows the one passkey and its provider", async () => {
    const names = await expectPasskeys(1);
    check(names[0].startsWith("Work laptop"), `listed ${JSON.stringify(names)}`);
    await expectProviders({ "Work laptop": laptopProvider });
    [laptopCredential] = await credentialsOn(laptop);
    userHandle = base64url(laptopCredential.userHandle);
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
    await expectProviders({ "Work laptop": laptopProvider, "Security key": UNKNOWN_PROVIDER });
  });

  await step("rename refuses a bad name with the server's message, then renames", async () => {
    const key = () => page.getByTestId("passkey").filter({ hasText: /Security key|Blue key/ });
    await key().getByTestId("rename-passkey").click();
    const input = key().getByTestId("rename-input");
    // Cancel (Escape) leaves the name as it was.
    await input.fill("Not saved");
    await input.press("Escape");
    check(!(await input.isVisible()), "Escape left the rename field open");
    check((await expectPasskeys(2)).some((n) => n.startsWith("Security key")), "Escape changed the name");
    // A tab is a control character: the server refuses the name, and the page shows why.
    await key().getByTestId("rename-passkey").click();
    await input.fill("Blue\tkey");
    await key().getByTestId("rename-save").click();
    const message = await expectError("INVALID_NAME");
    check(/control characters/.test(message), `the refusal shown is "${message}"`);
    check(await input.isVisible(), "the rename field closed on a refusal");
    await input.fill("Blue key");
    await key().getByTestId("rename-save").click();
    await expectNotice("Passkey renamed");
    const names = await expectPasskeys(2);
    check(names.some((n) => n.startsWith("Blue key")) && !names.some((n) => n.startsWith("Security key")), `listed ${JSON.stringify(names)}`);
    check(await page.getByTestId("error").isHidden(), "the old refusal is still shown");
  });

  await step("the new name is the server's (after a reload)", async () => {
    await page.reload();
    await expectSignedInAs(userId);
    const names = await expectPasskeys(2);
    check(names.some((n) => n.startsWith("Blue key")), `listed ${JSON.stringify(names)}`);
    await expectProviders({ "Work laptop": laptopProvider, "Blue key": UNKNOWN_PROVIDER });
  });

  await step("screenshot of the passkey page", async () => {
    await page.screenshot({ path: screenshotPath, fullPage: true });
  });

  // The key's passkey, kept to present it again once the server has forgotten it.
  let keyCredential;
  await step("remove one after confirming; the page tells the password manager which remain", async () => {
    [keyCredential] = await credentialsOn(securityKey);
    const key = page.getByTestId("passkey").filter({ hasText: "Blue key" });
    await key.getByTestId("remove-passkey").click();
    check(
      dialogs.length === 1 && dialogs[0].includes("Remove Blue key"),
      `confirm said ${JSON.stringify(dialogs)}`,
    );
    await expectNotice("Passkey removed");
    const names = await expectPasskeys(1);
    check(names[0].startsWith("Work laptop"), `listed ${JSON.stringify(names)}`);
    await expectSignal("signalAllAcceptedCredentials", {
      rpId,
      userId: userHandle,
      allAcceptedCredentialIds: [base64url(laptopCredential.credentialId)],
    });
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

  await step("the server still holds the last passkey after a reload", async () => {
    await page.reload();
    await expectSignedInAs(userId);
    const names = await expectPasskeys(1);
    check(names[0].startsWith("Work laptop"), `listed ${JSON.stringify(names)}`);
  });

  // Whether this Chromium offers passkeys in autofill; the page must agree with it.
  let autofill;
  await step("sign out", async () => {
    // A virtual authenticator answers an autofill request at once (there is no user to pick a
    // passkey), so the laptop is emptied first: otherwise the sign-in view would sign the user
    // straight back in. Its passkey comes back below.
    await cdp.send("WebAuthn.clearCredentials", { authenticatorId: laptop });
    await page.getByTestId("signout-button").click();
    await expectView("view-signin");
    await expectNotice("signed out");
    const cookies = await context.cookies(cpUrl);
    check(!cookies.some((c) => c.name.endsWith("keygate_session")), "the session cookie is still set");
    autofill = await page.evaluate(async () => await PublicKeyCredential.isConditionalMediationAvailable());
    const offered = autofill ? "offered" : "unavailable";
    await page.waitForFunction(
      (wanted) => document.querySelector('[data-testid="view-signin"]').dataset.autofill === wanted,
      offered,
    );
    const field = page.getByTestId("signin-username");
    check((await field.isVisible()) === autofill, `username field visible: ${!autofill}, autofill ${offered}`);
    const tokens = ((await field.getAttribute("autocomplete")) || "").split(/\s+/);
    check(tokens.includes("username") && tokens.includes("webauthn"), `autocomplete="${tokens.join(" ")}"`);
    check(await page.getByTestId("signin-button").isVisible(), "no sign-in button");
    console.log(`    conditional mediation (passkeys in autofill): ${offered}`);
  });

  await step("signed out, the gateway refuses", async () => {
    const response = await page.goto(gatewayUrl);
    check(response.status() === 401, `gateway answered ${response.status()}: ${await response.text()}`);
  });

  await step("a sign-in with the removed passkey is refused and reported unknown", async () => {
    // The removed passkey is still in a password manager: the laptop's, this time.
    await cdp.send("WebAuthn.addCredential", { authenticatorId: laptop, credential: keyCredential });
    await page.goto(cpUrl);
    // With autofill the page's waiting request gets the passkey by itself; otherwise the
    // button asks for one.
    if (!autofill) await page.getByTestId("signin-button").click();
    const message = await expectError("AUTHENTICATION_FAILED");
    check(/not registered/.test(message), `the refusal shown is "${message}"`);
    await expectSignal("signalUnknownCredential", { rpId, credentialId: base64url(keyCredential.credentialId) });
    check((await signalCalls("signalAllAcceptedCredentials")).length === 0, "a refused sign-in listed accepted passkeys");
    check(await page.getByTestId("view-signin").isVisible(), "the sign-in view is gone");
    await cdp.send("WebAuthn.clearCredentials", { authenticatorId: laptop });
  });

  await step("sign in again with the passkey (discoverable) from the button", async () => {
    await cdp.send("WebAuthn.addCredential", { authenticatorId: laptop, credential: laptopCredential });
    await page.getByTestId("signin-button").click();
    await expectSignedInAs(userId);
    await expectPasskeys(1);
    const via = await page.evaluate(() => document.body.dataset.signedInVia);
    check(via === "button", `signed in via ${via}`);
    await expectSignal("signalAllAcceptedCredentials", {
      rpId,
      userId: userHandle,
      allAcceptedCredentialIds: [base64url(laptopCredential.credentialId)],
    });
    await expectSignal("signalCurrentUserDetails", { rpId, userId: userHandle, name: userId, displayName: userId });
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

  await step("sign in from autofill where offered (the button otherwise)", async () => {
    // A new browser session: no cookie, the passkey still on the laptop.
    await context.clearCookies();
    await page.goto(cpUrl);
    // With autofill nothing is clicked: the page's waiting request gets the laptop's passkey.
    if (!autofill) {
      await expectView("view-signin");
      await page.getByTestId("signin-button").click();
    }
    await expectSignedInAs(userId);
    const via = await page.evaluate(() => document.body.dataset.signedInVia);
    const wanted = autofill ? "autofill" : "button";
    check(via === wanted, `signed in via ${via}, wanted ${wanted}`);
    await expectSignal("signalAllAcceptedCredentials", {
      rpId,
      userId: userHandle,
      allAcceptedCredentialIds: [base64url(laptopCredential.credentialId)],
    });
    check((await context.cookies(cpUrl)).some((c) => c.name === cookieName), `no ${cookieName} cookie after sign-in`);
    console.log(`    signed in via ${via}`);
  });

  console.log(`passkeys.mjs: all steps passed in ${Date.now() - started} ms; screenshot ${screenshotPath}`);
} catch (error) {
  fail(error.message);
} finally {
  await browser.close().catch(() => {});
}
