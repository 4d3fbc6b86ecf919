// What the page shows: one view at a time (loading, enroll, sign in, account), an error box and a
// notice box. Every other module changes the screen through these few functions.

import { ApiError } from "./api.js";

export const $ = (id) => document.getElementById(id);

const views = ["view-loading", "view-enroll", "view-signin", "view-account"];

export function show(view) {
  for (const id of views) $(id).hidden = id !== view;
}

export function isShown(view) {
  return !$(view).hidden;
}

/** Shows `error` (an ApiError's message comes from the server's JSON), or hides the box. */
export function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    delete box.dataset.code;
    return;
  }
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

export function showNotice(text) {
  const box = $("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

export function formatTime(value) {
  if (!value) return "never";
  return new Date(value).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/**
 * Runs `work` for a button: clears old messages, disables the button meanwhile, and shows what
 * went wrong. `onSignedOut` runs when the server answers 401 (the session ended meanwhile).
 */
export async function busy(button, work, onSignedOut) {
  showError(null);
  showNotice(null);
  button.disabled = true;
  try {
    await work();
  } catch (error) {
    showError(error);
    if (error instanceof ApiError && error.status === 401 && onSignedOut) onSignedOut();
  } finally {
    button.disabled = false;
  }
}
