-- SQLite's built-in functions that the shared SQL uses, for PostgreSQL. Not a numbered step: the
-- migration runner (re)creates them on every start (CREATE OR REPLACE), so a fix here needs no new step.
-- Each is a thin SQL function PostgreSQL inlines into the calling statement, so it costs nothing extra.

-- The per-row statement-budget check the filter compiler puts before expensive matches (snackbase/db.py).
-- PostgreSQL's statement_timeout interrupts any statement by itself: here it is simply true.
CREATE OR REPLACE FUNCTION sb_budget() RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT true $$;
CREATE OR REPLACE FUNCTION sb_budget(size bigint) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT true $$;

-- instr(haystack, needle): 1-based position or 0, as SQLite's.
CREATE OR REPLACE FUNCTION instr(haystack text, needle text) RETURNS integer LANGUAGE sql IMMUTABLE
PARALLEL SAFE AS $$ SELECT strpos(haystack, needle) $$;

-- json_each(text) over a JSON array stored as text (multi-references, id lists bound as one parameter):
-- one row per element with its `value` as text, as SQLite's json_each gives for arrays of strings.
-- PostgreSQL's own json_each(json) takes objects; this overload takes text.
CREATE OR REPLACE FUNCTION json_each(document text) RETURNS TABLE (value text) LANGUAGE sql IMMUTABLE
PARALLEL SAFE AS $$ SELECT jsonb_array_elements_text(document::jsonb) $$;

-- json_array_length(text): the number of elements of a JSON array stored as text. With this text
-- overload a parameter used both here and in json_each (records.py binds one array as ?1 to both) is
-- read as text in both places, not as PostgreSQL's json.
CREATE OR REPLACE FUNCTION json_array_length(document text) RETURNS integer LANGUAGE sql IMMUTABLE
PARALLEL SAFE AS $$ SELECT jsonb_array_length(document::jsonb) $$;

-- sb_fold(text): the common Latin letters with diacritics (Latin-1 and Latin Extended-A) as their
-- lower-case ASCII letter, for the full-text index of searchable fields (snackbase/search.py), as
-- SQLite's FTS5 folds diacritics. Without the `unaccent` extension, which needs rights a SnackBase
-- database user may not have. IMMUTABLE: indexes are built on it, so a change here needs a reindex
-- (a new numbered step dropping and recreating the search indexes), not only this file.
CREATE OR REPLACE FUNCTION sb_fold(document text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT translate(document, 'ÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝàáâãäåçèéêëìíîïñòóôõöøùúûüýÿĀāĂăĄąĆćĈĉČčĎďĐđĒēĔĕĖėĘęĚěĜĝĞğĠġĢģĤĥĨĩĪīĬĭĮįıĴĵĶķĹĺĻļĽľŁłŃńŅņŇňŌōŎŏŐőŔŕŖŗŘřŚśŜŝŞşŠšŢţŤťŨũŪūŬŭŮůŰűŲųŴŵŶŷŸŹźŻżŽž',
  'aaaaaaceeeeiiiinoooooouuuuyaaaaaaceeeeiiiinoooooouuuuyyaaaaaaccccccddddeeeeeeeeeegggggggghhiiiiiiiiijjkkllllllllnnnnnnoooooorrrrrrssssssssttttuuuuuuuuuuuuwwyyyzzzzzz') $$;
