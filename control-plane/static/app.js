// The self-service passkey page: enroll from a link, sign in, list, add and remove passkeys,
// sign out. Plain JavaScript, no build step. The session lives in an HttpOnly cookie that this
// script never sees; the API answers 401 when there is none.
"use strict";

const $ = (id) => document.getElementById(id);

// --- base64url <-> ArrayBuffer -------------------------------------------------------------

function fromBase64url(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

function toBase64url(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The server's creation options (binary fields base64url) as the browser wants them. */
function creationOptions(json) {
  const options = { ...json, challenge: fromBase64url(json.challenge) };
  options.user = { ...json.user, id: fromBase64url(json.user.id) };
  if (json.excludeCredentials) {
    options.excludeCredentials = json.excludeCredentials.map((c) => ({ ...c, id: fromBase64url(c.id) }));
  }
  return options;
}

/** The server's request options as the browser wants them. */
function requestOptions(json) {
  const options = { ...json, challenge: fromBase64url(json.challenge) };
  if (json.allowCredentials) {
    options.allowCredentials = json.allowCredentials.map((c) => ({ ...c, id: fromBase64url(c.id) }));
  }
  return options;
}

/** A registration result as JSON for the server. */
function registrationJson(credential) {
  const response = credential.response;
  return {
    id: credential.id,
    rawId: toBase64url(credential.rawId),
    type: credential.type,
    response: {
      attestationObject: toBase64url(response.attestationObject),
      clientDataJSON: toBase64url(response.clientDataJSON),
      transports: typeof response.getTransports === "function" ? response.getTransports() : undefined,
    },
    extensions: credential.getClientExtensionResults(),
  };
}

/** An authentication result as JSON for the server. */
function assertionJson(credential) {
  const response = credential.response;
  return {
    id: credential.id,
    rawId: toBase64url(credential.rawId),
    type: credential.type,
    response: {
      authenticatorData: toBase64url(response.authenticatorData),
      clientDataJSON: toBase64url(response.clientDataJSON),
      signature: toBase64url(response.signature),
      userHandle: response.userHandle ? toBase64url(response.userHandle) : null,
    },
    extensions: credential.getClientExtensionResults(),
  };
}

// --- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!response.ok) {
    const error = (json && json.error) || {};
    throw new ApiError(response.status, error.code || "HTTP_" + response.status,
      error.message || "The server answered " + response.status + ".");
  }
  return json;
}

// --- what the page shows -------------------------------------------------------------------

const views = ["view-loading", "view-enroll", "view-signin", "view-account"];

function show(view) {
  for (const id of views) $(id).hidden = id !== view;
}

function showError(error) {
  const box = $("error");
  if (!error) { box.hidden = true; box.textContent = ""; return; }
  let message = error.message || String(error);
  if (error.name === "NotAllowedError") {
    message = "The passkey prompt was closed or timed out. Nothing was changed.";
  } else if (error.name === "InvalidStateError") {
    message = "This authenticator already holds a passkey for this account.";
  }
  box.textContent = message;
  box.dataset.code = error.code || error.name || "";
  box.hidden = false;
}

