// The WebAuthn Signal API: telling the user's password manager which of this site's passkeys
// still work, so it can drop the dead ones instead of offering them forever. Each call is
// feature-detected and does nothing where the browser lacks it; a failure is only logged, since
// the page works the same without it.

/**
 * The server's words for a sign-in with a passkey it does not know (never registered, removed or
 * revoked). The same code, AUTHENTICATION_FAILED, also means "the signature does not verify";
 * only the unknown passkey may be reported, or the password manager would drop a good one.
 */
const NOT_REGISTERED = "not registered";

function available(method) {
  return typeof window.PublicKeyCredential?.[method] === "function";
}

async function signal(method, options) {
  try {
    await PublicKeyCredential[method](options);
  } catch (error) {
    console.info(`${method} did not go through: ${error.name}: ${error.message}`);
  }
}

/** Whether a refused sign-in said that its passkey is not registered here. */
export function isUnknownCredential(error) {
  return error?.code === "AUTHENTICATION_FAILED" && String(error.message).includes(NOT_REGISTERED);
}

/** After a sign-in refused because the server does not know `credentialId`. */
export function unknownCredential(rpId, credentialId) {
  if (!available("signalUnknownCredential") || !rpId || !credentialId) return;
  return signal("signalUnknownCredential", { rpId, credentialId });
}

/**
 * Every passkey the server accepts for the signed-in user (`me` is `GET /v1/me/passkeys`), so
 * the password manager can forget the user's others: removed on this page or revoked by an
 * operator. A list missing any id is not sent, as it would make good passkeys disappear.
 */
export function acceptedCredentials(me) {
  if (!available("signalAllAcceptedCredentials") || !me.rpId || !me.userHandle) return;
  const ids = me.passkeys.map((passkey) => passkey.credentialId);
  if (ids.some((id) => typeof id !== "string" || id === "")) return;
  return signal("signalAllAcceptedCredentials", {
    rpId: me.rpId,
    userId: me.userHandle,
    allAcceptedCredentialIds: ids,
  });
}

/**
 * The user's name as the password manager should show it beside their passkeys. keygate names a
 * passkey's user by the user id (there is no separate display name to rename), so this is sent
 * whenever the page learns who is signed in, and corrects a stale name kept by the provider.
 */
export function currentUserDetails(me) {
  if (!available("signalCurrentUserDetails") || !me.rpId || !me.userHandle) return;
  return signal("signalCurrentUserDetails", {
    rpId: me.rpId,
    userId: me.userHandle,
    name: me.userId,
    displayName: me.userId,
  });
}
