-- The one schema of exporter, and the seed of its users table.
--
-- Run as a whole by the postgres image (mounted into /docker-entrypoint-initdb.d) or by
-- `psql -v ON_ERROR_STOP=1 -f seeds/init.sql`: it creates the tables, fills users with
-- 10,000,000 rows and builds the secondary indexes once the rows are in (faster than
-- maintaining them row by row).
--
-- The service runs the same file in its parts, split at the `-- section:` lines: `schema`
-- and `indexes` on every start (every statement is idempotent), and `seed` replaced by
-- calls of exporter_seed_users() in batches so that it can draw a progress bar. Keep the
-- markers when editing.

-- section: schema

CREATE TABLE IF NOT EXISTS users (
    id                SERIAL PRIMARY KEY,
    name              VARCHAR(255) NOT NULL,
    email             VARCHAR(255) NOT NULL UNIQUE,
    signup_date       TIMESTAMPTZ NOT NULL DEFAULT now(),
    country_code      CHAR(2) NOT NULL,
    subscription_tier VARCHAR(50) NOT NULL DEFAULT 'free',
    lifetime_value    NUMERIC(10, 2) NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS export_jobs (
    id             UUID PRIMARY KEY,
    status         VARCHAR(20) NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'processing', 'completed', 'failed',
                                     'cancelled', 'expired')),
    request        JSONB NOT NULL,
    error          TEXT,
    processed_rows BIGINT NOT NULL DEFAULT 0,
    total_rows     BIGINT,
    bytes_written  BIGINT NOT NULL DEFAULT 0,
    file_size      BIGINT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at     TIMESTAMPTZ,
    completed_at   TIMESTAMPTZ,
    expires_at     TIMESTAMPTZ,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS export_jobs_status_idx ON export_jobs (status);

-- The queue: export_jobs is also how processes sharing this database share the work. A
-- running job has an owner (a process) whose lease it renews; a job whose lease has run
-- out is taken over by another process, which continues from its last checkpoint (how
-- many rows, up to which value of the dataset's key, and how many bytes of the CSV and of
-- its gzip copy were durable; checkpoint_last_id repeats a key that is one integer, as
-- users.id). Added in place to a table made before they existed.
ALTER TABLE export_jobs
    ADD COLUMN IF NOT EXISTS owner                 TEXT,
    ADD COLUMN IF NOT EXISTS lease_until           TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS attempt               INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cancel_requested      BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS checkpoint_rows       BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS checkpoint_last_id    BIGINT,
    ADD COLUMN IF NOT EXISTS checkpoint_csv_bytes  BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS checkpoint_gzip_bytes BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS checkpoint_gzip_crc   BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS resumed_from_rows     BIGINT,
    ADD COLUMN IF NOT EXISTS checkpoint_last_key   JSONB;

-- The claim's scan: the oldest waiting (or abandoned) jobs first.
CREATE INDEX IF NOT EXISTS export_jobs_queue_idx ON export_jobs (created_at)
    WHERE status IN ('pending', 'processing');

-- Users first..last (inclusive), generated inside PostgreSQL: a few seconds a million rows,
-- and nothing crosses the wire. Names, dates and amounts vary like real data, with the odd
-- apostrophe, comma and quote so that exports exercise CSV quoting.
CREATE OR REPLACE FUNCTION exporter_seed_users(first_n BIGINT, last_n BIGINT)
RETURNS BIGINT
LANGUAGE sql
AS $$
    INSERT INTO users (name, email, signup_date, country_code, subscription_tier, lifetime_value)
    SELECT
        (ARRAY['James', 'Mary', 'Wei', 'Aiko', 'Lukas', 'Chloé', 'Ana', 'Ravi', 'Olga',
               'Sean', 'Zoë', 'Kofi'])[1 + (g % 12)]
            || ' '
            || (ARRAY['Smith', 'O''Brien', 'Müller', 'Tanaka', 'Dubois', 'Silva', 'Patel',
                      'Kowalski', 'Nguyen', 'Smith, Jr.', 'García', 'Brown "Bud"',
                      'Johansson'])[1 + ((g / 12) % 13)],
        'user' || g || '@example.com',
        timestamptz '2019-01-01 00:00:00+00' + random() * interval '2900 days',
        (ARRAY['US', 'GB', 'CA', 'DE', 'FR', 'IN', 'JP', 'BR'])[1 + (g % 8)],
        (ARRAY['free', 'free', 'free', 'pro', 'pro', 'enterprise'])[1 + ((g / 8) % 6)],
        round((random() * 10000)::numeric, 2)
    FROM generate_series(first_n, last_n) AS g;
    SELECT last_n - first_n + 1;
$$;

-- section: seed

-- Tops users up to 10M rows: a second run adds nothing.
SELECT exporter_seed_users(count(*) + 1, 10000000) FROM users;

-- section: indexes

CREATE INDEX IF NOT EXISTS idx_users_country_code ON users (country_code);
CREATE INDEX IF NOT EXISTS idx_users_subscription_tier ON users (subscription_tier);
ANALYZE users;