function showNotice(text) {
  const box = $("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

function formatTime(value) {
  if (!value) return "never";
  const date = new Date(value);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

async function busy(button, work) {
  showError(null);
  showNotice(null);
  button.disabled = true;
  try {
    await work();
  } catch (error) {
    showError(error);
    if (error instanceof ApiError && error.status === 401 && !$("view-account").hidden) {
      show("view-signin");
    }
  } finally {
    button.disabled = false;
  }
}

function renderPasskeys(me) {
  $("account-user").textContent = me.userId;
  const list = $("passkey-list");
  list.replaceChildren();
  for (const passkey of me.passkeys) {
    const item = document.createElement("li");
    item.dataset.passkeyId = passkey.id;
    item.dataset.testid = "passkey";

    const text = document.createElement("div");
    const name = document.createElement("div");
    name.className = "passkey-name";
    name.dataset.testid = "passkey-name";
    name.textContent = passkey.name || "Unnamed passkey";
    if (passkey.id === me.currentPasskeyId) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "signed in with this one";
      name.append(badge);
    }
    const meta = document.createElement("div");
    meta.className = "passkey-meta";
    meta.dataset.testid = "passkey-meta";
    const kind = passkey.deviceType === "multi_device" ? "synced passkey" : "device-bound passkey";
    meta.textContent = "Created " + formatTime(passkey.created) + " · last used "
      + formatTime(passkey.lastUsed) + " · " + kind;
    text.append(name, meta);

    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "danger";
    remove.dataset.testid = "remove-passkey";
    remove.textContent = "Remove";
    remove.addEventListener("click", () => removePasskey(remove, passkey));

    item.append(text, remove);
    list.append(item);
  }
}

async function loadAccount() {
  const me = await api("GET", "/v1/me/passkeys");
  renderPasskeys(me);
  show("view-account");
}

// --- actions -------------------------------------------------------------------------------

async function enroll(token) {
  const begun = await api("POST", "/v1/enroll/begin", { token, name: $("enroll-name").value });
  const credential = await navigator.credentials.create({ publicKey: creationOptions(begun.publicKey) });
  await api("POST", "/v1/enroll/finish", { ceremonyId: begun.ceremonyId, credential: registrationJson(credential) });
  // The link is spent: forget it, so a reload does not offer it again.
  history.replaceState(null, "", location.pathname);
  await loadAccount();
  showNotice("Your passkey is registered and you are signed in.");
}

async function signIn() {
  const begun = await api("POST", "/v1/login/begin", {});
  const credential = await navigator.credentials.get({ publicKey: requestOptions(begun.publicKey) });
  await api("POST", "/v1/login/finish", { ceremonyId: begun.ceremonyId, credential: assertionJson(credential) });
  await loadAccount();
}

async function addPasskey() {
  const begun = await api("POST", "/v1/me/passkeys/begin", { name: $("add-name").value });
  const credential = await navigator.credentials.create({ publicKey: creationOptions(begun.publicKey) });
  await api("POST", "/v1/me/passkeys/finish", { ceremonyId: begun.ceremonyId, credential: registrationJson(credential) });
  $("add-name").value = "";
  await loadAccount();
  showNotice("Passkey added.");
}

async function removePasskey(button, passkey) {
  const name = passkey.name || "this unnamed passkey";
  if (!confirm("Remove " + name + "? It will no longer sign you in, and every session it started ends.")) {
    return;
  }
  await busy(button, async () => {
    const removed = await api("DELETE", "/v1/me/passkeys/" + encodeURIComponent(passkey.id));
    if (removed.signedOut) {
      show("view-signin");
      showNotice("Passkey removed. It was the one you signed in with, so you are signed out.");
      return;
    }
    await loadAccount();
    showNotice("Passkey removed.");
  });
}

async function signOut() {
  try {
    await api("POST", "/v1/logout");
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) throw error;
  }
  show("view-signin");
  showNotice("You are signed out.");
}

// --- start ---------------------------------------------------------------------------------

async function start() {
  if (!window.PublicKeyCredential) {
    showError(new Error("This browser does not support passkeys."));
  }
  const match = /^#enroll=([A-Za-z0-9_-]+)$/.exec(location.hash);
  const token = match ? match[1] : null;
  $("enroll-button").addEventListener("click", (event) => busy(event.currentTarget, () => enroll(token)));
  $("signin-button").addEventListener("click", (event) => busy(event.currentTarget, signIn));
  $("add-button").addEventListener("click", (event) => busy(event.currentTarget, addPasskey));
  $("signout-button").addEventListener("click", (event) => busy(event.currentTarget, signOut));
  if (token) {
    show("view-enroll");
    return;
  }
  try {
    await loadAccount();
  } catch (error) {
    show("view-signin");
    if (!(error instanceof ApiError && error.status === 401)) showError(error);
  }
}

start();
