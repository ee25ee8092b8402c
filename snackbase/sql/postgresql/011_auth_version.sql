-- PostgreSQL version of ../011_auth_version.sql: the same counter, moved by the same changes, through
-- one trigger function.
CREATE TABLE auth_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);

INSERT INTO auth_version (id, version) VALUES (1, 0);

CREATE FUNCTION auth_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE auth_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END $$;

CREATE TRIGGER auth_version_session_update AFTER UPDATE ON sessions FOR EACH ROW
WHEN (NEW.revoked_at IS DISTINCT FROM OLD.revoked_at OR NEW.expires_at < OLD.expires_at
      OR NEW.user_id IS DISTINCT FROM OLD.user_id)
EXECUTE FUNCTION auth_version_bump();

CREATE TRIGGER auth_version_session_delete AFTER DELETE ON sessions FOR EACH ROW
EXECUTE FUNCTION auth_version_bump();

CREATE TRIGGER auth_version_user_update AFTER UPDATE OF account_id, email, role, is_active, id ON users
FOR EACH ROW EXECUTE FUNCTION auth_version_bump();

CREATE TRIGGER auth_version_user_delete AFTER DELETE ON users FOR EACH ROW
EXECUTE FUNCTION auth_version_bump();

CREATE TRIGGER auth_version_member_change AFTER INSERT OR UPDATE OR DELETE ON group_members FOR EACH ROW
EXECUTE FUNCTION auth_version_bump();

CREATE TRIGGER auth_version_group_update AFTER UPDATE OF id, name, account_id ON groups FOR EACH ROW
EXECUTE FUNCTION auth_version_bump();

CREATE TRIGGER auth_version_group_delete AFTER DELETE ON groups FOR EACH ROW
EXECUTE FUNCTION auth_version_bump();
