// The signed-in user's passkeys: each with its name, the provider that holds it (name and icon),
// when it was created and last used, and whether it is synced; renamed in place, removed after a
// confirmation.

import { api } from "./api.js";
import { $, busy, formatTime, showNotice } from "./view.js";

/**
 * Shows `me` (`GET /v1/me/passkeys`). `account` is what the list needs from the page:
 * `reload()` fetches and shows the list again, `signedOut(notice)` shows the sign-in view.
 */
export function renderPasskeys(me, account) {
  $("account-user").textContent = me.userId;
  $("passkey-list").replaceChildren(...me.passkeys.map((passkey) => passkeyItem(passkey, me, account)));
}

function element(tag, className, testid) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (testid) node.dataset.testid = testid;
  return node;
}

function button(text, className, testid, type = "button") {
  const node = element("button", className, testid);
  node.type = type;
  node.textContent = text;
  return node;
}

function passkeyItem(passkey, me, account) {
  const item = element("li", "", "passkey");
  item.dataset.passkeyId = passkey.id;

  const name = element("div", "passkey-name", "passkey-name");
  name.textContent = passkey.name || "Unnamed passkey";
  if (passkey.id === me.currentPasskeyId) {
    const badge = element("span", "badge");
    badge.textContent = "signed in with this one";
    name.append(badge);
  }
  const meta = element("div", "passkey-meta", "passkey-meta");
  const kind = passkey.deviceType === "multi_device" ? "synced passkey" : "device-bound passkey";
  meta.textContent = "Created " + formatTime(passkey.created) + " · last used " + formatTime(passkey.lastUsed)
    + " · " + kind;
  const rename = renameForm(passkey, me, account, item, name);
  const text = element("div", "passkey-text");
  text.append(name, rename, ...providerLine(passkey), meta);

  const renameButton = button("Rename", "secondary", "rename-passkey");
  renameButton.addEventListener("click", () => {
    name.hidden = true;
    rename.hidden = false;
    renameButton.hidden = true;
    rename.elements.name.focus();
    rename.elements.name.select();
  });
  rename.addEventListener("reset", () => {
    name.hidden = false;
    renameButton.hidden = false;
  });
  const remove = button("Remove", "danger", "remove-passkey");
  remove.addEventListener("click", () => removePasskey(remove, passkey, account));
  const actions = element("div", "passkey-actions");
  actions.append(renameButton, remove);

  item.append(text, actions);
  return item;
}

/** The provider's icon (a data: URI from the server, when it has one) and name. */
function providerLine(passkey) {
  if (typeof passkey.provider !== "string") return [];
  const line = element("div", "passkey-provider", "passkey-provider");
  if (typeof passkey.providerIcon === "string" && passkey.providerIcon.startsWith("data:image/")) {
    const icon = element("img", "provider-icon", "passkey-provider-icon");
    icon.src = passkey.providerIcon;
    icon.alt = "";
    icon.width = 18;
    icon.height = 18;
    line.append(icon);
  }
  const label = element("span", "", "passkey-provider-name");
  label.textContent = passkey.provider;
  line.append(label);
  return [line];
}

/** The inline editor: Save sends `PATCH /v1/me/passkeys/{id}`; Cancel or Escape closes it. */
function renameForm(passkey, me, account, item, name) {
  const form = element("form", "rename row", "rename-form");
  form.hidden = true;
  const input = element("input", "", "rename-input");
  input.type = "text";
  input.name = "name";
  input.maxLength = 64;
  input.autocomplete = "off";
  // The value a reset (Cancel, Escape) puts back: the name as the server has it.
  input.defaultValue = passkey.name || "";
  input.setAttribute("aria-label", "New name for " + (passkey.name || "this unnamed passkey"));
  const save = button("Save", "", "rename-save", "submit");
  const cancel = button("Cancel", "secondary", "rename-cancel", "reset");
  form.append(input, save, cancel);
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape") form.reset();
  });
  form.addEventListener("reset", () => {
    form.hidden = true;
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(save, async () => {
      const renamed = await api("PATCH", "/v1/me/passkeys/" + encodeURIComponent(passkey.id), { name: input.value });
      item.replaceWith(passkeyItem(renamed.passkey, me, account));
      showNotice("Passkey renamed.");
    }, () => account.signedOut());
  });
  return form;
}

async function removePasskey(button, passkey, account) {
  const name = passkey.name || "this unnamed passkey";
  if (!confirm("Remove " + name + "? It will no longer sign you in, and every session it started ends.")) {
    return;
  }
  await busy(button, async () => {
    const removed = await api("DELETE", "/v1/me/passkeys/" + encodeURIComponent(passkey.id));
    if (removed.signedOut) {
      account.signedOut("Passkey removed. It was the one you signed in with, so you are signed out.");
      return;
    }
    // Showing the list again also tells the password manager which passkeys remain.
    await account.reload();
    showNotice("Passkey removed.");
  }, () => account.signedOut());
}
