-- User profile fields (issue 19): each account defines its own profile fields for its users, who may
-- see them (a view rule over the profiles) and which fields (field access); each user's values are
-- one JSON object. Kept apart from `users`, so the auth tables stay as they are.
CREATE TABLE profile_schemas (
    account_id TEXT PRIMARY KEY NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- {"fields": [field, ...], "view_rule": text or null, "field_access": {"view": [...], "update": [...]}}
    definition TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE user_profiles (
    user_id TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    data TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;
