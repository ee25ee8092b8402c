-- A counter that moves whenever the answer to "is this access token's session still good, and who is
-- its user?" may have changed: a session revoked, shortened or deleted; a user's account, email,
-- role or activity changed, or the user deleted; a group membership or group changed (pii_access).
-- Each process keeps the sessions it verified while the counter stands still (snackbase/auth.py).
-- Triggers, not application code, move it: no write path can forget to, including cascades.
CREATE TABLE auth_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
) STRICT;

INSERT INTO auth_version (id, version) VALUES (1, 0);

CREATE TRIGGER auth_version_session_update AFTER UPDATE ON sessions
WHEN NEW.revoked_at IS NOT OLD.revoked_at OR NEW.expires_at < OLD.expires_at OR NEW.user_id IS NOT OLD.user_id
BEGIN
    UPDATE auth_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER auth_version_session_delete AFTER DELETE ON sessions
BEGIN
    UPDATE auth_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER auth_version_user_update AFTER UPDATE OF account_id, email, role, is_active, id ON users
BEGIN
    UPDATE auth_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER auth_version_user_delete AFTER DELETE ON users
BEGIN
    UPDATE auth_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER auth_version_member_insert AFTER INSERT ON group_members
BEGIN
    UPDATE auth_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER auth_version_member_update AFTER UPDATE ON group_members
BEGIN
    UPDATE auth_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER auth_version_member_delete AFTER DELETE ON group_members
BEGIN
    UPDATE auth_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER auth_version_group_update AFTER UPDATE OF id, name, account_id ON groups
BEGIN
    UPDATE auth_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER auth_version_group_delete AFTER DELETE ON groups
BEGIN
    UPDATE auth_version SET version = version + 1 WHERE id = 1;
END;
