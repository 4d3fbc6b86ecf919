// The WebAuthn ceremonies against the control plane: enroll from a link, add a passkey while
// signed in, and sign in (from a button, or from the username field's autofill). Each one is
// begin → the browser's navigator.credentials call → finish; the server's options and the
// browser's answer cross the wire as JSON with binary fields in base64url.

import { api } from "./api.js";
import { isUnknownCredential, unknownCredential } from "./signals.js";

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

/** Registers a passkey with an enrollment link's token; signs the user in. */
export async function enroll(token, name) {
  const begun = await api("POST", "/v1/enroll/begin", { token, name });
  const credential = await navigator.credentials.create({ publicKey: creationOptions(begun.publicKey) });
  return api("POST", "/v1/enroll/finish", { ceremonyId: begun.ceremonyId, credential: registrationJson(credential) });
}

/** Registers another passkey for the signed-in user. */
export async function addPasskey(name) {
  const begun = await api("POST", "/v1/me/passkeys/begin", { name });
  const credential = await navigator.credentials.create({ publicKey: creationOptions(begun.publicKey) });
  return api("POST", "/v1/me/passkeys/finish", { ceremonyId: begun.ceremonyId, credential: registrationJson(credential) });
}

/** Whether the browser offers passkeys in a field's autofill (conditional mediation). */
export async function autofillAvailable() {
  try {
    return (
      typeof window.PublicKeyCredential?.isConditionalMediationAvailable === "function" &&
      (await PublicKeyCredential.isConditionalMediationAvailable()) === true
    );
  } catch (_) {
    return false;
  }
}

/**
 * Signs in with any passkey of this site (discoverable: no user id). With `autofill`, the request
 * waits for the user to pick a passkey from the username field's suggestions until `signal`
 * aborts it; otherwise the browser asks at once. A passkey the server does not know is reported
 * to the password manager before the refusal is thrown.
 */
export async function signIn({ autofill = false, signal } = {}) {
  const begun = await api("POST", "/v1/login/begin", {});
  signal?.throwIfAborted();
  const credential = await navigator.credentials.get({
    publicKey: requestOptions(begun.publicKey),
    ...(autofill ? { mediation: "conditional" } : {}),
    ...(signal ? { signal } : {}),
  });
  try {
    return await api("POST", "/v1/login/finish", { ceremonyId: begun.ceremonyId, credential: assertionJson(credential) });
  } catch (error) {
    if (isUnknownCredential(error)) await unknownCredential(begun.publicKey.rpId, credential.id);
    throw error;
  }
}
