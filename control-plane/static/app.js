// The self-service passkey page, no build step: enroll from a link, sign in (from the username
// field's autofill where the browser offers passkeys there, and always with a button), see and
// manage one's passkeys, sign out. This is the entry module; the others are
//   api.js         the JSON API and its errors
//   view.js        which view shows, the error and notice boxes
//   ceremonies.js  the WebAuthn ceremonies (enroll, add, sign in)
//   list.js        the passkey list: provider, rename, remove
//   signals.js     the WebAuthn Signal API (tell the password manager what still works)
// The session lives in an HttpOnly cookie that this script never sees; the API answers 401 when
// there is none.

import { ApiError, api } from "./api.js";
import * as ceremonies from "./ceremonies.js";
import { renderPasskeys } from "./list.js";
import * as signals from "./signals.js";
import { $, busy, isShown, show, showError, showNotice } from "./view.js";

/** What the passkey list may ask of the page. */
const account = { reload: loadAccount, signedOut: showSignIn };

/** The autofill sign-in waiting for the user to pick a passkey, if one is. */
let autofill = null;

async function loadAccount() {
  const me = await api("GET", "/v1/me/passkeys");
  stopAutofill();
  renderPasskeys(me, account);
  show("view-account");
  // The list is the server's word on which of the user's passkeys still work: the password
  // manager may forget the others (removed here, or revoked by an operator), and should show
  // the user's current name.
  signals.acceptedCredentials(me);
  signals.currentUserDetails(me);
}

/** Shows the sign-in view, with `notice` if given, and offers passkeys in autofill. */
function showSignIn(notice) {
  show("view-signin");
  if (notice) showNotice(notice);
  offerAutofill();
}

/** How the last sign-in happened ("autofill" or "button"), for whoever watches the page. */
async function signedIn(via) {
  document.body.dataset.signedInVia = via;
  await loadAccount();
}

/**
 * Where the browser offers passkeys in autofill, shows the username field and starts a
 * conditional request that waits until the user picks a passkey there (or the button, or a
 * sign-in, stops it). Elsewhere only the button is shown.
 */
async function offerAutofill() {
  stopAutofill();
  const offered = await ceremonies.autofillAvailable();
  $("signin-autofill").hidden = !offered;
  $("signin-username").hidden = !offered;
  $("view-signin").dataset.autofill = offered ? "offered" : "unavailable";
  if (!offered || !isShown("view-signin")) return;
  stopAutofill();
  const controller = new AbortController();
  autofill = controller;
  try {
    await ceremonies.signIn({ autofill: true, signal: controller.signal });
  } catch (error) {
    if (autofill === controller) autofill = null;
    // Stopped on purpose, or nothing picked (a browser with no passkey for this site may end
    // the request at once): the button is still there.
    if (controller.signal.aborted || error.name === "NotAllowedError" || error.name === "AbortError") return;
    showError(error);
    return;
  }
  if (autofill === controller) autofill = null;
  showError(null);
  showNotice(null);
  await signedIn("autofill").catch(showError);
}

function stopAutofill() {
  if (autofill) {
    autofill.abort();
    autofill = null;
  }
}

// --- actions -------------------------------------------------------------------------------

async function enroll(token) {
  await ceremonies.enroll(token, $("enroll-name").value);
  // The link is spent: forget it, so a reload does not offer it again.
  history.replaceState(null, "", location.pathname);
  await loadAccount();
  showNotice("Your passkey is registered and you are signed in.");
}

async function signInWithButton() {
  // A browser runs one passkey request at a time: the button's replaces autofill's.
  stopAutofill();
  await ceremonies.signIn();
  await signedIn("button");
}

async function addPasskey() {
  await ceremonies.addPasskey($("add-name").value);
  $("add-name").value = "";
  await loadAccount();
  showNotice("Passkey added.");
}

async function signOut() {
  try {
    await api("POST", "/v1/logout");
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) throw error;
  }
  showSignIn("You are signed out.");
}

/** Where a 401 from an account action takes the user: to sign in again. */
function sessionEnded() {
  if (isShown("view-account")) showSignIn();
}

/** What to tell someone whose session cookie the server refused at load. */
function endedSessionNotice(error) {
  if (error.code === "REVOKED") return "Your session was ended (it, or the passkey it came from, was revoked). Sign in again.";
  if (error.code === "EXPIRED") return "Your session has expired. Sign in again.";
  return null;
}

// --- start ---------------------------------------------------------------------------------

async function start() {
  if (!window.PublicKeyCredential) {
    showError(new Error("This browser does not support passkeys."));
  }
  const match = /^#enroll=([A-Za-z0-9_-]+)$/.exec(location.hash);
  const token = match ? match[1] : null;
  $("enroll-button").addEventListener("click", (event) => busy(event.currentTarget, () => enroll(token)));
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("signin-button"), signInWithButton);
  });
  $("add-button").addEventListener("click", (event) => busy(event.currentTarget, addPasskey, sessionEnded));
  $("signout-button").addEventListener("click", (event) => busy(event.currentTarget, signOut, sessionEnded));
  if (token) {
    show("view-enroll");
    return;
  }
  try {
    await loadAccount();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      showSignIn(endedSessionNotice(error));
    } else {
      showSignIn();
      showError(error);
    }
  }
}

start();
