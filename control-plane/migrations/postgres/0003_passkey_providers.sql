-- Each passkey's authenticator model (DESIGN.md, "Passkeys beyond the basics"): the AAGUID of
-- its registration, 16 bytes; NULL for passkeys registered before. The same schema as SQLite's
-- migration 9.
ALTER TABLE passkeys ADD COLUMN aaguid BYTEA;
